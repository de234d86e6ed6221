//! Every ```rhai example in a stdlib function's doc comment (what `:help NAME` shows) runs. Examples
//! resolve relative paths against book/src, like the book's.

use crate::common;

#[test]
fn every_doc_comment_example_runs() {
    let src = common::repo_root().join("book/src");
    // The verifier's store goes to the tests' temporary workspace, not into the repository.
    common::in_process_env();
    let rt = rtlab::Runtime::new(&src);
    let index = rt.help_index();
    // Rhai's own packages carry docs too; test only what rtlab registers.
    let plain = rtlab::HelpIndex::from_engine(&rhai::Engine::new());
    let is_rhai_builtin = |name: &str, signature: &str| {
        plain
            .get(name)
            .is_some_and(|docs| docs.iter().any(|d| d.signature == signature))
    };
    let mut examples = 0;
    let mut failures = Vec::new();
    for doc in index
        .documented()
        .filter(|d| !is_rhai_builtin(&d.name, &d.signature))
    {
        let mut in_block = false;
        let mut code = String::new();
        for line in doc.doc.lines() {
            if line.trim() == "```rhai" {
                in_block = true;
                code.clear();
            } else if in_block && line.trim() == "```" {
                in_block = false;
                examples += 1;
                if let Err(e) = rtlab::eval_script(&format!("doc of {}", doc.name), &code, &src) {
                    failures.push(format!("{}: {e}", doc.signature));
                }
            } else if in_block {
                code.push_str(line);
                code.push('\n');
            }
        }
    }
    assert!(
        examples >= 30,
        "stdlib functions should carry runnable examples, found {examples}"
    );
    assert!(
        failures.is_empty(),
        "{} of {examples} doc examples failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
