//! The workspace's binaries, for tests that run them as processes.

use std::path::PathBuf;

/// The folder holding the workspace's binaries: the profile folder (`target/debug`) above
/// the test executable's `deps/`. Panics, saying how to fix it, when one of `required`
/// is missing: `cargo build --workspace --bins` must run before such tests.
pub fn bin_dir(required: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps folder");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile folder").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    for b in required {
        assert!(
            dir.join(b).exists(),
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            dir.join(b).display()
        );
    }
    dir
}
