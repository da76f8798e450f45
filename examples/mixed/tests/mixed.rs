//! The mixed example end to end: the Flask app (Python Celery 5.7, from the
//! venv `cargo xtask venv` makes) sends tasks by name, the `mixed-worker`
//! binary runs them on Redis, and the app's status view reads the results.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `QTASK_PYTHON`, else the workspace's `.venv`; fails (never skips) when missing.
fn python() -> PathBuf {
    let p = std::env::var_os("QTASK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(p.exists(), "the Python venv is missing ({}): run `cargo xtask venv`", p.display());
    p
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flask_app_sends_python_celery_tasks_that_the_rust_worker_runs() {
    let redis = std::env::var("QTASK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let queue = format!("mixed_{}", uuid::Uuid::new_v4().simple());
    let _worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_mixed-worker"))
            .env("QTASK_BROKER_URL", &redis)
            .env("QTASK_RESULT_BACKEND", &redis)
            .env("MIXED_QUEUE", &queue)
            .env("MIXED_SLOW_MS", "50")
            .stdout(Stdio::null())
            .spawn()
            .expect("start mixed-worker"),
    );
    let out = Command::new(python())
        .arg("drive.py")
        .arg("60")
        .current_dir(workspace_root().join("examples/mixed/python"))
        .env("CELERY_BROKER_URL", &redis)
        .env("CELERY_RESULT_BACKEND", &redis)
        .env("MIXED_QUEUE", &queue)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "drive.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let status = |i: usize| lines[i]["final"].clone();
    let id = |i: usize| status(i)["task_id"].clone();
    assert_eq!(status(0), json!({"task_id": id(0), "status": "SUCCESS", "result": 12}));
    assert_eq!(
        status(1),
        json!({"task_id": id(1), "status": "SUCCESS",
               "result": [["the", 3], ["and", 2], ["bat", 1], ["cat", 1], ["hat", 1]]})
    );
    // The Rust task's error reaches Python as the exception it names.
    assert_eq!(
        status(2),
        json!({"task_id": id(2), "status": "FAILURE",
               "error": "ValueError('9223372036854775807 + 1 overflows')"})
    );
}
