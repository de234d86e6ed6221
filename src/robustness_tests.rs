//! Property tests that try to break rtlab's parsers with arbitrary input: JSONL readers, the cell
//! splitter and dependency analysis, the Verilog screen and rewrites, the testbench-output parser and
//! the model-response parsers. The property is always the same: no panic, and a bad line is named by
//! file and line.

use proptest::prelude::*;
use serde_json::Value;

/// Lines that look like JSONL, with the ways real files go wrong mixed in.
fn jsonl_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"a": 1, "b": "x"}"#.to_string()),
        Just(r#"{"a": 2.5, "b": null, "c": {"d": [1, 2]}}"#.to_string()),
        Just(r#"{"a": "text", "b": true}"#.to_string()),
        Just(String::new()),
        Just("{".to_string()),
        Just("[1, 2]".to_string()),
        Just("\"just a string\"".to_string()),
        Just(r#"{"a": 1e999}"#.to_string()),
        Just("{\"a\": \"\u{feff}\"}".to_string()),
        "\\PC{0,40}",
        r#"\{"[a-c]": [0-9]{1,3}\}"#,
    ]
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// A JSON value with the keys model servers answer with, nested at random.
fn response_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("choices"),
        Just("message"),
        Just("content"),
        Just("text"),
        Just("type"),
        Just("usage"),
        Just("prompt_tokens"),
        Just("completion_tokens"),
        Just("input_tokens"),
        Just("output_tokens"),
        Just("response"),
        Just("prompt_eval_count"),
        Just("eval_count"),
        Just("error"),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Verilog-ish text: real tokens, the screen's task names, macros, and noise.
fn verilog_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("module m(input a, output y);"),
        Just("endmodule"),
        Just("always_comb"),
        Just("out_always_comb"),
        Just("assign y = a & b;"),
        Just("$system(\"x\")"),
        Just("$sys"),
        Just("tem"),
        Just("$readmemh(\"f.hex\", m);"),
        Just("$fopen(name)"),
        Just("`include \"a.v\""),
        Just("`define X(y) $sys``y"),
        Just("\""),
        Just("/*"),
        Just("*/"),
        Just("//"),
        Just("\n"),
        Just("\\esc "),
        Just("if (a == 1'b1) q <= ~q;"),
        Just("é"),
    ];
    prop::collection::vec(
        prop_oneof![token.prop_map(str::to_string), "\\PC{0,8}"],
        0..30,
    )
    .prop_map(|parts| parts.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn jsonl_readers_never_panic_and_name_the_bad_line(lines in prop::collection::vec(jsonl_line(), 0..12)) {
        let text = lines.join("\n");
        let f = temp_file(text.as_bytes());
        let shown = f.path().display().to_string();
        let strict = rtlab_data::io::load_jsonl(f.path(), &rtlab_data::io::LoadOptions { skip_bad_lines: false });
        if let Err(e) = &strict {
            let msg = e.to_string();
            // A parse failure names the file and the line (a type clash across lines names the file).
            prop_assert!(msg.contains(&shown), "{msg}");
            if let rtlab_data::DataError::BadLine { line, .. } = e {
                prop_assert!(*line >= 1 && *line <= lines.len().max(1), "{msg}");
                prop_assert!(msg.contains(&format!("{shown}:{line}:")), "{msg}");
            }
        }
        // Skipping bad lines never fails on bad lines (a type clash across good lines still can).
        let _ = rtlab_data::io::load_jsonl(f.path(), &rtlab_data::io::LoadOptions { skip_bad_lines: true });
        let _ = rtlab_data::io::frame_from_jsonl_bytes(text.as_bytes(), "mem");
    }

    #[test]
    fn jsonl_readers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let f = temp_file(&bytes);
        let _ = rtlab_data::io::load_jsonl(f.path(), &rtlab_data::io::LoadOptions { skip_bad_lines: false });
        let _ = rtlab_data::io::load_jsonl(f.path(), &rtlab_data::io::LoadOptions { skip_bad_lines: true });
    }

    #[test]
    fn the_cell_splitter_and_dependency_analysis_never_panic(
        parts in prop::collection::vec(prop_oneof![
            Just("// %% cell".to_string()), Just("// %%".to_string()), Just("let x = 1;".to_string()),
            Just("fn f(a) { a + x }".to_string()), Just("x += f(2);".to_string()), Just("\"// %% in a string\"".to_string()),
            Just("/* // %% */".to_string()), Just("`multi\nline`".to_string()), "\\PC{0,20}",
        ], 0..20)
    ) {
        let source = parts.join("\n");
        let cells = crate::notebook::cells::split_cells(&source);
        let engine = rhai::Engine::new();
        for cell in &cells {
            let code = cell.code_at_file_lines();
            let _ = crate::notebook::cells::normalize(&code);
            if let Ok(ast) = engine.compile(&code) {
                let _ = crate::notebook::deps::analyze(&ast);
            }
        }
    }

    #[test]
    fn the_verilog_screen_and_rewrites_never_panic(text in verilog_text()) {
        let _ = rtlab_verify::sandbox::screen(&text, "design");
        let rewritten = rtlab_verify::stages::yosys_friendly(&text);
        // Only the keyword changes: every other byte is kept.
        prop_assert_eq!(rewritten.replace("always @*", ""), {
            let mut kept = String::new();
            let mut last = 0;
            let mut spans = Vec::new();
            rtlab_verify::stages::scan_identifiers(&text, |s, e| if &text[s..e] == "always_comb" || &text[s..e] == "always_latch" { spans.push((s, e)) });
            for (s, e) in spans { kept.push_str(&text[last..s]); last = e; }
            kept.push_str(&text[last..]);
            kept.replace("always @*", "")
        });
        let _ = rtlab_verify::stages::declared_modules(&text);
        let _ = rtlab_verify::stages::rename_module(&text, "m", "TopModule");
        let _ = rtlab_verify::mutate::mutants(&text);
    }

    #[test]
    fn the_testbench_output_parser_never_panics(lines in prop::collection::vec(prop_oneof![
        Just("Mismatches: 0 in 10 samples".to_string()), Just("Mismatches: x in".to_string()),
        Just("Mismatches: 99999999999999999999 in 1 samples".to_string()), Just("TEST PASSED".to_string()),
        Just("TEST FAILED".to_string()), Just("=== Error ===".to_string()), "\\PC{0,30}",
    ], 0..10)) {
        let _ = rtlab_verify::stages::parse_verdict(&lines.join("\n"));
    }

    #[test]
    fn the_model_response_parsers_never_panic(body in response_json(), text in "\\PC{0,200}") {
        use rtlab_llm::providers::{parse_response, Provider};
        for p in [Provider::OpenAi, Provider::Anthropic, Provider::Ollama] {
            let _ = parse_response(p, &body);
        }
        let _ = rtlab_llm::extract_code(&text);
        let _ = rtlab_llm::extract_code(&format!("```verilog\n{text}"));
    }
}
