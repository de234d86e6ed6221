//! Datasets on real data (VerilogEval v1, vendored in data/) and on bad input, through the stdlib as a
//! script uses it.

use crate::common;
use common::{err, ok};

#[test]
fn verilog_eval_v1_loads_filters_groups_and_joins() {
    let out = ok(r#"
        let problems = load_jsonl("verilog-eval-v1/VerilogEval_Human.jsonl");
        let descr = load_jsonl("verilog-eval-v1/VerilogDescription_Human.jsonl");
        print(problems.len());
        print(problems.columns());
        let joined = problems.join(descr, "task_id", "left");
        print(joined.filter(col("detail_description").is_null()).len());
        let fsm = joined.filter(col("detail_description").str_contains("(?i)state machine"));
        print(fsm.len() > 10);
        let lens = problems.with_column(col("canonical_solution").str_len().alias("n"));
        print(lens.sql("SELECT COUNT(*) AS c FROM self WHERE n > 0").row(0).c);
    "#);
    assert_eq!(
        out,
        "156\n[\"task_id\", \"prompt\", \"canonical_solution\", \"test\"]\n0\ntrue\n156\n"
    );
}

#[test]
fn nested_metadata_filters_groups_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    let rows = r#"{"instruction":"a","output":"module a; endmodule","metadata":{"category":"fsm","source":"gen"}}
{"instruction":"b","output":"module b; endmodule","metadata":{"category":"alu","source":"human"}}
{"instruction":"c","output":"module c; endmodule","metadata":{"category":"fsm","source":"human","score":0.97}}
"#;
    std::fs::write(&path, rows).unwrap();
    let out = ok(&format!(
        r#"
        let df = load_jsonl("{p}");
        print(df.filter(col("metadata.category") == "fsm").len());
        print(df.group_by(["metadata.category"]).agg([len().alias("n")]).to_records());
        print(df.filter(col("metadata.score") >= 0.95).row(0).instruction);
        df.save_jsonl("{p}.out");
        let back = load_jsonl("{p}.out");
        print(back.to_records() == df.to_records());
        print(back.schema()["metadata"]);
        "#,
        p = path.display()
    ));
    assert_eq!(
        out,
        "2\n[#{\"category\": \"alu\", \"n\": 1}, #{\"category\": \"fsm\", \"n\": 2}]\nc\ntrue\nstruct[3]\n"
    );
    // The round trip keeps the nested shape: each line is {instruction, output, metadata: {...}}.
    let written = std::fs::read_to_string(dir.path().join("rows.jsonl.out")).unwrap();
    let first: serde_json::Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(first["metadata"]["category"], "fsm");
    assert_eq!(first["metadata"]["source"], "gen");
}

#[test]
fn a_truncated_last_line_names_file_and_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3, \"b\": \"unfini").unwrap();
    let e = err(&format!("load_jsonl(\"{}\")", path.display()));
    assert!(e.contains("t.jsonl:3: invalid JSON"), "{e}");
    assert!(
        e.contains("the line starts with \"{\\\"a\\\": 3, \\\"b\\\": \\\"unfini\""),
        "{e}"
    );
    assert!(
        e.contains("on_bad_line"),
        "the message says how to skip: {e}"
    );
    let out = ok(&format!(
        "let df = load_jsonl(\"{}\", #{{on_bad_line: \"skip\"}}); print(df.len());",
        path.display()
    ));
    assert!(out.contains("skipped 1 bad line(s)"), "{out}");
    assert!(out.contains("line 3"), "{out}");
    assert!(out.ends_with("2\n"), "{out}");
}

#[test]
fn invalid_utf8_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.jsonl");
    std::fs::write(&path, b"{\"a\": \"ok\"}\n{\"a\": \"\xff\xfe\"}\n").unwrap();
    let e = err(&format!("load_jsonl(\"{}\")", path.display()));
    assert!(e.contains("u.jsonl:2: invalid UTF-8"), "{e}");
}

#[test]
fn a_field_whose_type_changes_between_rows_is_unified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    // An int then a float: the column is float. Inference reads every line, so row 3 counts.
    std::fs::write(&path, "{\"score\": 1}\n{\"score\": 0}\n{\"score\": 0.5}\n").unwrap();
    let out = ok(&format!(
        "let df = load_jsonl(\"{}\"); print(df.schema().score); print(df.row(2).score);",
        path.display()
    ));
    assert_eq!(out, "f64\n0.5\n");
}

#[test]
fn a_field_that_is_a_number_then_a_string_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    std::fs::write(&path, "{\"id\": 1}\n{\"id\": \"two\"}\n").unwrap();
    match common::eval_in_data(&format!(
        "let df = load_jsonl(\"{}\"); print(df.schema().id); print(df.len());",
        path.display()
    )) {
        Ok(out) => assert!(out.ends_with("2\n"), "{out}"),
        Err(e) => assert!(e.contains("s.jsonl"), "the error names the file: {e}"),
    }
}

#[test]
fn empty_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.jsonl");
    std::fs::write(&path, "").unwrap();
    assert_eq!(
        ok(&format!("print(load_jsonl(\"{}\").len());", path.display())),
        "0\n"
    );
    let e = err("load_jsonl(\"no/such.jsonl\")");
    assert!(
        e.contains("cannot read") && e.contains("no/such.jsonl"),
        "{e}"
    );
}

#[test]
fn a_filter_that_keeps_nothing_gives_an_empty_frame_that_still_works() {
    let out = ok(r#"
        let df = from_records([#{c: "fsm", s: 1.0}]);
        let none = df.filter(col("c") == "nothing");
        print(none.len());
        print(none.columns());
        print(none.group_by(["c"]).agg([col("s").mean()]).len());
        print(none.value_counts("c").len());
    "#);
    assert_eq!(out, "0\n[\"c\", \"s\"]\n0\n0\n");
}

#[test]
fn wrong_arguments_say_what_was_expected() {
    assert!(err("from_records([1, 2])").contains("records[0] is a i64, expected a map"));
    assert!(
        err("from_records([#{a: 1}]).join(from_records([#{a: 1}]), \"a\", \"sideways\")")
            .contains("unknown `how` \"sideways\"")
    );
    assert!(err("from_records([#{a: 1}]).filter(col(\"nope\") == 1)").contains("nope"));
    assert!(err("from_records([#{a: 1}]).sample(5, 42)")
        .contains("sample: n = 5 but the frame has 1 rows"));
}

#[test]
fn concat_unifies_schemas_and_shuffle_is_seeded() {
    let out = ok(r#"
        let a = from_records([#{x: 1}, #{x: 2}, #{x: 3}, #{x: 4}, #{x: 5}]);
        let b = from_records([#{x: 6, note: "new"}]);
        let all = concat([a, b]);
        print(all.columns());
        print(all.filter(col("note").is_null()).len());
        print(all.shuffle(42).column("x") == all.shuffle(42).column("x"));
        print(all.shuffle(42).column("x") != all.shuffle(7).column("x"));
        print(all.sample(3, 42).len());
    "#);
    assert_eq!(out, "[\"x\", \"note\"]\n5\ntrue\ntrue\n3\n");
}

#[test]
fn parquet_and_csv_bad_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_parquet = dir.path().join("scores.parquet");
    std::fs::write(&not_parquet, "this is text, not parquet").unwrap();
    let e = err(&format!("load_parquet(\"{}\")", not_parquet.display()));
    assert!(
        e.contains("scores.parquet: not a readable Parquet file"),
        "{e}"
    );
    let e = err("load_csv(\"no/such/scores.csv\")");
    assert!(
        e.contains("cannot read") && e.contains("no/such/scores.csv"),
        "{e}"
    );
    let e = err("load_parquet(\"no/such/scores.parquet\")");
    assert!(
        e.contains("cannot read") && e.contains("no/such/scores.parquet"),
        "{e}"
    );
}

#[test]
fn parquet_and_csv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.parquet");
    let c = dir.path().join("f.csv");
    std::fs::write(&c, "name,score\nfsm,0.5\nalu,1.0\n").unwrap();
    let out = ok(&format!(
        r#"
        let df = load_csv("{c}");
        df.save_parquet("{p}");
        let back = load_parquet("{p}");
        print(back.to_records() == df.to_records());
        print(back.row(-1).name);
        "#,
        c = c.display(),
        p = p.display()
    ));
    assert_eq!(out, "true\nalu\n");
}

#[test]
fn phases_follow_the_plan_and_split_writes_its_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&format!(
        r#"
        let kb = read_markdown_dir("knowledge_base");
        let s = split_by_phase(kb, "{d}");
        print(s.column("phase"));
        let rows = load_jsonl("{d}/synthesis/synthesis_training.jsonl");
        print(rows.columns());
        print(rows.row(0).metadata.phase);
        print(rows.row(0).prompt);
        "#,
        d = dir.path().display()
    ));
    assert_eq!(
        out,
        "[\"synthesis\", \"placement\", \"routing\", \"timing\", \"power\", \"verification\", \"floorplan\", \"general\"]\n[\"prompt\", \"response\", \"metadata\"]\nsynthesis\nAs a synthesis expert, explain this concept:\n"
    );
}

#[test]
fn a_file_bigger_than_a_chunk_unifies_types_and_fields_across_chunks() {
    // The reader streams 8 MiB chunks: a type that widens (int → float) and a struct field that
    // appears only near the end must still be inferred over the whole file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut text = String::new();
    let pad = "x".repeat(300);
    for i in 0..60_000 {
        if i < 59_990 {
            text.push_str(&format!("{{\"i\": {i}, \"score\": 1, \"pad\": \"{pad}\", \"metadata\": {{\"category\": \"fsm\"}}}}\n"));
        } else {
            text.push_str(&format!("{{\"i\": {i}, \"score\": 0.5, \"pad\": \"{pad}\", \"metadata\": {{\"category\": \"alu\", \"source\": \"late\"}}}}\n"));
        }
    }
    assert!(text.len() > 16 << 20, "at least three chunks");
    std::fs::write(&path, text).unwrap();
    let out = ok(&format!(
        r#"let df = load_jsonl("{}");
        print(df.len()); print(df.schema().score); print(df.schema().metadata);
        print(df.row(-1).metadata.source); print(df.row(0).metadata.source); print(df.row(-1).score);"#,
        path.display()
    ));
    assert_eq!(out, "60000\nf64\nstruct[2]\nlate\n\n0.5\n");
}

#[test]
fn a_lazy_scan_keeps_what_the_eager_filter_keeps_across_chunks_and_sinks_lines_untouched() {
    // Three chunks; the filter reads a nested field and a top-level one; key order and spacing of the
    // kept lines must survive the sink byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut text = String::new();
    let pad = "y".repeat(300);
    for i in 0..60_000 {
        let cat = ["fsm", "alu", "mux"][i % 3];
        text.push_str(&format!(
            "{{\"pad\": \"{pad}\",  \"metadata\": {{\"score\": {}, \"category\": \"{cat}\"}}, \"i\": {i}}}\n",
            (i % 10) as f64 / 10.0
        ));
    }
    std::fs::write(&path, &text).unwrap();
    let out_path = dir.path().join("kept.jsonl");
    let out = ok(&format!(
        r#"let cond = col("metadata.category").is_in(["fsm", "mux"]) & (col("metadata.score") >= 0.7) & (col("i") > 100);
        let eager = load_jsonl("{p}").filter(cond);
        let lazy = scan_jsonl("{p}").filter(cond);
        print(eager.len()); print(lazy.len());
        print(lazy.sink_jsonl("{o}"));
        print(lazy.collect().select(["i"]).to_records() == eager.select(["i"]).to_records());
        print(lazy.select(["metadata.category"]).collect().value_counts("category").sort("category", #{{}}).to_records());
        print(lazy);
        // Fields the filter read come from its own parse; others from a parse of the kept lines.
        print(lazy.select(["metadata.score", "i"]).collect().to_records() == eager.select(["metadata.score", "i"]).to_records());
        print(lazy.select(["metadata.category", "pad"]).collect().to_records() == eager.select(["metadata.category", "pad"]).to_records());"#,
        p = path.display(),
        o = out_path.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], lines[1], "lazy and eager keep the same rows");
    assert_eq!(lines[1], lines[2]);
    assert_eq!(lines[3], "true");
    assert!(
        lines[4].contains("\"fsm\"") && lines[4].contains("\"mux\"") && !lines[4].contains("alu"),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].starts_with("LazyFrame(scan ") && lines[5].contains("1 filter(s)"),
        "{}",
        lines[5]
    );
    assert_eq!(
        &lines[6..8],
        ["true", "true"],
        "selects agree with the eager ones"
    );
    let kept = std::fs::read_to_string(&out_path).unwrap();
    let expected: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1 && i % 10 >= 7 && *i > 100)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert_eq!(kept, expected, "the kept lines, byte for byte");
}

#[test]
fn a_lazy_scan_names_the_bad_line_and_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3, \"b\n").unwrap();
    let e = err(&format!(
        r#"scan_jsonl("{}").filter(col("a") > 0).collect()"#,
        path.display()
    ));
    assert!(
        e.contains(&format!("{}:3:", path.display())) && e.contains("invalid JSON"),
        "{e}"
    );
    let e = err(&format!(r#"scan_jsonl("{}").collect()"#, path.display()));
    assert!(e.contains(&format!("{}:3:", path.display())), "{e}");
    let e = err(r#"scan_jsonl("/nonexistent/rows.jsonl").len()"#);
    assert!(
        e.contains("/nonexistent/rows.jsonl") && e.contains("no such file"),
        "{e}"
    );
    let e = err(&format!(
        r#"scan_jsonl("{}").filter(col("a") > 0).select([1])"#,
        path.display()
    ));
    assert!(e.contains("select[0]"), "{e}");
}

#[test]
fn a_lazy_scan_of_arrays_and_of_keys_missing_from_a_whole_piece_agrees_with_the_eager_filter() {
    // Rows 0..20000 have no `score` (more than one piece of the scan); `metadata.tags` is an array, which
    // the scan's typed columns leave to polars' reader. Both must give what the eager filter gives.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let pad = "z".repeat(400);
    let mut text = String::new();
    for i in 0..30_000 {
        let score = if i < 20_000 {
            String::new()
        } else {
            format!(", \"score\": {}", (i % 7) as f64 / 7.0)
        };
        text.push_str(&format!(
            "{{\"pad\": \"{pad}\", \"metadata\": {{\"tags\": [\"t{}\"], \"n\": {i}}}{score}}}\n",
            i % 3
        ));
    }
    std::fs::write(&path, &text).unwrap();
    let out = ok(&format!(
        r#"let p = "{}";
        print(scan_jsonl(p).filter(col("score") > 0.5).len());
        print(load_jsonl(p).filter(col("score") > 0.5).len());
        let lazy = scan_jsonl(p).filter(col("metadata.n") % 1000 == 0);
        let eager = load_jsonl(p).filter(col("metadata.n") % 1000 == 0);
        print(lazy.len()); print(eager.len());
        print(lazy.select(["metadata.n", "score"]).collect().to_records() == eager.select(["metadata.n", "score"]).to_records());
        print(scan_jsonl(p).filter(lit(true)).len());"#,
        path.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    let high = (20_000..30_000)
        .filter(|i| (i % 7) as f64 / 7.0 > 0.5)
        .count();
    assert_eq!(lines[0], high.to_string(), "{out}");
    assert_eq!(lines[1], high.to_string(), "{out}");
    assert_eq!(lines[2], "30", "{out}");
    assert_eq!(lines[3], "30", "{out}");
    assert_eq!(lines[4], "true", "{out}");
    assert_eq!(lines[5], "30000", "{out}");
}

#[test]
fn a_lazy_scan_remembers_its_kept_lines_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    let rows = |n: usize| -> String {
        (0..n)
            .map(|i| format!("{{\"i\": {i}, \"ok\": true}}\n"))
            .collect()
    };
    std::fs::write(&path, rows(3)).unwrap();
    let out_path = dir.path().join("kept.jsonl");
    // The file is rewritten (longer) between the sink and the collect: the collect must see it.
    let out = ok(&format!(
        r#"let kept = scan_jsonl("{p}").filter(col("ok"));
        print(kept.sink_jsonl("{o}"));
        print(kept.select(["i"]).collect().len());
        write_text("{p}", `{{"i": 7, "ok": true}}` + "\n" + `{{"i": 8, "ok": false}}` + "\n" + `{{"i": 9, "ok": true}}` + "\n" + `{{"i": 10, "ok": true}}` + "\n");
        print(kept.len());
        print(kept.select(["i"]).collect().to_records());"#,
        p = path.display(),
        o = out_path.display()
    ));
    assert_eq!(
        out, "3\n3\n3\n[#{\"i\": 7}, #{\"i\": 9}, #{\"i\": 10}]\n",
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), rows(3));
}

#[test]
fn a_lazy_scan_through_polars_reader_also_fills_keys_missing_from_a_whole_piece() {
    // `meta` holds an array, so every piece goes through polars' reader; `meta` is absent from the
    // first 20000 rows (more than one piece).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.jsonl");
    let pad = "q".repeat(400);
    let mut text = String::new();
    for i in 0..25_000 {
        let meta = if i < 20_000 {
            String::new()
        } else {
            format!(", \"meta\": {{\"tags\": [1, 2], \"n\": {i}}}")
        };
        text.push_str(&format!("{{\"pad\": \"{pad}\"{meta}}}\n"));
    }
    std::fs::write(&path, &text).unwrap();
    let out = ok(&format!(
        r#"let p = "{}";
        print(scan_jsonl(p).filter(col("meta.n") >= 24990).len());
        print(load_jsonl(p).filter(col("meta.n") >= 24990).len());"#,
        path.display()
    ));
    assert_eq!(out, "10\n10\n");
}

#[test]
fn a_lazy_filter_that_needs_the_whole_file_agrees_with_the_eager_one() {
    // Over 4 MiB, so several pieces: `v` is an integer in the first piece and a string in the last,
    // so `str_len` fails on the first piece alone and needs the whole file's supertype (string); the
    // mean is the whole file's, never a piece's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let pad = "z".repeat(200);
    let mut text = String::new();
    for i in 0..30_000 {
        let v = if i < 25_000 {
            // As strings these are 4 or 5 characters long: all pass `str_len() > 3`.
            format!("{}", 1000 + i)
        } else {
            format!("\"{}\"", "s".repeat(i % 7))
        };
        text.push_str(&format!(
            "{{\"pad\": \"{pad}\", \"v\": {v}, \"score\": {}}}\n",
            (i * 37 % 1000) as f64 / 1000.0
        ));
    }
    std::fs::write(&path, &text).unwrap();
    assert!(text.len() > 4 << 20);
    let out = ok(&format!(
        r#"let p = "{}";
        let by_len = col("v").str_len() > 3;
        print(load_jsonl(p).filter(by_len).len());
        print(scan_jsonl(p).filter(by_len).len());
        let above_mean = col("score") > col("score").mean();
        print(load_jsonl(p).filter(above_mean).len());
        print(scan_jsonl(p).filter(above_mean).len());"#,
        path.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], lines[1], "str_len over the supertype: {out}");
    assert!(lines[1].parse::<usize>().unwrap() > 25_000, "{out}");
    assert_eq!(lines[2], lines[3], "the whole file's mean: {out}");
    assert_ne!(lines[3], "0");
}
