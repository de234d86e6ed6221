//! Experimental hygiene: keep a benchmark's problems out of the data that trains what it scores.
//!
//! - [`split_by_group`]: a seeded split in which every row of one group (a task id, a category)
//!   lands on the same side.
//! - [`Sketch`]: each training row's n-grams and content hash, kept beside an adapter;
//!   [`Sketch::copies`] is the one rule for "this row copies that problem", by which
//!   `df.decontaminate(against)` drops rows, `overlap(df, against)` lists them ([`find_overlaps`])
//!   and a benchmark refuses an adapter ([`Sketch::leaked`]).
//!
//! **The n-grams.** Text is cut into tokens as a Verilog lexer would (identifiers, keywords, numbers,
//! operators; comments and whitespace dropped), so reformatting changes nothing. A window of `n`
//! tokens in which at most half are identifiers reads as code: its identifiers are renamed by order
//! of first appearance (`q <= q + 1` and `count <= count + 1` are the same 5 tokens), so renaming
//! signals changes nothing either. A window with more identifiers than that reads as prose and is
//! compared word for word. The default `n` is 13, the n-gram length of GPT-3's contamination study
//! (Brown et al. 2020, appendix C), also used by later model reports.
//!
//! **Copying is containment.** A training row copies a benchmark row when it holds at least half
//! ([`LEAK_CONTAINMENT`]) of the specific n-grams of the benchmark row's prompt or of its reference:
//! one shared window is not enough, since two unrelated designs often share a port list or a reset
//! branch, while a copy holds most of the original.
//!
//! **Boilerplate does not count.** An n-gram is boilerplate when it appears in at least
//! [`BOILERPLATE_AGAINST_ROWS`] rows of the benchmark side (the port-list sentence every VerilogEval
//! v2 prompt starts with, a synchronous reset), in at least [`boilerplate_rows`] of the training
//! side's rows (1%, at least 10), or, for the default n, in 3 or more of VerilogEval v2's 156
//! problems ([`verilog_eval_boilerplate`], so that a benchmark of two of them still knows the
//! sentence all of them share). Only the other n-grams are evidence that a row copies a problem.

use crate::DataError;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

/// GPT-3's n-gram length for contamination (Brown et al. 2020).
pub const DEFAULT_N: usize = 13;

/// An n-gram in this many rows of the benchmark side is shared structure, not one problem's.
pub const BOILERPLATE_AGAINST_ROWS: usize = 3;

/// A training row that holds at least this share of a benchmark text's specific n-grams copies it;
/// a problem whose specific n-grams are at least this share in a training set was trained on.
pub const LEAK_CONTAINMENT: f64 = 0.5;

/// The 13-grams found in 3 or more of VerilogEval v2's 156 problems (prompt and reference), kept in
/// `verilog_eval_boilerplate.txt` (one hex hash a line). A unit test recomputes them from
/// `data/verilog-eval-v2` and fails when the file is stale (`UPDATE_BOILERPLATE=1` rewrites it).
pub fn verilog_eval_boilerplate() -> &'static HashSet<u64> {
    static SET: std::sync::OnceLock<HashSet<u64>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        include_str!("verilog_eval_boilerplate.txt")
            .lines()
            .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
            .collect()
    })
}

/// Whether `g` (an n-gram of length `n`) is boilerplate everywhere: shared by VerilogEval's problems.
fn known_boilerplate(g: u64, n: usize) -> bool {
    n == DEFAULT_N && verilog_eval_boilerplate().contains(&g)
}

/// The n-grams that `at_least` of the rows (each its texts) hold.
pub fn shared_ngrams(rows: &[Vec<String>], n: usize, at_least: usize) -> BTreeSet<u64> {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for texts in rows {
        for g in row_ngrams(texts, n) {
            *counts.entry(g).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, c)| *c >= at_least)
        .map(|(g, _)| g)
        .collect()
}

/// An n-gram in this many of `rows` training rows (1%, at least 10) is the corpus's boilerplate.
pub fn boilerplate_rows(rows: usize) -> usize {
    (rows / 100).max(10)
}

/// Verilog and SystemVerilog keywords: kept as they are when a window's identifiers are renamed.
const KEYWORDS: &[&str] = &[
    "always",
    "always_comb",
    "always_ff",
    "always_latch",
    "and",
    "assign",
    "automatic",
    "begin",
    "bit",
    "buf",
    "byte",
    "case",
    "casex",
    "casez",
    "default",
    "defparam",
    "else",
    "end",
    "endcase",
    "endfunction",
    "endgenerate",
    "endmodule",
    "endtask",
    "enum",
    "for",
    "forever",
    "function",
    "generate",
    "genvar",
    "if",
    "initial",
    "inout",
    "input",
    "int",
    "integer",
    "localparam",
    "logic",
    "module",
    "nand",
    "negedge",
    "nor",
    "not",
    "or",
    "output",
    "parameter",
    "posedge",
    "real",
    "reg",
    "repeat",
    "signed",
    "struct",
    "task",
    "typedef",
    "unique",
    "unsigned",
    "while",
    "wire",
    "xnor",
    "xor",
];

/// Operators of more than one character, longest first.
const OPERATORS: &[&str] = &[
    "<<<", ">>>", "===", "!==", "<=", ">=", "==", "!=", "&&", "||", "<<", ">>", "**", "~&", "~|",
    "~^", "^~", "+:", "-:", "->", "::",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Identifier,
    /// Keywords, numbers, operators, strings, system tasks: kept as they are.
    Literal,
}

/// The tokens of `text`, comments and whitespace dropped.
fn tokens(text: &str) -> Vec<(Kind, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    while i < bytes.len() {
        let b = bytes[i];
        let rest = &text[i..];
        let start = i;
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        }
        if let Some(comment) = rest.strip_prefix("/*") {
            i += comment.find("*/").map_or(rest.len(), |e| e + 4);
            continue;
        }
        let kind = if b.is_ascii_alphabetic() || b == b'_' {
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            if KEYWORDS.contains(&&text[start..i]) {
                Kind::Literal
            } else {
                Kind::Identifier
            }
        } else if b == b'$' {
            // A system task (`$display`): part of the language, not a name.
            i += 1;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            Kind::Literal
        } else if b.is_ascii_digit()
            || (b == b'\'' && bytes.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()))
        {
            // A number with its size and base: 8'hFF, 'b0, 3.5, 1_000.
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || matches!(bytes[i], b'_' | b'\'' | b'.' | b'?'))
            {
                i += 1;
            }
            Kind::Literal
        } else if b == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
            Kind::Literal
        } else {
            let op = OPERATORS.iter().find(|op| rest.starts_with(**op));
            // One character, whole: text that is not ASCII is cut at character boundaries.
            i += op.map_or_else(
                || rest.chars().next().map_or(1, char::len_utf8),
                |op| op.len(),
            );
            Kind::Literal
        };
        out.push((kind, &text[start..i]));
    }
    out
}

/// One window as it is compared, piece by piece into `emit`: identifiers renamed by first appearance
/// (`$0`, `$1`, ...) when the window reads as code, word for word when it reads as prose; tokens
/// separated by one space. [`normalized`] collects the pieces into text, [`window_hash`] hashes them
/// without building it (the n-grams of a 1,310-row dataset are half a million windows).
fn normalize(window: &[(Kind, &str)], mut emit: impl FnMut(&[u8])) {
    let identifiers = window
        .iter()
        .filter(|(k, _)| *k == Kind::Identifier)
        .count();
    let code = identifiers * 2 <= window.len();
    let mut names: Vec<&str> = Vec::with_capacity(window.len());
    let mut digits = String::with_capacity(4);
    for (i, (kind, token)) in window.iter().enumerate() {
        if i > 0 {
            emit(b" ");
        }
        if code && *kind == Kind::Identifier {
            let index = names.iter().position(|n| n == token).unwrap_or_else(|| {
                names.push(token);
                names.len() - 1
            });
            digits.clear();
            let _ = write!(digits, "${index}");
            emit(digits.as_bytes());
        } else {
            emit(token.as_bytes());
        }
    }
}

fn normalized(window: &[(Kind, &str)]) -> String {
    let mut text = Vec::new();
    normalize(window, |piece| text.extend_from_slice(piece));
    String::from_utf8_lossy(&text).into_owned()
}

/// FNV-1a (64 bits): stable across versions and machines (the hashes are stored beside adapters and
/// in `verilog_eval_boilerplate.txt`), and cheap for a 13-token window.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The hash of a window's normalized text, as [`normalized`] writes it.
fn hash(window: &str) -> u64 {
    let mut h = Fnv::new();
    h.bytes(window.as_bytes());
    h.0
}

/// `hash(&normalized(window))`, without the text.
fn window_hash(window: &[(Kind, &str)]) -> u64 {
    let mut h = Fnv::new();
    normalize(window, |piece| h.bytes(piece));
    h.0
}

/// The n-grams of `text`, hashed: a text of fewer than `n` tokens is one n-gram of all of them.
pub fn ngrams(text: &str, n: usize) -> HashSet<u64> {
    let t = tokens(text);
    if t.is_empty() {
        return HashSet::new();
    }
    if t.len() < n {
        return HashSet::from([window_hash(&t)]);
    }
    t.windows(n).map(window_hash).collect()
}

/// The normalized windows of `text` (see [`ngrams`]), for showing which one two texts share.
fn windows(text: &str, n: usize) -> Vec<String> {
    let t = tokens(text);
    if t.is_empty() {
        return Vec::new();
    }
    if t.len() < n {
        return vec![normalized(&t)];
    }
    t.windows(n).map(normalized).collect()
}

/// The n-grams of a row: the union over its texts (one per column).
fn row_ngrams(texts: &[String], n: usize) -> HashSet<u64> {
    texts.iter().flat_map(|t| ngrams(t, n)).collect()
}

/// One row of the training side that copies one row of the benchmark side.
#[derive(Clone, Debug)]
pub struct Overlap {
    /// The row of the training side (0-based).
    pub row: usize,
    /// The row of the benchmark side (0-based).
    pub against_row: usize,
    /// How many of the benchmark row's specific n-grams the training row holds.
    pub shared: usize,
    /// Their share of that text's specific n-grams (the text of the benchmark row it copies most).
    pub containment: f64,
    /// One shared n-gram as it is compared (identifiers renamed `$0`, `$1`, ...); filled by
    /// [`find_overlaps`].
    pub example: String,
    /// The specific n-grams of the benchmark text the row copies.
    specific: HashSet<u64>,
}

/// Every (training row, benchmark row) pair in which the training row copies the benchmark row:
/// [`Sketch::copies`] on the training rows' sketch, with one shared n-gram of each pair as text.
/// `rows` and `against` hold each row's texts, one per column.
pub fn find_overlaps(rows: &[Vec<String>], against: &[Vec<String>], n: usize) -> Vec<Overlap> {
    let mut found = Sketch::of_rows(rows, n).copies(against);
    for o in &mut found {
        let specific = &o.specific;
        o.example = rows[o.row]
            .iter()
            .flat_map(|t| windows(t, n))
            .find(|w| specific.contains(&hash(w)))
            .unwrap_or_default();
    }
    found
}

/// Which group each row's group is on: true for the test side. The groups are ordered by a hash of
/// the seed and the group's name (a seeded random order that does not depend on the rows' order),
/// and the first `test_groups` of them are the test side, so every row of a group is on one side.
pub fn split_by_group(
    groups: &[String],
    test: TestSize,
    seed: u64,
) -> Result<Vec<bool>, DataError> {
    let distinct: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
    let count = match test {
        TestSize::Fraction(f) => (f * distinct.len() as f64).round() as usize,
        TestSize::Groups(g) => g,
    };
    if count > distinct.len() {
        return Err(DataError::Invalid(format!(
            "test asks for {count} groups but there are {}",
            distinct.len()
        )));
    }
    let mut order: Vec<(blake3::Hash, &str)> = distinct
        .into_iter()
        .map(|g| {
            let mut h = blake3::Hasher::new();
            h.update(&seed.to_le_bytes());
            h.update(g.as_bytes());
            (h.finalize(), g)
        })
        .collect();
    order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    let test_side: HashSet<&str> = order.iter().take(count).map(|(_, g)| *g).collect();
    Ok(groups
        .iter()
        .map(|g| test_side.contains(g.as_str()))
        .collect())
}

/// How large the test side of a split is.
#[derive(Clone, Copy, Debug)]
pub enum TestSize {
    /// This share of the groups, rounded.
    Fraction(f64),
    /// This many groups.
    Groups(usize),
}

/// The n-gram format of this rtlab's sketches: bump it when tokens, normalization or the hash change.
pub const SKETCH_FORMAT: u32 = 1;

/// The file an adapter dir keeps its training data's [`Sketch`] in (written by `train_lora` and
/// `train_dpo`, a starting adapter's sketch included); `benchmark` reads it to refuse problems the
/// adapter was trained on.
pub const TRAINING_DATA_FILE: &str = "training_data.json";

/// The sketch an adapter dir records, if it records one (adapters trained elsewhere don't).
pub fn read_training_sketch(adapter_dir: &std::path::Path) -> Result<Option<Sketch>, DataError> {
    let path = adapter_dir.join(TRAINING_DATA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let sketch: Sketch = serde_json::from_str(&text).map_err(|e| {
                DataError::Invalid(format!(
                    "{}: {e}; run the adapter's train_lora or train_dpo again to write it anew (a finished run is not retrained)",
                    path.display()
                ))
            })?;
            if sketch.format != SKETCH_FORMAT {
                return Err(DataError::Invalid(format!(
                    "{}: written by another rtlab (n-gram format {}, this one reads {SKETCH_FORMAT}); run the adapter's train_lora or train_dpo again to write it anew (a finished run is not retrained)",
                    path.display(),
                    sketch.format
                )));
            }
            Ok(Some(sketch))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::Read {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// The n-grams of each row of a training set and a content hash of each row: what an adapter keeps
/// of the data that made it, enough to tell whether one of its rows copies a benchmark problem.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sketch {
    /// How the n-grams were cut and hashed ([`SKETCH_FORMAT`]); a sketch of another format cannot
    /// be compared with this rtlab's n-grams.
    #[serde(default)]
    pub format: u32,
    pub n: usize,
    /// blake3 of each row's texts (joined by NUL), 16 hex digits.
    pub row_hashes: Vec<String>,
    /// Each row's n-grams, sorted; those VerilogEval's problems share ([`verilog_eval_boilerplate`])
    /// are left out, as they never count.
    pub rows: Vec<Vec<u64>>,
}

impl Sketch {
    pub fn of_rows(rows: &[Vec<String>], n: usize) -> Sketch {
        use rayon::prelude::*;
        Sketch {
            format: SKETCH_FORMAT,
            n,
            row_hashes: rows
                .iter()
                .map(|texts| blake3::hash(texts.join("\0").as_bytes()).to_hex()[..16].to_string())
                .collect(),
            rows: rows
                .par_iter()
                .map(|texts| {
                    let mut grams: Vec<u64> = row_ngrams(texts, n)
                        .into_iter()
                        .filter(|g| !known_boilerplate(*g, n))
                        .collect();
                    grams.sort_unstable();
                    grams
                })
                .collect(),
        }
    }

    /// The rows of two training sets (an adapter trained on top of another's).
    pub fn merge(&self, other: &Sketch) -> Sketch {
        let mut merged = self.clone();
        merged.row_hashes.extend(other.row_hashes.iter().cloned());
        merged.rows.extend(other.rows.iter().cloned());
        merged
    }

    /// The problems (each its texts: prompt, reference) that some training row copies
    /// ([`Sketch::copies`]), each once, with the highest share.
    pub fn leaked(&self, problems: &[Vec<String>]) -> Vec<(usize, f64)> {
        let mut worst: std::collections::BTreeMap<usize, f64> = Default::default();
        for c in self.copies(problems) {
            let w = worst.entry(c.against_row).or_default();
            *w = w.max(c.containment);
        }
        worst.into_iter().collect()
    }

    /// Every (training row, problem) pair in which the row holds at least [`LEAK_CONTAINMENT`] of
    /// the specific n-grams of one of the problem's texts (its prompt, its reference): the rule by
    /// which `decontaminate` drops rows and `benchmark` refuses an adapter. Specific means not
    /// boilerplate: not in [`BOILERPLATE_AGAINST_ROWS`] of the problems, not shared by VerilogEval's
    /// problems, not in [`boilerplate_rows`] of the training rows.
    pub fn copies(&self, problems: &[Vec<String>]) -> Vec<Overlap> {
        let common = boilerplate_rows(self.rows.len());
        let per_text: Vec<Vec<HashSet<u64>>> = problems
            .iter()
            .map(|texts| texts.iter().map(|t| ngrams(t, self.n)).collect())
            .collect();
        let mut problems_holding: HashMap<u64, usize> = HashMap::new();
        for texts in &per_text {
            let row: HashSet<u64> = texts.iter().flatten().copied().collect();
            for g in row {
                *problems_holding.entry(g).or_default() += 1;
            }
        }
        // n-gram → the training rows that hold it, for the problems' n-grams only (a training set's
        // own n-grams are a hundred times more).
        let mut holders: HashMap<u64, Vec<usize>> = HashMap::new();
        for (r, grams) in self.rows.iter().enumerate() {
            for g in grams.iter().filter(|g| problems_holding.contains_key(g)) {
                holders.entry(*g).or_default().push(r);
            }
        }
        // (training row, problem) → (shared, containment, that text's specific n-grams), the text
        // the row copies most.
        let mut best: std::collections::BTreeMap<(usize, usize), (usize, f64, HashSet<u64>)> =
            Default::default();
        for (p, texts) in per_text.iter().enumerate() {
            for grams in texts {
                let specific: HashSet<u64> = grams
                    .iter()
                    .copied()
                    .filter(|g| {
                        problems_holding[g] < BOILERPLATE_AGAINST_ROWS
                            && !known_boilerplate(*g, self.n)
                            && holders.get(g).map_or(0, Vec::len) < common
                    })
                    .collect();
                let mut hits: HashMap<usize, usize> = HashMap::new();
                for g in &specific {
                    for r in holders.get(g).into_iter().flatten() {
                        *hits.entry(*r).or_default() += 1;
                    }
                }
                for (r, shared) in hits {
                    let share = shared as f64 / specific.len() as f64;
                    let entry = best.entry((r, p)).or_insert((0, 0.0, HashSet::new()));
                    if share > entry.1 {
                        *entry = (shared, share, specific.clone());
                    }
                }
            }
        }
        best.into_iter()
            .filter(|(_, (_, share, _))| *share >= LEAK_CONTAINMENT)
            .map(
                |((row, against_row), (shared, containment, specific))| Overlap {
                    row,
                    against_row,
                    shared,
                    containment,
                    specific,
                    example: String::new(),
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verilog_eval_boilerplate_file_is_what_the_bundled_problems_give() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/verilog-eval-v2");
        let df = crate::io::load_verilog_eval(&dir, &mut |_| {}).unwrap();
        let text = |c: &str| -> Vec<String> {
            df.column(c)
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect()
        };
        let (prompts, refs) = (text("prompt"), text("ref"));
        let rows: Vec<Vec<String>> = prompts
            .into_iter()
            .zip(refs)
            .map(|(p, r)| vec![p, r])
            .collect();
        let expected: String = shared_ngrams(&rows, DEFAULT_N, BOILERPLATE_AGAINST_ROWS)
            .iter()
            .map(|g| format!("{g:016x}\n"))
            .collect();
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/verilog_eval_boilerplate.txt");
        if std::env::var_os("UPDATE_BOILERPLATE").is_some() {
            std::fs::write(&file, &expected).unwrap();
        }
        assert!(
            include_str!("verilog_eval_boilerplate.txt") == expected,
            "{} is stale: rerun with UPDATE_BOILERPLATE=1 (and rebuild)",
            file.display()
        );
        assert!(
            expected.lines().count() > 100,
            "the prompts' shared sentence alone is dozens of 13-grams"
        );
    }

    const COUNTER: &str = "module TopModule(input clk, input reset, output reg [3:0] q);
  always @(posedge clk)
    if (reset) q <= 4'd0;
    else if (q == 4'd9) q <= 4'd0;
    else q <= q + 4'd1;
endmodule";

    /// The counter above, its signals renamed, its comments and layout changed.
    const COUNTER_RENAMED: &str = "// a decade counter
module dec_cnt (input wire ck, input wire rst, output reg [3:0] value);
always @(posedge ck) if (rst) value <= 4'd0; else if (value == 4'd9) value <= 4'd0; /* wrap */ else value <= value + 4'd1;
endmodule";

    #[test]
    fn renaming_and_reformatting_leave_the_ngrams_of_code_unchanged() {
        let a = ngrams(COUNTER, DEFAULT_N);
        let b = ngrams(COUNTER_RENAMED, DEFAULT_N);
        let shared = a.intersection(&b).count();
        assert!(
            shared * 2 >= a.len(),
            "{shared} of {} n-grams shared",
            a.len()
        );
    }

    #[test]
    fn a_window_hashes_as_its_normalized_text() {
        let t = tokens(
            "module m(input a, output y); assign y = ~a; // not\nendmodule the end of it all",
        );
        for w in t.windows(5).chain(t.windows(13)) {
            assert_eq!(window_hash(w), hash(&normalized(w)), "{}", normalized(w));
        }
    }

    #[test]
    fn prose_is_compared_word_for_word() {
        let a = ngrams("the module should count from zero to nine and then wrap around to zero again on the next clock", 5);
        let b = ngrams("every output is driven low when the reset input is asserted at the rising edge of a clock", 5);
        assert!(
            a.is_disjoint(&b),
            "different sentences of distinct words share no n-gram"
        );
    }

    #[test]
    fn a_split_keeps_each_group_on_one_side_and_repeats_for_a_seed() {
        let groups: Vec<String> = (0..40).map(|i| format!("task{}", i % 10)).collect();
        let side = split_by_group(&groups, TestSize::Fraction(0.5), 7).unwrap();
        for (g, s) in groups.iter().zip(&side) {
            let same: Vec<bool> = groups
                .iter()
                .zip(&side)
                .filter(|(h, _)| *h == g)
                .map(|(_, s)| *s)
                .collect();
            assert!(same.iter().all(|x| x == s), "{g} is on both sides");
        }
        assert_eq!(
            side.iter().filter(|s| **s).count(),
            20,
            "5 of 10 groups, 4 rows each"
        );
        assert_eq!(
            side,
            split_by_group(&groups, TestSize::Fraction(0.5), 7).unwrap()
        );
        assert_ne!(
            side,
            split_by_group(&groups, TestSize::Fraction(0.5), 8).unwrap()
        );
        assert!(split_by_group(&groups, TestSize::Groups(11), 7).is_err());
    }

    #[test]
    fn a_pasted_design_is_found_and_a_keyword_neighbour_is_not() {
        let against = vec![vec![COUNTER.to_string()]];
        let rows = vec![
            vec!["write a counter".to_string(), COUNTER_RENAMED.to_string()],
            vec![
                "an and gate".to_string(),
                "module and_gate(input a, input b, output y); assign y = a & b; endmodule"
                    .to_string(),
            ],
        ];
        let found = find_overlaps(&rows, &against, DEFAULT_N);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].row, found[0].against_row), (0, 0));
        let sketch = Sketch::of_rows(&rows, DEFAULT_N);
        assert_eq!(sketch.leaked(&against).len(), 1);
        let clean = Sketch::of_rows(&rows[1..], DEFAULT_N);
        assert!(clean.leaked(&against).is_empty());
    }
}
