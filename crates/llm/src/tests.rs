//! rtlab-llm's unit tests: code extraction, request keys, local models keyed on content.

use super::*;
use rhai::Map;

#[test]
fn code_blocks_are_extracted_in_the_plans_order() {
    assert_eq!(
        extract_code("```systemverilog\nmodule a; endmodule\n```"),
        "module a; endmodule"
    );
    assert_eq!(
        extract_code("text\n```\nmodule b; endmodule\n```"),
        "module b; endmodule"
    );
    assert_eq!(
        extract_code("```sv\nmodule c; endmodule"),
        "module c; endmodule"
    );
    assert_eq!(extract_code("module d; endmodule"), "module d; endmodule");
}

/// A local model is keyed on what its files hold: answers recorded for it are recomputed after
/// its content changes even when the file keeps its size and modification time, and served for a
/// copy at another path.
#[test]
fn a_local_models_answers_are_keyed_on_its_content_not_its_path_or_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("model.gguf");
    std::fs::write(&gguf, b"weights, version A").unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), b"lora A").unwrap();
    std::fs::write(adapter.join("adapter_config.json"), b"{}").unwrap();
    let model = |path: &std::path::Path| {
        let mut o = Map::new();
        o.insert("provider".into(), "local".into());
        o.insert("model".into(), path.display().to_string().into());
        o.insert("adapter".into(), adapter.display().to_string().into());
        crate::api::model_from_options(&o, dir.path()).unwrap()
    };
    let messages = vec![Message {
        role: "user".into(),
        content: "write a mux".into(),
    }];
    let key = |path: &std::path::Path| model(path).request_key(&messages, 0);
    let first = key(&gguf);

    // Rewritten with the same size, its modification time put back: another model.
    let restore_mtime = |p: &std::path::Path, write: &[u8]| {
        let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(p, write).unwrap();
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    restore_mtime(&gguf, b"weights, version B");
    let rewritten = key(&gguf);
    assert_ne!(first, rewritten, "a rewritten model was served old answers");

    // The same bytes at another path: the same model.
    let copy = dir.path().join("copy.gguf");
    std::fs::copy(&gguf, &copy).unwrap();
    assert_eq!(key(&copy), rewritten, "a copied model missed its answers");

    // The adapter too; its run's other files (logs, records) do not count.
    restore_mtime(&adapter.join("adapter_model.safetensors"), b"lora B");
    let retrained = key(&gguf);
    assert_ne!(retrained, rewritten);
    std::fs::write(adapter.join("run.json"), b"{\"seconds\": 3}").unwrap();
    assert_eq!(key(&gguf), retrained);
}

#[test]
fn request_keys_ignore_the_provider_but_not_the_sample() {
    let mut o = Map::new();
    o.insert("model".into(), "m".into());
    o.insert("provider".into(), "replay".into());
    let here = std::path::Path::new("/");
    let replay = crate::api::model_from_options(&o, here).unwrap();
    o.insert("provider".into(), "openai".into());
    let live = crate::api::model_from_options(&o, here).unwrap();
    let msgs = user("hi");
    assert_eq!(replay.request_key(&msgs, 0), live.request_key(&msgs, 0));
    assert_ne!(live.request_key(&msgs, 0), live.request_key(&msgs, 1));
}

/// The CLI builds a `ModelConfig` where a script writes `llm(#{...})`: the two must agree on every
/// default, or `rtlab bench` and `benchmark(llm(...))` would ask differently.
#[test]
fn a_typed_config_has_the_defaults_of_the_option_map() {
    let mut options = rhai::Map::new();
    options.insert("provider".into(), "ollama".into());
    options.insert("model".into(), "qwen".into());
    let from_map = api::model_from_options(&options, std::path::Path::new(".")).unwrap();
    let typed = Model::from_config(
        ModelConfig::new(Provider::Ollama, "qwen"),
        std::path::Path::new("."),
    )
    .unwrap();
    assert_eq!(format!("{:?}", from_map.cfg), format!("{:?}", typed.cfg));
}

#[test]
fn a_bad_option_is_an_option_error_with_the_message_users_saw() {
    let mut options = rhai::Map::new();
    options.insert("model".into(), "m".into());
    options.insert("timeout_s".into(), rhai::Dynamic::from(0.0_f64));
    let e = api::model_from_options(&options, std::path::Path::new("."))
        .err()
        .unwrap();
    assert!(matches!(
        e,
        LlmError::Option(rtlab_core::OptionError::Rule { .. })
    ));
    assert_eq!(
        e.to_string(),
        "llm: option `timeout_s` must be a number of seconds above 0, not 0"
    );
}

#[test]
fn prompts_share_batches_up_to_the_row_limit_and_one_prompts_samples_never_split() {
    let group = |name: &'static str, samples: usize| (name, (0..samples).collect::<Vec<usize>>());
    let groups = vec![
        group("a", 4),
        group("b", 4),
        group("c", 30),
        group("d", 1),
        group("e", 3),
    ];
    let names = |rows| -> Vec<Vec<&str>> {
        super::batches_of_groups(&groups, rows)
            .iter()
            .map(|b| b.iter().map(|(n, _)| *n).collect())
            .collect()
    };
    assert_eq!(names(24), [vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
    assert_eq!(names(8), [vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
    assert_eq!(
        names(1),
        [vec!["a"], vec!["b"], vec!["c"], vec!["d"], vec!["e"]]
    );
    assert!(super::batches_of_groups::<&str>(&[], 24).is_empty());
}
