//! Reference-based text metrics, as sacrebleu computes them with its defaults, so that a number from
//! rtlab can sit in a table beside one from a Python pipeline:
//!
//! - corpus BLEU: the `13a` tokenizer (mteval-v13a's, WMT's), n-grams up to 4, exponential
//!   smoothing (`smooth_method="exp"`), case-sensitive, one reference per hypothesis;
//! - corpus chrF: character n-grams up to 6, β = 2, whitespace removed, no word n-grams.
//!
//! Both are corpus scores: the sufficient statistics of every segment are summed first, and the
//! score is computed once from the sums (not an average of sentence scores). Both are on 0–100.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Python's `str.split()` whitespace: Unicode's, plus the four ASCII separators \x1c–\x1f.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// sacrebleu's `Tokenizer13a`: unescape four HTML entities, then split off punctuation and symbols,
/// periods and commas unless they sit in a number, and a dash after a digit.
pub fn tokenize_13a(line: &str) -> String {
    static RULES: OnceLock<[(Regex, &str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("a fixed pattern");
        [
            (re(r"([{-~\[-` -&(-+:-@/])"), " $1 "),
            (re(r"([^0-9])([.,])"), "$1 $2 "),
            (re(r"([.,])([^0-9])"), " $1 $2"),
            (re(r"([0-9])(-)"), "$1 $2 "),
        ]
    });
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, replacement) in rules {
        line = re.replace_all(&line, *replacement).into_owned();
    }
    py_split(&line).collect::<Vec<_>>().join(" ")
}

const BLEU_ORDER: usize = 4;

/// Word n-gram counts of orders 1..=4.
fn word_ngrams(tokens: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=BLEU_ORDER {
        for gram in tokens.windows(n) {
            *counts
                .entry(gram.iter().map(|s| s.to_string()).collect())
                .or_default() += 1;
        }
    }
    counts
}

/// Corpus BLEU of `hypotheses` against one reference each, on sacrebleu's 0–100 scale.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> f64 {
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    let mut correct = [0usize; BLEU_ORDER];
    let mut total = [0usize; BLEU_ORDER];
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp = tokenize_13a(hyp.trim_end_matches(is_py_space));
        let reference = tokenize_13a(reference.trim_end_matches(is_py_space));
        let hyp_tokens: Vec<&str> = py_split(&hyp).collect();
        let ref_tokens: Vec<&str> = py_split(&reference).collect();
        sys_len += hyp_tokens.len();
        ref_len += ref_tokens.len();
        let ref_counts = word_ngrams(&ref_tokens);
        for (gram, count) in word_ngrams(&hyp_tokens) {
            let n = gram.len() - 1;
            total[n] += count;
            correct[n] += count.min(ref_counts.get(&gram).copied().unwrap_or(0));
        }
    }
    bleu_from_stats(&correct, &total, sys_len, ref_len)
}

/// sacrebleu's `BLEU.compute_bleu` with `smooth_method="exp"`: an order with no match counts as
/// 100 / (2^k · total), k = how many such orders so far.
fn bleu_from_stats(correct: &[usize], total: &[usize], sys_len: usize, ref_len: usize) -> f64 {
    if correct.iter().all(|c| *c == 0) {
        return 0.0;
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; BLEU_ORDER];
    let mut smooth = 1.0;
    for n in 0..BLEU_ORDER {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // sacrebleu's `my_log`: log 0 is a very large negative number, so the score becomes 0.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|p| log(*p)).sum::<f64>() / BLEU_ORDER as f64).exp()
}

const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// sacrebleu's `CHRF._compute_f_score` on summed [hyp, ref, match] counts per order: the F-β of
/// the precision and recall averaged over the orders that both sides have.
fn chrf_from_stats(stats: &[[usize; 3]]) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_prec, mut avg_rec, mut orders) = (0.0, 0.0, 0usize);
    for [n_hyp, n_ref, n_match] in stats {
        if *n_hyp > 0 && *n_ref > 0 {
            avg_prec += *n_match as f64 / *n_hyp as f64;
            avg_rec += *n_match as f64 / *n_ref as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    avg_prec /= orders as f64;
    avg_rec /= orders as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
}

/// Corpus chrF of `hypotheses` against one reference each, on sacrebleu's 0–100 scale.
pub fn corpus_chrf(hypotheses: &[String], references: &[String]) -> f64 {
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let (h, r) = (char_ngrams(hyp), char_ngrams(reference));
        for n in 0..CHRF_ORDER {
            stats[n][0] += h[n].values().sum::<usize>();
            stats[n][1] += r[n].values().sum::<usize>();
            stats[n][2] += h[n]
                .iter()
                .map(|(g, c)| (*c).min(r[n].get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    chrf_from_stats(&stats)
}

/// Character n-gram counts of orders 1..=6 of `line` with its whitespace removed.
fn char_ngrams(line: &str) -> Vec<HashMap<String, usize>> {
    let chars: Vec<char> = py_split(line).flat_map(str::chars).collect();
    (1..=CHRF_ORDER)
        .map(|n| {
            let mut counts = HashMap::new();
            for gram in chars.windows(n) {
                *counts.entry(gram.iter().collect::<String>()).or_default() += 1;
            }
            counts
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_13a_tokenizer_splits_as_mteval_does() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(tokenize_13a("3.14 and 1,000"), "3.14 and 1,000");
        assert_eq!(tokenize_13a("a 3-bit bus"), "a 3 - bit bus");
        assert_eq!(tokenize_13a("assign y=a&b;"), "assign y = a & b ;");
        assert_eq!(tokenize_13a("x &amp; y &lt;= z"), "x & y < = z");
    }

    #[test]
    fn identical_text_scores_100_and_nothing_in_common_scores_0() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let text = s(&["the quick brown fox jumps over the lazy dog"]);
        assert!((corpus_bleu(&text, &text) - 100.0).abs() < 1e-9);
        assert!((corpus_chrf(&text, &text) - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&s(&["aaa"]), &s(&["bbb"])), 0.0);
        assert_eq!(corpus_chrf(&s(&["aaa"]), &s(&["bbb"])), 0.0);
    }
}
