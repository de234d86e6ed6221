//! `scan_jsonl`: a lazy JSONL scan for files too big to load, or jobs that keep a few rows of many.
//!
//! The file streams in chunks on every core. Of each line only the top-level keys the filters read are
//! parsed (serde_json skips the rest, instructions and code included, without building them); polars
//! evaluates the filters on those; the lines that pass are kept as raw bytes. `collect()` then parses
//! only the kept lines (and only the selected keys, after `select`), and `sink_jsonl(out)` writes them
//! byte for byte without parsing them at all.

use super::expr::column;
use super::{DataError, Frame};
use polars::prelude::*;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The Rhai `LazyFrame`: a path and the filters and projection to apply when it is read.
#[derive(Clone, Debug)]
pub struct LazyJsonl {
    pub path: PathBuf,
    pub filters: Vec<Expr>,
    /// Dotted paths to keep, as `select` gave them; `None` keeps every column.
    pub columns: Option<Vec<String>>,
}

/// Rewrites one JSON object line as `{"k": raw, ...}` with only `keys`, appending it and a newline.
struct Projector<'a> {
    keys: &'a [String],
    out: &'a mut Vec<u8>,
}

impl<'de> Visitor<'de> for Projector<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut first = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.keys.iter().any(|k| k == key.as_ref()) {
                let raw: &RawValue = map.next_value()?;
                if !first {
                    self.out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut *self.out, key.as_ref())
                    .map_err(serde::de::Error::custom)?;
                self.out.push(b':');
                self.out.extend_from_slice(raw.get().as_bytes());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        self.out.extend_from_slice(b"}\n");
        Ok(())
    }
}

fn project_line(line: &[u8], keys: &[String], out: &mut Vec<u8>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    de.deserialize_map(Projector { keys, out })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// What one chunk gave: the kept lines (raw, each with its newline) and their projections.
struct ChunkResult {
    kept_raw: Vec<u8>,
    kept_projected: Vec<u8>,
    kept: usize,
}

/// The top-level keys an expression reads (`col("metadata.score")` reads `metadata`).
fn top_keys(exprs: &[Expr], paths: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            e.into_iter().filter_map(|node| match node {
                Expr::Column(name) => Some(name.to_string()),
                _ => None,
            })
        })
        .chain(
            paths
                .iter()
                .map(|p| p.split('.').next().unwrap_or(p).to_string()),
        )
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn scan_chunk(
    chunk: &[u8],
    filter_keys: &[String],
    keep_keys: &[String],
    predicate: Option<&Expr>,
    shown: &str,
    first_line: usize,
) -> Result<ChunkResult, DataError> {
    let bad = |i: usize, reason: String, raw: &[u8]| DataError::BadLine {
        path: shown.to_string(),
        line: first_line + i,
        reason,
        start: String::from_utf8_lossy(raw).chars().take(40).collect(),
    };
    // Line spans, blank lines dropped (they are not rows).
    let mut spans = Vec::new();
    let mut start = 0;
    let mut lines = 0;
    for (i, raw) in chunk.split(|b| *b == b'\n').enumerate() {
        let end = start + raw.len();
        if !raw.iter().all(|b| b.is_ascii_whitespace()) {
            spans.push((i, start, end));
        }
        if end < chunk.len() {
            lines += 1;
        }
        start = end + 1;
    }
    if chunk.last().is_some_and(|b| *b != b'\n') {
        lines += 1;
    }
    let mut keep = vec![true; spans.len()];
    if spans.is_empty() {
        return Ok(ChunkResult {
            kept_raw: vec![],
            kept_projected: vec![],
            kept: 0,
        });
    }
    if let Some(pred) = predicate {
        let mut mini = Vec::with_capacity(spans.len() * 64);
        for &(i, s, e) in &spans {
            let raw = &chunk[s..e];
            project_line(raw, filter_keys, &mut mini).map_err(
                |reason| match std::str::from_utf8(raw) {
                    Err(u) => bad(i, format!("invalid UTF-8 at byte {}", u.valid_up_to()), raw),
                    Ok(_) => bad(i, format!("invalid JSON ({reason})"), raw),
                },
            )?;
        }
        let df = JsonReader::new(Cursor::new(mini.as_slice()))
            .with_json_format(JsonFormat::JsonLines)
            .infer_schema_len(None)
            .finish()
            .map_err(|e| DataError::Invalid(format!("{shown}: {e}")))?;
        let mask = df
            .lazy()
            .select([pred.clone().alias("keep")])
            .collect()
            .map_err(|e| {
                DataError::Invalid(format!(
                    "{shown} (lines {}..{}): filter: {e}",
                    first_line,
                    first_line + lines
                ))
            })?;
        let mask = mask
            .column("keep")
            .and_then(|c| c.bool().cloned())
            .map_err(|e| {
                DataError::Invalid(format!("{shown}: a filter must give true/false: {e}"))
            })?;
        let values = mask.downcast_iter().flat_map(|arr| arr.iter());
        for (k, v) in keep.iter_mut().zip(values) {
            *k = v.unwrap_or(false);
        }
    }
    let mut kept_raw = Vec::new();
    let mut kept_projected = Vec::new();
    let mut kept = 0;
    for (&(i, s, e), k) in spans.iter().zip(&keep) {
        if !*k {
            continue;
        }
        kept += 1;
        let raw = &chunk[s..e];
        if predicate.is_none() {
            // Without a filter nothing validated the line yet.
            if let Some(reason) = super::io::line_problem(raw) {
                return Err(bad(i, reason, raw));
            }
        }
        kept_raw.extend_from_slice(raw);
        kept_raw.push(b'\n');
        if !keep_keys.is_empty() {
            project_line(raw, keep_keys, &mut kept_projected).map_err(|r| bad(i, r, raw))?;
        }
    }
    Ok(ChunkResult {
        kept_raw,
        kept_projected,
        kept,
    })
}

/// The scan's result: the kept lines, raw and (when a projection was asked for) projected.
pub struct Scanned {
    pub raw: Vec<u8>,
    pub projected: Vec<u8>,
    pub rows: usize,
}

impl LazyJsonl {
    pub fn new(path: PathBuf) -> LazyJsonl {
        LazyJsonl {
            path,
            filters: Vec::new(),
            columns: None,
        }
    }

    /// Streams the file once on every core. `want_projection` asks for the selected keys of kept lines.
    pub fn scan(&self, want_projection: bool) -> Result<Scanned, DataError> {
        let shown = self.path.display().to_string();
        if !self.path.exists() {
            return Err(DataError::Read {
                path: shown,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        crate::runtime_fns::note_input(&self.path);
        let predicate = self.filters.iter().cloned().reduce(|a, b| a.and(b));
        let filter_keys = top_keys(&self.filters, &[]);
        let keep_keys = match (&self.columns, want_projection) {
            (Some(cols), true) => top_keys(&[], cols),
            _ => Vec::new(),
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut out = Scanned {
            raw: Vec::new(),
            projected: Vec::new(),
            rows: 0,
        };
        let mut line_base = 1;
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let flush = |batch: &mut Vec<Vec<u8>>,
                     out: &mut Scanned,
                     line_base: &mut usize|
         -> Result<(), DataError> {
            // Line numbers of each chunk: the lines before it, counted by the main thread.
            let mut bases = Vec::with_capacity(batch.len());
            for chunk in batch.iter() {
                bases.push(*line_base);
                *line_base += chunk.iter().filter(|b| **b == b'\n').count()
                    + usize::from(chunk.last().is_some_and(|b| *b != b'\n'));
            }
            let results: Vec<Result<ChunkResult, DataError>> = std::thread::scope(|s| {
                let handles: Vec<_> = batch
                    .iter()
                    .zip(&bases)
                    .map(|(chunk, &base)| {
                        let (fk, kk, pred, shown) =
                            (&filter_keys, &keep_keys, predicate.as_ref(), &shown);
                        s.spawn(move || scan_chunk(chunk, fk, kk, pred, shown, base))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(DataError::Invalid("scan_jsonl: a worker panicked".into()))
                        })
                    })
                    .collect()
            });
            for r in results {
                let r = r?;
                out.raw.extend_from_slice(&r.kept_raw);
                out.projected.extend_from_slice(&r.kept_projected);
                out.rows += r.kept;
            }
            batch.clear();
            Ok(())
        };
        let mut failure = None;
        let read = super::io::for_each_chunk(&self.path, |chunk| {
            batch.push(chunk);
            if batch.len() == threads {
                if let Err(e) = flush(&mut batch, &mut out, &mut line_base) {
                    failure = Some(e);
                    return Err(polars_err!(ComputeError: "stopped"));
                }
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        read.map_err(|e| DataError::Invalid(format!("{shown}: {e}")))?;
        flush(&mut batch, &mut out, &mut line_base)?;
        Ok(out)
    }

    /// The kept rows as a DataFrame; the schema is inferred over the kept lines.
    pub fn collect(&self) -> Result<Frame, DataError> {
        let scanned = self.scan(self.columns.is_some())?;
        let shown = self.path.display().to_string();
        let bytes = if self.columns.is_some() {
            &scanned.projected
        } else {
            &scanned.raw
        };
        let df = super::io::frame_from_jsonl_bytes(bytes, &shown)?;
        match &self.columns {
            None => Ok(Frame::new(df)),
            Some(cols) => {
                // Named as the eager `select` names them (a struct field by its own name).
                let exprs: Vec<Expr> = cols.iter().map(|c| column(c)).collect();
                let df = df
                    .lazy()
                    .select(exprs)
                    .collect()
                    .map_err(|e| DataError::Invalid(format!("{shown}: select: {e}")))?;
                Ok(Frame::new(df))
            }
        }
    }

    /// Writes the kept lines to `out` exactly as they are in the file (atomically); returns how many.
    pub fn sink_jsonl(&self, out: &Path) -> Result<usize, DataError> {
        let scanned = self.scan(false)?;
        crate::runtime_fns::write_atomic(out, &scanned.raw).map_err(|source| DataError::Write {
            path: out.display().to_string(),
            source,
        })?;
        Ok(scanned.rows)
    }
}
