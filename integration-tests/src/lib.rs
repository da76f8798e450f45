//! Support for the cross-crate tests: paths to the workspace, the Python
//! venv with real Celery, and the release/debug binaries.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

/// The Python with celery==5.7.0 installed: `QTASK_PYTHON`, else the
/// workspace's `.venv`. Panics with the command to run when it is missing,
/// so interop tests fail loudly instead of skipping.
pub fn python() -> PathBuf {
    let p = std::env::var_os("QTASK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "the Python venv for interop tests is missing ({}): run `cargo xtask venv`, or run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// A unique name for queues, key prefixes and schemas of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
