//! JSON lines into typed polars columns, fast: serde_json walks each line once, skipping the keys
//! nobody asked for without building them, and puts the values asked for straight into per-key
//! columns (strings into Arrow string views, one copy from the line; numbers and booleans into
//! vectors), which become polars columns (nested objects become struct columns). Asked for by path,
//! `metadata.category` reads that one field of `metadata`: its other fields are skipped too.
//!
//! It covers what datasets are made of: objects, strings, numbers, booleans and nulls. Anything else
//! (an array, a key that is an object in one row and a string in another, a map-like object with a new
//! key per row) makes [`Columns::into_frame`] answer `None`, and the caller hands the lines to polars'
//! own JSON reader, which is slower and decides such cases by its supertype rules.

use polars::prelude::*;
use polars_core::utils::arrow::array::MutableBinaryViewArray;
use rayon::prelude::*;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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

/// One value read, on its way into its column.
enum Leaf<'s> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'s str),
}

/// One leaf key's column as it is read, typed by the values met so far: strings go straight into
/// an Arrow string-view array (one copy from the line, none from serde_json's unescaping buffer),
/// numbers and booleans into vectors. A column of integers that meets a float becomes floats (the
/// integers cast), as polars' supertype rules say.
enum Builder {
    /// Only nulls so far: how many.
    Nulls(usize),
    /// The strings, and the rows whose value a repeated key replaced (rare: applied once, at the end,
    /// since a string-view array cannot take a value back).
    Strings(MutableBinaryViewArray<str>, Vec<(usize, Option<String>)>),
    Ints(Vec<Option<i64>>),
    Floats(Vec<Option<f64>>),
    Bools(Vec<Option<bool>>),
}

impl Builder {
    fn len(&self) -> usize {
        match self {
            Builder::Nulls(n) => *n,
            Builder::Strings(a, _) => a.len(),
            Builder::Ints(v) => v.len(),
            Builder::Floats(v) => v.len(),
            Builder::Bools(v) => v.len(),
        }
    }

    fn push_null(&mut self) {
        match self {
            Builder::Nulls(n) => *n += 1,
            Builder::Strings(a, _) => a.push_null(),
            Builder::Ints(v) => v.push(None),
            Builder::Floats(v) => v.push(None),
            Builder::Bools(v) => v.push(None),
        }
    }

    /// Appends `leaf`; false when its type cannot join the column's (a string among numbers, say):
    /// polars' reader decides such columns.
    fn push(&mut self, leaf: Leaf) -> bool {
        if let Builder::Nulls(n) = *self {
            *self = match leaf {
                Leaf::Null => Builder::Nulls(n + 1),
                Leaf::Str(_) => Builder::Strings(nulls_then(n), Vec::new()),
                Leaf::Int(_) => Builder::Ints(vec![None; n]),
                Leaf::Float(_) => Builder::Floats(vec![None; n]),
                Leaf::Bool(_) => Builder::Bools(vec![None; n]),
            };
            if let Builder::Nulls(_) = self {
                return true;
            }
        }
        if let (Builder::Ints(ints), Leaf::Float(_)) = (&*self, &leaf) {
            *self = Builder::Floats(ints.iter().map(|v| v.map(|i| i as f64)).collect());
        }
        match (self, leaf) {
            (column, Leaf::Null) => column.push_null(),
            (Builder::Strings(a, _), Leaf::Str(v)) => a.push_value(v),
            (Builder::Ints(v), Leaf::Int(i)) => v.push(Some(i)),
            (Builder::Floats(v), Leaf::Float(f)) => v.push(Some(f)),
            (Builder::Floats(v), Leaf::Int(i)) => v.push(Some(i as f64)),
            (Builder::Bools(v), Leaf::Bool(b)) => v.push(Some(b)),
            _ => return false,
        }
        true
    }

    /// Replaces the last value with `leaf` (a key repeated in one object: the last one wins, as in
    /// serde_json); false when its type cannot join the column's.
    fn replace_last(&mut self, leaf: Leaf) -> bool {
        match self {
            Builder::Nulls(n) => *n -= 1,
            Builder::Ints(v) => drop(v.pop()),
            Builder::Floats(v) => drop(v.pop()),
            Builder::Bools(v) => drop(v.pop()),
            Builder::Strings(a, replaced) => {
                let value = match leaf {
                    Leaf::Null => None,
                    Leaf::Str(v) => Some(v.to_string()),
                    _ => return false,
                };
                replaced.push((a.len() - 1, value));
                return true;
            }
        }
        self.push(leaf)
    }

    /// The column of `rows` rows (nulls after the last value met).
    fn into_series(mut self, name: PlSmallStr, rows: usize) -> Series {
        while self.len() < rows {
            self.push_null();
        }
        match self {
            Builder::Nulls(_) => Series::full_null(name, rows, &DataType::Null),
            Builder::Strings(a, replaced) if replaced.is_empty() => {
                StringChunked::with_chunk(name, a.freeze()).into_series()
            }
            Builder::Strings(a, replaced) => {
                let a = a.freeze();
                let mut values: Vec<Option<&str>> = a.iter().collect();
                for (row, value) in &replaced {
                    values[*row] = value.as_deref();
                }
                StringChunked::from_iter_options(name, values.into_iter()).into_series()
            }
            Builder::Ints(v) => Int64Chunked::from_iter_options(name, v.into_iter()).into_series(),
            Builder::Floats(v) => {
                Float64Chunked::from_iter_options(name, v.into_iter()).into_series()
            }
            Builder::Bools(v) => {
                BooleanChunked::from_iter_options(name, v.into_iter()).into_series()
            }
        }
    }
}

/// A string column that starts with `n` nulls.
fn nulls_then(n: usize) -> MutableBinaryViewArray<str> {
    let mut a = MutableBinaryViewArray::<str>::new();
    for _ in 0..n {
        a.push_null();
    }
    a
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
pub struct Columns<'k> {
    keys: Keys<'k>,
    nodes: Vec<Node>,
    /// Per node, its column so far (padded with nulls lazily).
    values: Vec<Builder>,
    row: usize,
    /// Set when a value does not fit typed columns (an array, too many keys): polars' reader decides.
    unsupported: bool,
}

impl<'k> Columns<'k> {
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
            values: vec![Builder::Nulls(0)],
            row: 0,
            unsupported: false,
        }
    }

    /// Parses one line (which must be a JSON object), recording the values asked for. The line is
    /// `str`, checked for UTF-8 by the caller a piece at a time (faster than serde_json string by
    /// string).
    /// A line's error reads as [`line_problem`] says.
    pub fn read_line(&mut self, line: &str) -> Result<(), serde_json::Error> {
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
        self.values.push(Builder::Nulls(0));
        Some(self.nodes.len() - 1)
    }

    fn set(&mut self, node: usize, leaf: Leaf) {
        let column = &mut self.values[node];
        while column.len() < self.row {
            column.push_null();
        }
        let fits = match column.len() > self.row {
            // A key repeated in one object: its column already has this row's value.
            true => column.replace_last(leaf),
            false => column.push(leaf),
        };
        // A value whose type the column cannot take: polars' reader decides.
        if !fits {
            self.unsupported = true;
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
        let column = std::mem::replace(&mut self.values[node], Builder::Nulls(0));
        if !self.nodes[node].is_object {
            return Some(column.into_series(name, rows));
        }
        // An object that is a scalar in some rows is no struct.
        if !matches!(column, Builder::Nulls(_)) {
            return None;
        }
        let children: Vec<usize> = (1..self.nodes.len())
            .filter(|&i| self.nodes[i].parent == node)
            .collect();
        let mut fields = Vec::with_capacity(children.len());
        for child in children {
            fields.push(self.series(child, rows)?);
        }
        StructChunked::from_series(name, rows, fields.iter())
            .ok()
            .map(|s| s.into_series())
    }
}

/// Reads the value at `node`, recording scalars and walking into objects.
struct ValueAt<'c, 'k> {
    columns: &'c mut Columns<'k>,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for ValueAt<'_, '_> {
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

impl<'de> Visitor<'de> for ValueAt<'_, '_> {
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

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        record!(self, Leaf::Str(v))
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
struct KeyAt<'c, 'k> {
    columns: &'c mut Columns<'k>,
    parent: usize,
}

impl<'de> DeserializeSeed<'de> for KeyAt<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyAt<'_, '_> {
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

    #[test]
    fn a_key_repeated_in_one_object_keeps_its_last_value() {
        let lines = [
            r#"{"s": "first", "n": 1, "s": "last", "n": 2.5, "z": null, "z": "now"}"#,
            r#"{"s": "only", "n": 3, "s": null, "z": "x", "z": null}"#,
        ];
        let df = frame(&lines, Keys::All);
        let s: Vec<Option<&str>> = df.column("s").unwrap().str().unwrap().iter().collect();
        assert_eq!(s, [Some("last"), None]);
        let n: Vec<Option<f64>> = df.column("n").unwrap().f64().unwrap().iter().collect();
        assert_eq!(
            n,
            [Some(2.5), Some(3.0)],
            "an int then a float: a float column"
        );
        let z: Vec<Option<&str>> = df.column("z").unwrap().str().unwrap().iter().collect();
        assert_eq!(z, [Some("now"), None]);
    }

    #[test]
    fn escaped_strings_are_read_unescaped_beside_plain_ones() {
        let lines = [
            r#"{"code": "module m;\n  assign y = \"a\";\nendmodule", "tab": "a\tb \u00e9"}"#,
            r#"{"code": "plain, longer than twelve bytes", "tab": "x"}"#,
        ];
        let df = frame(&lines, Keys::All);
        let code = df.column("code").unwrap().str().unwrap();
        assert_eq!(
            code.get(0),
            Some("module m;\n  assign y = \"a\";\nendmodule")
        );
        assert_eq!(code.get(1), Some("plain, longer than twelve bytes"));
        assert_eq!(
            df.column("tab").unwrap().str().unwrap().get(0),
            Some("a\tb é")
        );
    }

    #[test]
    fn a_value_of_another_type_leaves_the_column_to_polars_reader() {
        let lines = [r#"{"v": "text"}"#, r#"{"v": 3}"#];
        let mut columns = Columns::new(Keys::All);
        for line in lines {
            columns.read_line(line).unwrap();
        }
        assert!(columns.into_frame(2).is_none());
    }
}
