//! `bleu` and `chrf` give sacrebleu's numbers (its defaults) on a fixture of Verilog, English,
//! numbers, entities, Unicode, empty and multi-line segments: checked against the numbers sacrebleu
//! 2.6 wrote into the fixture, and against sacrebleu run live (installed by `.ci/run`).

use crate::common::{err, ok, repo_root};

/// rtlab's scores of the fixture in expected.json's shape: corpus, first 5 rows, each row alone.
fn rtlab_scores() -> serde_json::Value {
    let pairs = repo_root().join("tests/fixtures/sacrebleu/pairs.jsonl");
    let printed = ok(&format!(
        r#"let pairs = load_jsonl("{}");
        let both = |f| #{{bleu: bleu(f, "hypothesis", "reference"), chrf: chrf(f, "hypothesis", "reference")}};
        let rows = [];
        for i in 0..pairs.len() {{ rows.push(both.call(pairs.slice(i, 1))); }}
        // The array form gives what the column form gives.
        let h = pairs.column("hypothesis");
        let r = pairs.column("reference");
        assert_eq(bleu(h, r), bleu(pairs, "hypothesis", "reference"));
        assert_eq(chrf(h, r), chrf(pairs, "hypothesis", "reference"));
        print(to_json(#{{corpus: both.call(pairs), first5: both.call(pairs.head(5)), rows: rows}}));"#,
        pairs.display()
    ));
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{e}: {printed}"))
}

/// Every score of `got` within `tolerance` of `want`'s; returns the largest difference.
fn max_difference(got: &serde_json::Value, want: &serde_json::Value) -> f64 {
    let mut pairs = vec![
        ("corpus".to_string(), &got["corpus"], &want["corpus"]),
        ("first5".to_string(), &got["first5"], &want["first5"]),
    ];
    let rows = want["rows"].as_array().unwrap();
    assert_eq!(got["rows"].as_array().unwrap().len(), rows.len());
    for (i, w) in rows.iter().enumerate() {
        pairs.push((format!("row {i}"), &got["rows"][i], w));
    }
    let mut worst: f64 = 0.0;
    for (what, g, w) in pairs {
        for metric in ["bleu", "chrf"] {
            let (g, w) = (g[metric].as_f64().unwrap(), w[metric].as_f64().unwrap());
            assert!(
                (g - w).abs() < 0.005,
                "{what} {metric}: rtlab {g}, sacrebleu {w}"
            );
            worst = worst.max((g - w).abs());
        }
    }
    worst
}

#[test]
fn bleu_and_chrf_give_the_numbers_sacrebleu_wrote_into_the_fixture() {
    let fixture = repo_root().join("tests/fixtures/sacrebleu/expected.json");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let worst = max_difference(&rtlab_scores(), &want);
    // Not just to 2 decimals: the same statistics and formulas give the same floats, up to rounding.
    assert!(worst < 1e-9, "largest difference {worst}");
}

#[test]
fn bleu_and_chrf_agree_with_sacrebleu_run_now() {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/sacrebleu_scores.py"))
        .arg(repo_root().join("tests/fixtures/sacrebleu/pairs.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sacrebleu_scores.py failed; it needs sacrebleu (pip install sacrebleu; .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let worst = max_difference(&rtlab_scores(), &want);
    assert!(
        worst < 1e-9,
        "largest difference {worst} against sacrebleu {}",
        want["sacrebleu"]
    );
}

#[test]
fn metric_inputs_that_do_not_pair_up_are_refused_naming_what_is_wrong() {
    let e = err(r#"bleu(["a", "b"], ["a"])"#);
    assert!(
        e.contains("bleu: 2 hypotheses but 1 references; pass one reference per hypothesis"),
        "{e}"
    );
    let e = err(r#"chrf(["a", 3], ["a", "b"])"#);
    assert!(
        e.contains("chrf: hypotheses[1] is i64, not a string"),
        "{e}"
    );
    let e = err(r#"bleu([], [])"#);
    assert!(e.contains("no hypotheses"), "{e}");
    let e = err(r#"bleu(from_records([#{h: "a", r: "b"}]), "h", "ref")"#);
    assert!(e.contains("bleu: column \"ref\""), "{e}");
    let e = err(r#"chrf(from_records([#{h: "a", r: "b"}, #{h: (), r: "c"}]), "h", "r")"#);
    assert!(e.contains("chrf: column \"h\" is null at row 1"), "{e}");
}
