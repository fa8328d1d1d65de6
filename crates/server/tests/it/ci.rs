//! CI guards main: a badly formatted file makes `.ci/run` fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}

/// Copies the repository's files (tracked and new, as git sees them) into `to`.
fn copy_repo(to: &Path) {
    let root = repo_root();
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success());
    for rel in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the work tree
        }
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&from, &dest).unwrap();
    }
}

/// Runs the copy's `.ci/run` in its quick mode (formatting and dependency-rule checks only:
/// the full run would compile and test the copy, and run this test again inside itself).
fn ci_quick(dir: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(dir.join(".ci/run"))
        .current_dir(dir)
        .env("FLASHMART_CI_QUICK", "1")
        .output()
        .unwrap()
}

#[test]
fn ci_fails_on_a_badly_formatted_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_repo(dir.path());

    let clean = ci_quick(dir.path());
    assert!(
        clean.status.success(),
        "a clean copy passes:\n{}{}",
        String::from_utf8_lossy(&clean.stdout),
        String::from_utf8_lossy(&clean.stderr)
    );

    let lib = dir.path().join("crates/domain/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib).unwrap();
    text.push_str("\npub fn   badly_formatted( )->u8{1}\n");
    std::fs::write(&lib, text).unwrap();
    let dirty = ci_quick(dir.path());
    assert!(!dirty.status.success(), "a badly formatted file fails CI");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&dirty.stdout),
        String::from_utf8_lossy(&dirty.stderr)
    );
    assert!(output.contains("badly_formatted"), "{output}");
}
