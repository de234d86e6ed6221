//! Every script in scripts/ runs offline on bundled data, and its output is an insta snapshot
//! (timings and paths scrubbed).

use crate::common;
use common::*;

#[test]
fn every_script_matches_its_snapshot() {
    let scripts = repo_root().join("scripts");
    let mut paths: Vec<_> = std::fs::read_dir(&scripts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    let mut ran = 0;
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
    {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let out_dir = tempfile::tempdir().unwrap();
        let r = Run::from(
            rtlab()
                .current_dir(repo_root())
                .env("RTLAB_HOME", out_dir.path().join(".rtlab"))
                .env("RTLAB_OUT", out_dir.path())
                // Relative to the repo root, as the README runs them.
                .args(["run", "--no-cache", &format!("scripts/{name}.rhai")])
                .output()
                .unwrap(),
        );
        assert_eq!(r.code, 0, "{name} failed:\n{}\n{}", r.stdout, r.stderr);
        let text = scrub(
            &format!("{}\n--- stderr ---\n{}", r.stdout, r.stderr),
            &[out_dir.path(), &repo_root()],
        );
        insta::assert_snapshot!(name, text);
        ran += 1;
    }
    assert!(ran >= 1);
}
