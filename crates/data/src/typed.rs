//! JSON lines into typed polars columns, fast: serde_json walks each line once, skipping the keys
//! nobody asked for without building them, and puts the values asked for straight into per-key
//! vectors, which become polars columns (nested objects become struct columns). Asked for by path,
//! `metadata.category` reads that one field of `metadata`: its other fields are skipped too.
//!
//! It covers what datasets are made of: objects, strings, numbers, booleans and nulls. Anything else
//! (an array, a key that is an object in one row and a string in another, a map-like object with a new
//! key per row) makes [`Columns::into_frame`] answer `None`, and the caller hands the lines to polars'
//! own JSON reader, which is slower and decides such cases by its supertype rules.

use polars::prelude::*;
use rayon::prelude::*;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;

/// Distinct keys past which the lines go to polars' reader (a JSON object used as a map, with a new
/// key per row, is no struct).
const MAX_NODES: usize = 256;

/// Which values to read: everything, or the values along some paths (`["metadata", "category"]`
/// reads one field of `metadata`; `["metadata"]` reads all of it).
#[derive(Clone, Copy)]
pub enum Keys<'k> {
    All,
    Only(&'k [Vec<String>]),
}

impl Keys<'_> {
    /// The top-level keys asked for (none for `All`), each once: `metadata.score` asks for `metadata`.
    pub fn top_level(&self) -> Vec<String> {
        let mut top: Vec<String> = match self {
            Keys::All => Vec::new(),
            Keys::Only(paths) => paths.iter().filter_map(|p| p.first()).cloned().collect(),
        };
        top.sort_unstable();
        top.dedup();
        top
    }
}

/// The `keys` of every line of `pieces` (pieces of whole lines, blank lines skipped) as one frame,
/// parsed on every core; the pieces' columns are stacked with polars' supertypes (a number that is an
/// integer in one piece and a float in another is a float; a key absent from a piece is null there).
/// `None` when a line is bad or a value needs polars' reader: the caller takes its careful path.
/// `done` is told of each piece once it is parsed (a mapped file gives its pages back).
pub fn frame_of_pieces(
    pieces: &[&[u8]],
    keys: Keys,
    done: &(dyn Fn(&[u8]) + Sync),
) -> Option<DataFrame> {
    let frames: Vec<DataFrame> = pieces
        .par_iter()
        .map(|piece| {
            let piece = simdutf8::basic::from_utf8(piece).ok()?;
            let mut columns = Columns::new(keys);
            let mut rows = 0;
            for line in piece.split('\n') {
                if line.bytes().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                columns.read_line(line).ok()?;
                rows += 1;
            }
            // The columns borrow the piece's strings until they are built.
            let frame = columns.into_frame(rows);
            done(piece.as_bytes());
            frame
        })
        .collect::<Option<_>>()?;
    stack(frames).ok()
}

/// Frames stacked into one: chunks appended when the schemas match (no copy), else combined with
/// polars' supertypes and missing columns filled with nulls (diagonal concat).
pub fn stack(frames: Vec<DataFrame>) -> PolarsResult<DataFrame> {
    let same_schema = frames.windows(2).all(|w| w[0].schema() == w[1].schema());
    let mut frames = frames.into_iter();
    let Some(mut all) = frames.next() else {
        return Ok(DataFrame::empty());
    };
    if same_schema {
        for f in frames {
            all.vstack_mut_owned(f)?;
        }
        return Ok(all);
    }
    let union = UnionArgs {
        to_supertypes: true,
        diagonal: true,
        ..Default::default()
    };
    let lazy: Vec<LazyFrame> = std::iter::once(all)
        .chain(frames)
        .map(|f| f.lazy())
        .collect();
    concat(lazy, union)?.collect()
}

/// One value read.
enum Leaf<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
}

/// A key under the filtered columns: an object (with child nodes) or a leaf (with values).
struct Node {
    parent: usize,
    name: String,
    is_object: bool,
    /// How deep: the line itself is 0, a top-level key 1.
    depth: usize,
    /// Which of its keys to read: all of them, or those that lead along the asked paths.
    wants: Wants,
    /// The keys met in this object so far, in the order the lines give them, with what each resolved
    /// to: lines of a dataset repeat one key order, so the next key is almost always the next one
    /// here, and one string comparison resolves it.
    met: Vec<(String, Option<usize>)>,
    /// Where in `met` the current object is.
    cursor: usize,
}

/// The keys of a node to read.
#[derive(Clone)]
enum Wants {
    Everything,
    /// The asked paths (indices into `Keys::Only`) that go through this node and further.
    Along(Vec<usize>),
}

/// Typed columns of the values read, filled while serde_json walks each line. Node 0 is the line
/// itself; its children are the top-level keys read.
pub struct Columns<'k, 'a> {
    keys: Keys<'k>,
    nodes: Vec<Node>,
    /// Per node, one value per row so far (padded with nulls lazily).
    values: Vec<Vec<Leaf<'a>>>,
    row: usize,
    /// Set when a value does not fit typed columns (an array, too many keys): polars' reader decides.
    unsupported: bool,
}

impl<'k, 'a> Columns<'k, 'a> {
    pub fn new(keys: Keys<'k>) -> Self {
        let wants = match keys {
            Keys::All => Wants::Everything,
            Keys::Only(paths) => Wants::Along((0..paths.len()).collect()),
        };
        Columns {
            keys,
            nodes: vec![Node {
                parent: usize::MAX,
                name: String::new(),
                is_object: true,
                depth: 0,
                wants,
                met: Vec::new(),
                cursor: 0,
            }],
            values: vec![Vec::new()],
            row: 0,
            unsupported: false,
        }
    }

    /// Parses one line (which must be a JSON object), recording the values asked for. The line is
    /// `str`, checked for UTF-8 by the caller a piece at a time (faster than serde_json string by
    /// string).
    /// A line's error reads as [`line_problem`] says.
    pub fn read_line(&mut self, line: &'a str) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(line);
        ValueAt {
            columns: self,
            node: 0,
        }
        .deserialize(&mut de)?;
        de.end()?;
        self.row += 1;
        Ok(())
    }

    /// The node of key `name` under `parent`, made on first sight; `None` for a key not asked for.
    fn child(&mut self, parent: usize, name: &str) -> Option<usize> {
        let node = &mut self.nodes[parent];
        let at = node.cursor;
        let found = match node.met.get(at) {
            Some((key, _)) if key == name => Some(at),
            _ => node.met.iter().position(|(key, _)| key == name),
        };
        if let Some(i) = found {
            node.cursor = i + 1;
            return node.met[i].1;
        }
        let resolved = self.resolve_child(parent, name);
        let node = &mut self.nodes[parent];
        if node.met.len() < MAX_NODES {
            node.met.push((name.to_string(), resolved));
            node.cursor = node.met.len();
        }
        resolved
    }

    fn resolve_child(&mut self, parent: usize, name: &str) -> Option<usize> {
        let depth = self.nodes[parent].depth;
        let paths: &[Vec<String>] = match self.keys {
            Keys::All => &[],
            Keys::Only(paths) => paths,
        };
        let leads_on = |p: &usize| paths[*p][depth] == name;
        if let Wants::Along(along) = &self.nodes[parent].wants {
            if !along.iter().any(leads_on) {
                return None;
            }
        }
        if let Some(i) = (1..self.nodes.len())
            .find(|&i| self.nodes[i].parent == parent && self.nodes[i].name == name)
        {
            return Some(i);
        }
        let wants = match &self.nodes[parent].wants {
            Wants::Everything => Wants::Everything,
            Wants::Along(along) => {
                let next: Vec<usize> = along.iter().copied().filter(leads_on).collect();
                if next.iter().any(|&p| paths[p].len() == depth + 1) {
                    Wants::Everything
                } else {
                    Wants::Along(next)
                }
            }
        };
        if self.nodes.len() >= MAX_NODES {
            self.unsupported = true;
        }
        self.nodes.push(Node {
            parent,
            name: name.to_string(),
            is_object: false,
            depth: depth + 1,
            wants,
            met: Vec::new(),
            cursor: 0,
        });
        self.values.push(Vec::new());
        Some(self.nodes.len() - 1)
    }

    fn set(&mut self, node: usize, leaf: Leaf<'a>) {
        let values = &mut self.values[node];
        while values.len() < self.row {
            values.push(Leaf::Null);
        }
        if values.len() == self.row {
            values.push(leaf);
        } else {
            // A key repeated in one object: the last one wins, as in serde_json and polars.
            values[self.row] = leaf;
        }
    }

    /// The columns as a frame of `rows` rows, or `None` when they need polars' reader.
    pub fn into_frame(mut self, rows: usize) -> Option<DataFrame> {
        if self.unsupported {
            return None;
        }
        let top: Vec<usize> = (1..self.nodes.len())
            .filter(|&i| self.nodes[i].parent == 0)
            .collect();
        let mut columns = Vec::with_capacity(top.len());
        for node in top {
            columns.push(self.series(node, rows)?.into_column());
        }
        // A key no line of the piece has is a null column, so the pieces' frames stack.
        for key in self.keys.top_level() {
            if !columns.iter().any(|c| c.name().as_str() == key) {
                columns.push(Column::full_null(
                    key.as_str().into(),
                    rows,
                    &DataType::Null,
                ));
            }
        }
        DataFrame::new(rows, columns).ok()
    }

    fn series(&mut self, node: usize, rows: usize) -> Option<Series> {
        let name = PlSmallStr::from(self.nodes[node].name.as_str());
        let values = std::mem::take(&mut self.values[node]);
        if self.nodes[node].is_object {
            // An object that is a scalar in some rows is no struct.
            if values.iter().any(|v| !matches!(v, Leaf::Null)) {
                return None;
            }
            let children: Vec<usize> = (1..self.nodes.len())
                .filter(|&i| self.nodes[i].parent == node)
                .collect();
            let mut fields = Vec::with_capacity(children.len());
            for child in children {
                fields.push(self.series(child, rows)?);
            }
            return StructChunked::from_series(name, rows, fields.iter())
                .ok()
                .map(|s| s.into_series());
        }
        let (mut strings, mut ints, mut floats, mut bools) = (false, false, false, false);
        for v in &values {
            match v {
                Leaf::Null => {}
                Leaf::Bool(_) => bools = true,
                Leaf::Int(_) => ints = true,
                Leaf::Float(_) => floats = true,
                Leaf::Str(_) => strings = true,
            }
        }
        let at = |i: usize| values.get(i).unwrap_or(&Leaf::Null);
        Some(match (strings, ints || floats, bools) {
            (false, false, false) => Series::full_null(name, rows, &DataType::Null),
            (true, false, false) => StringChunked::from_iter_options(
                name,
                (0..rows).map(|i| match at(i) {
                    Leaf::Str(s) => Some(s.as_ref()),
                    _ => None,
                }),
            )
            .into_series(),
            (false, true, false) if !floats => Int64Chunked::from_iter_options(
                name,
                (0..rows).map(|i| match at(i) {
                    Leaf::Int(v) => Some(*v),
                    _ => None,
                }),
            )
            .into_series(),
            (false, true, false) => Float64Chunked::from_iter_options(
                name,
                (0..rows).map(|i| match at(i) {
                    Leaf::Int(v) => Some(*v as f64),
                    Leaf::Float(v) => Some(*v),
                    _ => None,
                }),
            )
            .into_series(),
            (false, false, true) => BooleanChunked::from_iter_options(
                name,
                (0..rows).map(|i| match at(i) {
                    Leaf::Bool(v) => Some(*v),
                    _ => None,
                }),
            )
            .into_series(),
            // Mixed types in one column: polars' reader applies its supertype rules.
            _ => return None,
        })
    }
}

/// Reads the value at `node`, recording scalars and walking into objects.
struct ValueAt<'c, 'k, 'a> {
    columns: &'c mut Columns<'k, 'a>,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for ValueAt<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Records a scalar at the current node; a scalar where the line should be is no JSON object.
macro_rules! record {
    ($self:ident, $leaf:expr) => {{
        if $self.node == 0 {
            return Err(serde::de::Error::custom("not a JSON object"));
        }
        $self.columns.set($self.node, $leaf);
        Ok(())
    }};
}

impl<'de> Visitor<'de> for ValueAt<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        record!(self, Leaf::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        record!(self, Leaf::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        record!(
            self,
            i64::try_from(v).map_or(Leaf::Float(v as f64), Leaf::Int)
        )
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        record!(self, Leaf::Float(v))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        record!(self, Leaf::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        record!(self, Leaf::Str(Cow::Owned(v.to_string())))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        if self.node != 0 && self.columns.nodes[self.node].is_object {
            // A null object: its fields are null in this row, which padding gives.
            return Ok(());
        }
        record!(self, Leaf::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.node == 0 {
            return Err(serde::de::Error::custom("not a JSON object"));
        }
        self.columns.unsupported = true;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let node = self.node;
        self.columns.nodes[node].is_object = true;
        self.columns.nodes[node].cursor = 0;
        while let Some(child) = map.next_key_seed(KeyAt {
            columns: &mut *self.columns,
            parent: node,
        })? {
            match child {
                Some(child) => map.next_value_seed(ValueAt {
                    columns: &mut *self.columns,
                    node: child,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a key without allocating: the node it names, or `None` for a key nobody asked for.
struct KeyAt<'c, 'k, 'a> {
    columns: &'c mut Columns<'k, 'a>,
    parent: usize,
}

impl<'de> DeserializeSeed<'de> for KeyAt<'_, '_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyAt<'_, '_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.columns.child(self.parent, key))
    }
}

/// What is wrong with a line, as a bad-line error says it: a value of the wrong type in the
/// parser's words, anything else as invalid JSON.
pub fn line_problem(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("invalid JSON ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<Vec<String>> {
        list.iter()
            .map(|p| p.split('.').map(str::to_string).collect())
            .collect()
    }

    fn frame(lines: &[&str], keys: Keys) -> DataFrame {
        let mut columns = Columns::new(keys);
        for line in lines {
            columns.read_line(line).unwrap();
        }
        columns.into_frame(lines.len()).unwrap()
    }

    const LINES: [&str; 2] = [
        r#"{"text": "a", "metadata": {"category": "fsm", "source": "x", "score": 1}}"#,
        r#"{"metadata": {"score": 0.5, "category": "alu", "source": "y"}, "text": "b"}"#,
    ];

    #[test]
    fn a_path_reads_one_field_of_an_object_and_skips_its_siblings() {
        let df = frame(&LINES, Keys::Only(&paths(&["metadata.category"])));
        assert_eq!(df.get_column_names(), ["metadata"]);
        let meta = df.column("metadata").unwrap().struct_().unwrap().clone();
        let fields: Vec<String> = meta
            .fields_as_series()
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        assert_eq!(fields, ["category"]);
    }

    #[test]
    fn a_whole_key_and_a_field_of_it_read_the_whole_key() {
        let df = frame(
            &LINES,
            Keys::Only(&paths(&["metadata", "metadata.score", "text"])),
        );
        let meta = df.column("metadata").unwrap().struct_().unwrap().clone();
        assert_eq!(meta.fields_as_series().len(), 3, "category, source, score");
        assert_eq!(df.column("text").unwrap().str().unwrap().get(1), Some("b"));
    }

    #[test]
    fn fields_read_by_path_keep_their_types_across_rows() {
        let df = frame(
            &LINES,
            Keys::Only(&paths(&["metadata.score", "metadata.category"])),
        );
        let meta = df.column("metadata").unwrap().struct_().unwrap().clone();
        let score = meta.field_by_name("score").unwrap();
        assert_eq!(score.dtype(), &DataType::Float64, "1 and 0.5: a float");
        assert_eq!(
            meta.field_by_name("category")
                .unwrap()
                .str()
                .unwrap()
                .get(1),
            Some("alu")
        );
    }

    #[test]
    fn a_path_no_line_has_is_a_null_column_named_by_its_top_key() {
        let df = frame(&LINES, Keys::Only(&paths(&["missing.deep"])));
        assert_eq!(df.get_column_names(), ["missing"]);
        assert_eq!(df.column("missing").unwrap().null_count(), 2);
    }
}
