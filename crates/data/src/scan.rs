//! `scan_jsonl`: a lazy JSONL scan for files too big to load, or jobs that keep a few rows of many.
//!
//! The file is memory-mapped and cut at line ends into pieces, which rayon scans on every core. Of each
//! line only the values the filters name are parsed (`col("metadata.category")`: that one field of
//! `metadata`): serde_json skips everything else (instructions and code included) without building
//! it, and the values read go straight into typed columns ([`Columns`]). polars evaluates the filters
//! on those columns, piece by piece when they decide each row alone, else once over all pieces; the
//! lines that pass are kept as raw bytes, with the filter's columns for them. `sink_jsonl(out)` writes
//! the lines byte for byte; `collect()` parses only them, and a `select` of fields the filter read
//! parses nothing.
//!
//! A piece whose filtered values are not plain scalars and objects (an array, a value whose type
//! changes between rows) is handed to polars' own JSON reader instead: slower, same answer.
//!
//! The kept lines of the last scan are remembered, keyed by the file's stamp (length, modification
//! time, inode), so that `sink_jsonl` then `select(...).collect()` on the same scan reads the file once.

use super::expr::column;
use super::typed::{Columns, Keys};
use super::{DataError, Frame};
use polars::prelude::*;
use rayon::prelude::*;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Kept lines up to this size are remembered for the next call on the same scan.
const REMEMBER_BYTES: usize = 256 << 20;

/// The Rhai `LazyFrame`: a path and the filters and projection to apply when it is read.
#[derive(Clone, Debug)]
pub struct LazyJsonl {
    pub path: PathBuf,
    pub filters: Vec<Expr>,
    /// Dotted paths to keep, as `select` gave them; `None` keeps every column.
    pub columns: Option<Vec<String>>,
    /// The last scan's kept lines, shared with the copies `select` makes (same filters, same rows).
    remembered: Arc<Mutex<Option<Remembered>>>,
}

#[derive(Debug)]
struct Remembered {
    stamp: String,
    kept: Arc<Kept>,
}

/// The lines that passed the filters, each with its newline, in file order, as the pieces kept them
/// (not concatenated: `sink_jsonl` writes them one after the other), and how many.
#[derive(Debug, Default)]
pub struct Kept {
    pub pieces: Vec<Vec<u8>>,
    pub rows: usize,
    /// The values the filter read, for the kept rows, and their paths: a `select` of them needs no
    /// second parse.
    pub columns: Option<(Vec<Vec<String>>, DataFrame)>,
}

impl Kept {
    fn bytes(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.pieces
            .iter()
            .flat_map(|p| p.split(|b| *b == b'\n'))
            .filter(|l| !l.is_empty())
    }
}

impl LazyJsonl {
    pub fn new(path: PathBuf) -> LazyJsonl {
        LazyJsonl {
            path,
            filters: Vec::new(),
            columns: None,
            remembered: Arc::default(),
        }
    }

    /// This scan with one more filter (which keeps other rows: nothing remembered carries over).
    pub fn with_filter(&self, condition: Expr) -> LazyJsonl {
        let mut out = self.clone();
        out.filters.push(condition);
        out.remembered = Arc::default();
        out
    }

    /// The kept lines: remembered, or read once on every core. Without `keep_lines` only the rows are
    /// counted (nothing is copied, nothing remembered).
    pub fn scan(&self, keep_lines: bool) -> Result<Arc<Kept>, DataError> {
        let shown = self.path.display().to_string();
        if !self.path.exists() {
            return Err(DataError::Read {
                path: shown,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let read_error = |source| DataError::Read {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        let stamp = rtlab_core::workspace::file_stamp(&self.path);
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = remembered.as_ref().filter(|r| r.stamp == stamp) {
            return Ok(r.kept.clone());
        }
        let kept = if meta.len() == 0 {
            Kept::default()
        } else {
            // SAFETY: a read-only map of a regular file. If another process truncates the file while
            // we read it, the process faults (SIGBUS), as any mmap-based reader would (polars' too).
            // Not populated up front: that is one thread's work while the others wait; the workers
            // fault their own pieces in.
            let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(read_error)?;
            let kept = self.scan_bytes(&map, &shown, keep_lines);
            // Unmapping a big file takes milliseconds (every page table entry goes): not on the
            // script's time.
            // (If no thread can be made, the failed spawn drops the map right here.)
            let _ = std::thread::Builder::new()
                .name("rtlab-unmap".into())
                .spawn(move || drop(map));
            kept?
        };
        let kept = Arc::new(kept);
        if keep_lines && kept.bytes() <= REMEMBER_BYTES {
            *remembered = Some(Remembered {
                stamp,
                kept: kept.clone(),
            });
        }
        Ok(kept)
    }

    /// Three steps: the pieces are parsed on every core (each line checked, the filtered values put
    /// in typed columns); polars filters them, each piece on its own when the filter decides each
    /// row by its own values, else (or when a piece's columns need the whole file's supertypes: an
    /// integer column in one piece, floats in another, compared with a string) once over all the
    /// pieces' columns; the pieces copy their kept lines, again on every core.
    fn scan_bytes(&self, bytes: &[u8], shown: &str, keep_lines: bool) -> Result<Kept, DataError> {
        let predicate = self.filters.iter().cloned().reduce(|a, b| a.and(b));
        let filter_paths = paths_read(&self.filters);
        let filter_keys = Keys::Only(&filter_paths).top_level();
        let pieces = super::io::cut_at_line_ends(bytes, super::io::PIECE_BYTES);
        let mut parsed: Vec<Parsed> = pieces
            .par_iter()
            .map(|p| parse_piece(p, &filter_paths, &filter_keys, predicate.is_some()))
            .collect();
        let mut line_base = 1;
        let mut bases = Vec::with_capacity(parsed.len());
        for piece in &mut parsed {
            if let Some(problem) = piece.problem.take() {
                return Err(problem.into_error(shown, line_base, piece.lines));
            }
            bases.push(line_base);
            line_base += piece.lines;
        }
        // A piece filtered alone copies its kept lines in the same task, while its lines are warm.
        let alone: Option<Vec<(KeptLines, Option<DataFrame>)>> = predicate
            .as_ref()
            .filter(|p| is_row_by_row(p))
            .and_then(|predicate| {
                parsed
                    .par_iter()
                    .map(|p| {
                        let (mask, frame) = p.filter_alone(predicate)?;
                        Some((p.kept_lines(&mask, keep_lines), frame))
                    })
                    .collect()
            });
        let (pieces, kept_columns): (Vec<KeptLines>, Option<DataFrame>) = match alone {
            Some(alone) => {
                let (pieces, frames): (Vec<_>, Vec<Option<DataFrame>>) = alone.into_iter().unzip();
                let frames: Vec<DataFrame> = frames.into_iter().flatten().collect();
                (pieces, super::typed::stack(frames).ok())
            }
            None => {
                let (masks, kept_columns) = match &predicate {
                    None => (
                        parsed.iter().map(|p| vec![true; p.spans.len()]).collect(),
                        None,
                    ),
                    Some(predicate) => {
                        evaluate_filter(&mut parsed, predicate).map_err(|(i, problem)| {
                            problem.into_error(shown, bases[i], parsed[i].lines)
                        })?
                    }
                };
                let pieces = parsed
                    .par_iter()
                    .zip(masks.par_iter())
                    .map(|(piece, mask)| piece.kept_lines(mask, keep_lines))
                    .collect();
                (pieces, kept_columns)
            }
        };
        let mut kept = Kept {
            columns: kept_columns.map(|frame| (filter_paths, frame)),
            ..Kept::default()
        };
        for (raw, rows) in pieces {
            kept.rows += rows;
            if !raw.is_empty() {
                kept.pieces.push(raw);
            }
        }
        Ok(kept)
    }

    /// The kept rows as a DataFrame; the schema is inferred over the kept lines.
    pub fn collect(&self) -> Result<Frame, DataError> {
        let kept = self.scan(true)?;
        let shown = self.path.display().to_string();
        let Some(cols) = &self.columns else {
            let raw = kept.pieces.concat();
            return Ok(Frame::new(super::io::frame_from_jsonl_bytes(&raw, &shown)?));
        };
        let paths: Vec<Vec<String>> = cols
            .iter()
            .map(|c| c.split('.').map(str::to_string).collect())
            .collect();
        let keys = Keys::Only(&paths).top_level();
        // Values the filter read are at hand (their types inferred over the whole file, as the
        // filter saw them); others go into typed columns as the filters' do, and to polars' reader
        // only when they do not fit (arrays, types that change between rows).
        let read_by_filter = kept
            .columns
            .as_ref()
            .filter(|(read, _)| paths.iter().all(|p| read.iter().any(|r| p.starts_with(r))));
        let pieces: Vec<&[u8]> = kept.pieces.iter().map(Vec::as_slice).collect();
        let parsed = match read_by_filter {
            Some((_, frame)) => Some(frame.clone()),
            None => super::typed::frame_of_pieces(&pieces, Keys::Only(&paths), &|_| {}),
        };
        let df = match parsed {
            Some(df) => df,
            None => {
                let mut projected = Vec::with_capacity(kept.rows * 32);
                for line in kept.lines() {
                    project_line(line, &keys, &mut projected)
                        .map_err(|e| DataError::Invalid(format!("{shown}: {e}")))?;
                }
                super::io::frame_from_jsonl_bytes(&projected, &shown)?
            }
        };
        // Named as the eager `select` names them (a struct field by its own name).
        let exprs: Vec<Expr> = cols.iter().map(|c| column(c)).collect();
        let df = df
            .lazy()
            .select(exprs)
            .collect()
            .map_err(|e| DataError::Invalid(format!("{shown}: select: {e}")))?;
        Ok(Frame::new(df))
    }

    /// Writes the kept lines to `out` exactly as they are in the file (atomically); returns how many.
    pub fn sink_jsonl(&self, out: &Path) -> Result<usize, DataError> {
        let kept = self.scan(true)?;
        let parts: Vec<&[u8]> = kept.pieces.iter().map(Vec::as_slice).collect();
        rtlab_core::workspace::write_atomic_parts(out, &parts).map_err(|source| {
            DataError::Write {
                path: out.display().to_string(),
                source,
            }
        })?;
        Ok(kept.rows)
    }
}

/// Whether an expression decides each row by that row's values alone (no aggregation such as
/// `col("score").mean()`, whose value depends on which rows it sees), so that pieces can be filtered
/// on their own. The Rhai API builds `Function` nodes only for row-by-row functions (`is_in`,
/// `str_contains`, struct fields, ...); its aggregations are `Agg` and `Len` nodes, but for the
/// constant list `is_in` implodes.
fn is_row_by_row(e: &Expr) -> bool {
    e.into_iter().all(|node| match node {
        Expr::Agg(AggExpr::Implode { input, .. }) => matches!(input.as_ref(), Expr::Literal(_)),
        _ => matches!(
            node,
            Expr::Column(_)
                | Expr::Literal(_)
                | Expr::BinaryExpr { .. }
                | Expr::Alias(..)
                | Expr::Cast { .. }
                | Expr::Ternary { .. }
                | Expr::Function { .. }
        ),
    })
}

/// The paths of the values the expressions read: `col("metadata.category")` reads
/// `["metadata", "category"]` (only that field of `metadata`), `col("metadata").is_null()` all of
/// `metadata`.
fn paths_read(exprs: &[Expr]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for e in exprs {
        // The nodes inside a field chain already read, by address (the tree is walked parents first).
        let mut in_chain: Vec<*const Expr> = Vec::new();
        for node in e {
            if in_chain.contains(&(node as *const Expr)) {
                continue;
            }
            if let Some((path, inner)) = field_chain(node) {
                in_chain.extend(inner);
                paths.push(path);
            } else if let Expr::Column(name) = node {
                paths.push(vec![name.to_string()]);
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// `col("a").struct_().field_by_name("b").struct_().field_by_name("c")` as `["a", "b", "c"]`, with
/// the nodes under the outermost one.
fn field_chain(e: &Expr) -> Option<(Vec<String>, Vec<*const Expr>)> {
    let mut names = Vec::new();
    let mut inner = Vec::new();
    let mut at = e;
    loop {
        match at {
            Expr::Function {
                input,
                function: FunctionExpr::StructExpr(StructFunction::FieldByName(name)),
            } if input.len() == 1 => {
                names.push(name.to_string());
                at = &input[0];
                inner.push(at as *const Expr);
            }
            Expr::Column(column) if !names.is_empty() => {
                names.push(column.to_string());
                names.reverse();
                return Some((names, inner));
            }
            _ => return None,
        }
    }
}

/// One piece, parsed: where its lines are and, when there is a filter, the columns it reads.
struct Parsed<'a> {
    piece: &'a [u8],
    /// (line index within the piece, start, end) of each line that is not blank.
    spans: Vec<(usize, usize, usize)>,
    /// Lines in the piece, blank ones included: the next piece's line numbers start after them.
    lines: usize,
    frame: Option<DataFrame>,
    problem: Option<Problem>,
}

impl Parsed<'_> {
    /// The piece filtered by its own columns: its mask and its kept rows' filtered columns; `None`
    /// if polars cannot (the whole file's supertypes may be needed).
    fn filter_alone(&self, predicate: &Expr) -> Option<(Vec<bool>, Option<DataFrame>)> {
        let rows = self.spans.len();
        let Some(frame) = self.frame.as_ref().filter(|_| rows > 0) else {
            return Some((vec![false; rows], None));
        };
        let mask = frame
            .clone()
            .lazy()
            .select([predicate.clone().alias("keep")])
            .collect()
            .and_then(|df| mask_of(&df, rows))
            .ok()?;
        let kept = frame
            .filter(&BooleanChunked::from_slice("keep".into(), &mask))
            .ok();
        Some((mask, kept))
    }

    /// The lines `mask` keeps, each with its newline (only counted without `copy`), and how many.
    fn kept_lines(&self, mask: &[bool], copy: bool) -> KeptLines {
        let mut raw = Vec::new();
        if copy {
            let bytes = self.spans.iter().zip(mask).filter(|(_, k)| **k);
            raw.reserve_exact(bytes.map(|(&(_, s, e), _)| e - s + 1).sum());
        }
        let mut kept = 0;
        for (&(_, s, e), _) in self.spans.iter().zip(mask).filter(|(_, k)| **k) {
            kept += 1;
            if copy {
                raw.extend_from_slice(&self.piece[s..e]);
                raw.push(b'\n');
            }
        }
        (raw, kept)
    }
}

/// Why a piece stopped, placed in the file once the lines before it are counted.
enum Problem {
    /// A line (0-based within the piece) that is not a JSON object.
    Line {
        index: usize,
        reason: String,
        start: String,
    },
    /// The filter could not be evaluated on the piece's rows.
    Filter(String),
}

impl Problem {
    fn line(index: usize, reason: String, raw: &[u8]) -> Problem {
        Problem::Line {
            index,
            reason,
            start: String::from_utf8_lossy(raw).chars().take(40).collect(),
        }
    }

    fn into_error(self, shown: &str, line_base: usize, lines: usize) -> DataError {
        match self {
            Problem::Line {
                index,
                reason,
                start,
            } => DataError::BadLine {
                path: shown.to_string(),
                line: line_base + index,
                reason,
                start,
            },
            Problem::Filter(e) => DataError::Invalid(format!(
                "{shown} (lines {line_base}..{}): {e}",
                line_base + lines
            )),
        }
    }
}

fn parse_piece<'a>(
    piece: &'a [u8],
    filter_paths: &[Vec<String>],
    filter_keys: &[String],
    filtered: bool,
) -> Parsed<'a> {
    let mut parsed = Parsed {
        piece,
        spans: Vec::new(),
        lines: 0,
        frame: None,
        problem: None,
    };
    // serde_json does not check the UTF-8 of strings it skips: check the whole piece at once.
    let text = match simdutf8::compat::from_utf8(piece) {
        Ok(text) => text,
        Err(e) => {
            let at = e.valid_up_to();
            let line_start = memchr::memrchr(b'\n', &piece[..at]).map_or(0, |i| i + 1);
            let line_end = memchr::memchr(b'\n', &piece[at..]).map_or(piece.len(), |i| at + i);
            let index = memchr::memchr_iter(b'\n', &piece[..line_start]).count();
            parsed.problem = Some(Problem::line(
                index,
                format!("invalid UTF-8 at byte {}", at - line_start),
                &piece[line_start..line_end],
            ));
            return parsed;
        }
    };
    let mut start = 0;
    // About 400 bytes a line: one allocation, not a dozen regrowths.
    parsed.spans.reserve(piece.len() / 256);
    let mut segments = 0;
    for (index, end) in memchr::memchr_iter(b'\n', piece)
        .chain(std::iter::once(piece.len()))
        .enumerate()
    {
        if !piece[start..end].iter().all(u8::is_ascii_whitespace) {
            parsed.spans.push((index, start, end));
        }
        start = end + 1;
        segments += 1;
    }
    // What follows the last newline is a line only if it is not empty.
    parsed.lines = segments - usize::from(piece.ends_with(b"\n"));
    // Every line is checked to be a JSON object, filtered or not.
    let mut columns = Columns::new(Keys::Only(filter_paths));
    for &(index, s, e) in &parsed.spans {
        if let Err(why) = columns.read_line(&text[s..e]) {
            let reason = crate::typed::line_problem(&why);
            parsed.problem = Some(Problem::line(index, reason, &piece[s..e]));
            return parsed;
        }
    }
    if filtered {
        let rows = parsed.spans.len();
        match columns.into_frame(rows) {
            Some(frame) => parsed.frame = Some(frame),
            None => match polars_read_keys(piece, &parsed.spans, filter_keys) {
                Ok(frame) => parsed.frame = Some(frame),
                Err(problem) => parsed.problem = Some(problem),
            },
        }
    }
    parsed
}

/// A piece's kept lines, each with its newline (empty when only counted), and how many.
type KeptLines = (Vec<u8>, usize);

/// A filter's verdict on a scan: true/false per line of each piece, and the kept rows' filtered
/// columns (`None` when not at hand).
type Decided = (Vec<Vec<bool>>, Option<DataFrame>);

/// The filter's true/false per line of each piece, evaluated by polars once over all the pieces'
/// columns (concatenated with supertypes: a score that is an integer in one piece and a float in
/// another is a float). On failure, the piece that fails, for the error's line range.
/// With the masks, the filtered columns of the kept rows (`None` if some piece went another way).
fn evaluate_filter(parsed: &mut [Parsed], predicate: &Expr) -> Result<Decided, (usize, Problem)> {
    let frames: Vec<DataFrame> = parsed
        .iter()
        .filter(|p| !p.spans.is_empty())
        .filter_map(|p| p.frame.clone())
        .collect();
    let rows: usize = parsed.iter().map(|p| p.spans.len()).sum();
    let stacked = super::typed::stack(frames);
    let all = stacked.clone().and_then(|df| {
        df.lazy()
            .select([predicate.clone().alias("keep")])
            .collect()
    });
    let values = match all.and_then(|df| mask_of(&df, rows)) {
        Ok(values) => values,
        Err(e) => {
            // Find the piece that fails, to name its lines.
            for (i, p) in parsed.iter().enumerate() {
                let Some(frame) = &p.frame else { continue };
                let one = frame
                    .clone()
                    .lazy()
                    .select([predicate.clone().alias("keep")])
                    .collect()
                    .and_then(|df| mask_of(&df, p.spans.len()));
                if let Err(e) = one {
                    return Err((i, Problem::Filter(format!("filter: {e}"))));
                }
            }
            return Err((0, Problem::Filter(format!("filter: {e}"))));
        }
    };
    let kept_columns = stacked
        .ok()
        .filter(|df| df.height() == rows)
        .and_then(|df| {
            df.filter(&BooleanChunked::from_slice("keep".into(), &values))
                .ok()
        });
    let mut masks = Vec::with_capacity(parsed.len());
    let mut at = 0;
    for p in parsed.iter() {
        masks.push(values[at..at + p.spans.len()].to_vec());
        at += p.spans.len();
    }
    Ok((masks, kept_columns))
}

/// The `keep` column as one bool per row (a filter that reads no column, `lit(true)`, gives one value
/// for every row; null keeps nothing).
fn mask_of(df: &DataFrame, rows: usize) -> PolarsResult<Vec<bool>> {
    let keep = df.column("keep")?.bool().map_err(|_| {
        polars_err!(ComputeError: "a filter must give true/false, not {}", df.column("keep").map(|c| c.dtype().to_string()).unwrap_or_default())
    })?;
    let values: Vec<bool> = keep
        .downcast_iter()
        .flat_map(|arr| arr.iter())
        .map(|v| v.unwrap_or(false))
        .collect();
    Ok(match values.as_slice() {
        [one] if rows != 1 => vec![*one; rows],
        _ if values.len() == rows => values,
        _ => polars_bail!(ComputeError: "the filter gave {} values for {rows} rows", values.len()),
    })
}

/// The slow path for a piece [`Columns`] cannot type: each line rewritten to only the filtered keys,
/// then polars' JSON reader over those small lines, with its schema inference.
fn polars_read_keys(
    piece: &[u8],
    spans: &[(usize, usize, usize)],
    filter_keys: &[String],
) -> Result<DataFrame, Problem> {
    let mut mini = Vec::with_capacity(spans.len() * 64);
    for &(index, s, e) in spans {
        project_line(&piece[s..e], filter_keys, &mut mini).map_err(|reason| {
            Problem::line(index, format!("invalid JSON ({reason})"), &piece[s..e])
        })?;
    }
    let mut frame = JsonReader::new(Cursor::new(mini.as_slice()))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None)
        .finish()
        .map_err(|e| Problem::Filter(e.to_string()))?;
    // As in `Columns::into_frame`: a key no line has is a null column.
    for key in filter_keys {
        if frame.column(key).is_err() {
            frame
                .with_column(Column::full_null(key.into(), spans.len(), &DataType::Null))
                .map_err(|e| Problem::Filter(e.to_string()))?;
        }
    }
    Ok(frame)
}

/// Rewrites one JSON object line as `{"k": raw, ...}` with only `keys`, appending it and a newline.
struct Projector<'a> {
    keys: &'a [String],
    out: &'a mut Vec<u8>,
}

/// A top-level key, and whether it is one of the projected ones.
struct ProjectedKey<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for ProjectedKey<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ProjectedKey<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| k == key))
    }
}

impl<'de> Visitor<'de> for Projector<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut first = true;
        while let Some(key) = map.next_key_seed(ProjectedKey(self.keys))? {
            match key {
                Some(i) => {
                    let raw: &RawValue = map.next_value()?;
                    if !first {
                        self.out.push(b',');
                    }
                    first = false;
                    serde_json::to_writer(&mut *self.out, &self.keys[i])
                        .map_err(serde::de::Error::custom)?;
                    self.out.push(b':');
                    self.out.extend_from_slice(raw.get().as_bytes());
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.out.extend_from_slice(b"}\n");
        Ok(())
    }
}

fn project_line(line: &[u8], keys: &[String], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    de.deserialize_map(Projector { keys, out })?;
    de.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::column;

    fn read(e: Expr) -> Vec<String> {
        paths_read(&[e]).iter().map(|p| p.join(".")).collect()
    }

    #[test]
    fn a_filter_reads_the_fields_it_names_and_whole_columns_it_uses_whole() {
        let e = column("metadata.category")
            .is_in(lit(Series::new("v".into(), ["fsm"])).implode(false), false)
            .and(column("metadata.score").gt_eq(lit(0.7)));
        assert_eq!(read(e), ["metadata.category", "metadata.score"]);
        assert_eq!(read(column("a.b.c").eq(lit(1))), ["a.b.c"]);
        assert_eq!(
            read(
                col("metadata")
                    .is_null()
                    .or(column("metadata.x").eq(lit(1)))
            ),
            ["metadata", "metadata.x"]
        );
    }

    #[test]
    fn only_row_by_row_filters_are_decided_a_piece_at_a_time() {
        let is_in = column("c").is_in(lit(Series::new("v".into(), ["fsm"])).implode(false), false);
        assert!(is_row_by_row(&is_in));
        assert!(is_row_by_row(&column("m.score").gt_eq(lit(0.7))));
        assert!(!is_row_by_row(&col("score").gt(col("score").mean())));
        assert!(!is_row_by_row(&col("score").implode(false).is_null()));
    }
}
