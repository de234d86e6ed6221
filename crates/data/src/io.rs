//! Reading and writing frames: JSONL (with `file:line` errors and a skip mode), Parquet, CSV.
//! Every write is atomic (temp file + rename).

use super::{DataError, Frame};
use polars::prelude::*;
use std::io::Cursor;
use std::num::NonZeroUsize;
use std::path::Path;

/// What to do with a line that is not valid JSON.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub skip_bad_lines: bool,
}

/// A loaded frame, with the lines skipped as bad (1-based line numbers) in skip mode.
pub struct Loaded {
    pub frame: Frame,
    pub skipped: Vec<usize>,
}

pub fn load_jsonl(path: &Path, opts: &LoadOptions) -> Result<Loaded, DataError> {
    let shown = path.display().to_string();
    if !opts.skip_bad_lines {
        // The fastest path: typed columns built on every core straight from the mapped file. It covers
        // objects, strings, numbers, booleans and nulls; anything else falls through.
        if let Some(df) = load_typed(path) {
            return Ok(Loaded {
                frame: Frame::new(df),
                skipped: vec![],
            });
        }
        // The fast path streams the file twice in chunks (schema, then rows), never holding it whole.
        // Any failure falls through to the careful path below, which names the bad line.
        if let Ok(df) = load_jsonl_chunked(path) {
            return Ok(Loaded {
                frame: Frame::new(df),
                skipped: vec![],
            });
        }
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: shown.clone(),
        source,
    })?;
    let (bytes, skipped) = if opts.skip_bad_lines {
        drop_bad_lines(&bytes)
    } else {
        (bytes, vec![])
    };
    Ok(Loaded {
        frame: Frame::new(frame_from_jsonl_bytes(&bytes, &shown)?),
        skipped,
    })
}

/// Parses JSON lines held in memory, the schema inferred over all of them; a bad line is reported as
/// `shown:line`. Blank input gives an empty frame.
pub fn frame_from_jsonl_bytes(bytes: &[u8], shown: &str) -> Result<DataFrame, DataError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(DataFrame::empty());
    }
    parse_jsonl(bytes).map_err(|err| {
        // polars does not say which line failed: find it ourselves, only on this slow path.
        match first_bad_line(bytes) {
            Some((line, reason, start)) => DataError::BadLine {
                path: shown.to_string(),
                line,
                reason,
                start,
            },
            None => DataError::Invalid(format!("{shown}: {err}")),
        }
    })
}

/// Bytes per chunk of the streaming reader: big enough for polars to parse in parallel, small enough
/// that the raw text never costs much next to the frame.
const CHUNK_BYTES: usize = 8 << 20;

/// Reads `path` in chunks that end at a line break, calling `f` on each in order.
pub(super) fn for_each_chunk(
    path: &Path,
    mut f: impl FnMut(Vec<u8>) -> PolarsResult<()>,
) -> PolarsResult<()> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
        let n = (&mut reader)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        if chunk.last() != Some(&b'\n') {
            reader.read_until(b'\n', &mut chunk)?;
        }
        f(chunk)?;
    }
}

fn merge_schema(into: &mut Schema, other: &Schema) -> PolarsResult<()> {
    for (name, dtype) in other.iter() {
        let merged = match into.get(name) {
            Some(existing) => polars_core::utils::try_get_supertype(existing, dtype)?,
            None => dtype.clone(),
        };
        into.with_column(name.clone(), merged);
    }
    Ok(())
}

/// The schema over every line, inferred chunk by chunk on all cores and merged with polars' supertypes
/// (ints and floats give floats, structs get the union of their fields).
fn infer_schema_chunked(path: &Path) -> PolarsResult<Schema> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut schema = Schema::default();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let flush = |batch: &mut Vec<Vec<u8>>, schema: &mut Schema| -> PolarsResult<()> {
        let inferred: Vec<PolarsResult<Schema>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|chunk| {
                    s.spawn(move || {
                        polars::io::ndjson::infer_schema(&mut Cursor::new(chunk.as_slice()), None)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(polars_err!(ComputeError: "schema inference panicked"))
                    })
                })
                .collect()
        });
        for s in inferred {
            merge_schema(schema, &s?)?;
        }
        batch.clear();
        Ok(())
    };
    for_each_chunk(path, |chunk| {
        batch.push(chunk);
        if batch.len() == threads {
            flush(&mut batch, &mut schema)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut schema)?;
    Ok(schema)
}

fn load_typed(path: &Path) -> Option<DataFrame> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() == 0 {
        return None;
    }
    // SAFETY: a read-only map of a regular file (see `LazyJsonl::scan`).
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let _ = map.advise(memmap2::Advice::Sequential);
    let pieces = cut_at_line_ends(&map, PIECE_BYTES);
    // A parsed piece's pages are given back at once: the frame holds its own copy of the values, and
    // the file's pages and the frame together would double the memory a load needs.
    let release = |piece: &[u8]| {
        let offset = piece.as_ptr() as usize - map.as_ptr() as usize;
        // SAFETY: DONTNEED on a private read-only file mapping only drops pages; a later read of them
        // (a neighbouring piece sharing a boundary page) faults them back in from the file.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, piece.len())
        };
    };
    super::typed::frame_of_pieces(&pieces, super::typed::Keys::All, &release)
}

fn load_jsonl_chunked(path: &Path) -> PolarsResult<DataFrame> {
    let schema = std::sync::Arc::new(infer_schema_chunked(path)?);
    if schema.is_empty() {
        return Ok(DataFrame::empty());
    }
    let mut out: Option<DataFrame> = None;
    for_each_chunk(path, |chunk| {
        let df = JsonReader::new(Cursor::new(chunk.as_slice()))
            .with_json_format(JsonFormat::JsonLines)
            .with_schema(schema.clone())
            .finish()?;
        match &mut out {
            None => out = Some(df),
            Some(acc) => {
                acc.vstack_mut(&df)?;
            }
        }
        Ok(())
    })?;
    Ok(out.unwrap_or_else(DataFrame::empty))
}

fn parse_jsonl(bytes: &[u8]) -> PolarsResult<DataFrame> {
    JsonReader::new(Cursor::new(bytes))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None::<NonZeroUsize>)
        .finish()
}

/// The first line that is not a JSON object: its 1-based number, why, and its first characters.
fn first_bad_line(bytes: &[u8]) -> Option<(usize, String, String)> {
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if let Some(reason) = line_problem(raw) {
            let start: String = String::from_utf8_lossy(raw).chars().take(40).collect();
            return Some((i + 1, reason, start));
        }
    }
    None
}

pub(super) fn line_problem(raw: &[u8]) -> Option<String> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => return Some(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => None,
        Ok(_) => Some("not a JSON object".to_string()),
        Err(e) => Some(format!("invalid JSON ({e})")),
    }
}

fn drop_bad_lines(bytes: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut skipped = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if line_problem(raw).is_some() {
            skipped.push(i + 1);
        } else {
            kept.extend_from_slice(raw);
            kept.push(b'\n');
        }
    }
    (kept, skipped)
}

/// Writes JSON lines atomically.
pub fn save_jsonl(df: &DataFrame, path: &Path) -> Result<(), DataError> {
    let bytes = super::convert::frame_to_jsonl(df)?;
    rtlab_core::workspace::write_atomic(path, &bytes).map_err(|source| DataError::Write {
        path: path.display().to_string(),
        source,
    })
}

pub fn save_parquet(df: &DataFrame, path: &Path) -> Result<(), DataError> {
    let bytes = frame_to_parquet_bytes(df)?;
    rtlab_core::workspace::write_atomic(path, &bytes).map_err(|source| DataError::Write {
        path: path.display().to_string(),
        source,
    })
}

pub fn load_parquet(path: &Path) -> Result<DataFrame, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.display().to_string(),
        source,
    })?;
    frame_from_parquet_bytes(&bytes).map_err(|e| {
        DataError::Invalid(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
    })
}

pub fn load_csv(path: &Path) -> Result<DataFrame, DataError> {
    if !path.exists() {
        return Err(DataError::Read {
            path: path.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
}

/// Markdown files under `dir` as `{content, source}`; `shown` is the directory as the user wrote it, so
/// `source` stays relative and portable. `on_read` is called with each file read (the caller's input
/// log).
pub fn read_markdown_dir(
    dir: &Path,
    shown: &str,
    on_read: &mut dyn FnMut(&Path),
) -> Result<DataFrame, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Read {
            path: dir.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let read = std::fs::read_dir(&d).map_err(|source| DataError::Read {
            path: d.display().to_string(),
            source,
        })?;
        for entry in read.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut contents = Vec::new();
    let mut sources = Vec::new();
    for f in files {
        on_read(&f);
        let text = std::fs::read_to_string(&f).map_err(|source| DataError::Read {
            path: f.display().to_string(),
            source,
        })?;
        contents.push(text);
        let rel = f.strip_prefix(dir).unwrap_or(&f);
        sources.push(Path::new(shown).join(rel).display().to_string());
    }
    Ok(DataFrame::new(
        contents.len(),
        vec![
            Column::new("content".into(), contents),
            Column::new("source".into(), sources),
        ],
    )?)
}

/// The category of a VerilogEval problem, from keywords in its name.
pub fn problem_category(name: &str) -> &'static str {
    let l = name.to_lowercase();
    let table: &[(&str, &[&str])] = &[
        ("fsm", &["fsm", "state"]),
        ("arithmetic", &["add", "sub", "popcount", "mult"]),
        ("counter", &["count"]),
        ("shift_register", &["shift", "lfsr", "rotate"]),
        ("edge_detect", &["edge"]),
        ("mux", &["mux"]),
        ("gates", &["gate", "not", "wire", "xnor"]),
    ];
    table
        .iter()
        .find(|(_, keys)| keys.iter().any(|k| l.contains(k)))
        .map(|(c, _)| *c)
        .unwrap_or("other")
}

/// VerilogEval problems from `dir`; `on_read` is called with each file read (the caller's input log).
pub fn load_verilog_eval(
    dir: &Path,
    on_read: &mut dyn FnMut(&Path),
) -> Result<DataFrame, DataError> {
    let read = std::fs::read_dir(dir).map_err(|source| DataError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut ids: Vec<String> = read
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix("_prompt.txt"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no VerilogEval problems (files named ProbNNN_name_prompt.txt)",
            dir.display()
        )));
    }
    let (mut prompts, mut refs, mut tests, mut cats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in &ids {
        let mut file = |suffix: &str| {
            let p = dir.join(format!("{id}_{suffix}"));
            on_read(&p);
            std::fs::read_to_string(&p).map_err(|source| DataError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        prompts.push(file("prompt.txt")?);
        refs.push(file("ref.sv")?);
        tests.push(file("test.sv")?);
        cats.push(problem_category(id).to_string());
    }
    Ok(DataFrame::new(
        ids.len(),
        vec![
            Column::new("task_id".into(), ids),
            Column::new("prompt".into(), prompts),
            Column::new("ref".into(), refs),
            Column::new("test".into(), tests),
            Column::new("category".into(), cats),
        ],
    )?)
}

/// The one field an empty struct column (a column of `#{}` maps, as `df.verify`'s `skipped` is when no
/// row skipped a stage) carries in Parquet, which cannot store a struct without fields. Reading
/// drops it again.
const EMPTY_STRUCT_FIELD: &str = "__rtlab_empty_struct";

/// Rebuilds every top-level struct column whose fields are exactly `from` with the fields `to` gives.
fn map_struct_columns(
    df: &DataFrame,
    matches: impl Fn(&[Field]) -> bool,
    to: impl Fn(&StructChunked) -> Vec<Series>,
) -> Result<DataFrame, DataError> {
    let mut columns = Vec::with_capacity(df.width());
    for c in df.columns() {
        match c.dtype() {
            DataType::Struct(fields) if matches(fields.as_slice()) => {
                let ca = c.struct_()?;
                let fields = to(ca);
                let rebuilt = StructChunked::from_series(c.name().clone(), c.len(), fields.iter())?
                    .with_outer_validity(ca.rechunk().rechunk_validity());
                columns.push(rebuilt.into_series().into_column());
            }
            _ => columns.push(c.clone()),
        }
    }
    Ok(DataFrame::new(df.height(), columns)?)
}

pub fn frame_to_parquet_bytes(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
    let mut df = map_struct_columns(
        df,
        |fields| fields.is_empty(),
        |ca| {
            vec![Series::full_null(
                EMPTY_STRUCT_FIELD.into(),
                ca.len(),
                &DataType::Boolean,
            )]
        },
    )?;
    ParquetWriter::new(&mut buf).finish(&mut df)?;
    Ok(buf)
}

pub fn frame_from_parquet_bytes(bytes: &[u8]) -> Result<DataFrame, DataError> {
    let df = ParquetReader::new(Cursor::new(bytes)).finish()?;
    map_struct_columns(
        &df,
        |fields| fields.len() == 1 && fields[0].name().as_str() == EMPTY_STRUCT_FIELD,
        |_| Vec::new(),
    )
}

/// The size of the pieces the workers take: small enough to balance the cores, big enough that
/// polars' per-piece work (one filter evaluation) costs nothing.
pub(super) const PIECE_BYTES: usize = 4 << 20;

/// Cuts `bytes` into pieces of about `size` bytes, each ending at a line end (or the end of the file).
pub(super) fn cut_at_line_ends(bytes: &[u8], size: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(bytes.len() / size + 1);
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + size).min(bytes.len());
        if end < bytes.len() {
            end = memchr::memchr(b'\n', &bytes[end..]).map_or(bytes.len(), |i| end + i + 1);
        }
        pieces.push(&bytes[start..end]);
        start = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of JSON rows, as a JSONL file of them reads.
    fn frame_of(rows: &[serde_json::Value]) -> crate::Frame {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        crate::Frame::new(crate::convert::jsonl_to_frame(text.as_bytes()).unwrap())
    }

    /// `df.verify` gives a `skipped` column of `#{}` maps when no row skipped a stage: a struct without
    /// fields, which Parquet cannot hold. The notebook's cache and `save_parquet` must still round-trip
    /// it, with the frame's other columns untouched.
    #[test]
    fn a_column_of_empty_maps_survives_parquet() {
        let lines: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"skipped": {}, "metadata": {"id": i}}))
            .collect();
        let frame = frame_of(&lines);
        assert_eq!(
            frame.df.column("skipped").unwrap().dtype(),
            &DataType::Struct(vec![])
        );
        let bytes = frame_to_parquet_bytes(&frame.df).unwrap();
        let back = frame_from_parquet_bytes(&bytes).unwrap();
        assert_eq!(back.schema(), frame.df.schema());
        assert!(back.equals_missing(&frame.df));
    }

    /// The cell cache keys on `content_hash`, and a restored frame comes back from Parquet: the same
    /// values must hash the same whatever their memory layout. A filtered and sorted string column
    /// (views into the old buffers, several chunks) hashed differently from its round trip, and an
    /// unchanged rerun of a plan script retrained.
    #[test]
    fn a_frame_hashes_the_same_after_filter_sort_and_a_parquet_round_trip() {
        let lines: Vec<serde_json::Value> = (0..200)
            .map(|i| {
                // What `df.verify` gives: a struct with a null field, a list, a struct of no fields.
                let lint: Vec<String> = (0..(i % 3)).map(|k| format!("w{k}")).collect();
                serde_json::json!({
                    "text": format!("row {i} {}", "x".repeat(i % 17)),
                    "n": i * 7 % 13,
                    "metadata": {"mutation": null, "id": format!("t{i}")},
                    "lint": lint,
                    "skipped": {},
                })
            })
            .collect();
        let frame = frame_of(&lines);
        let other = frame_of(&lines);
        let mut df = frame.df.vstack(&other.df).unwrap();
        df = df
            .filter(
                &df.column("n")
                    .unwrap()
                    .as_materialized_series()
                    .gt(3)
                    .unwrap(),
            )
            .unwrap()
            .sort(
                ["n"],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .unwrap();
        let before = crate::Frame::new(df.clone()).content_hash().unwrap();
        let back = frame_from_parquet_bytes(&frame_to_parquet_bytes(&df).unwrap()).unwrap();
        assert!(back.equals_missing(&df));
        assert_eq!(crate::Frame::new(back).content_hash().unwrap(), before);
    }
}
