//! The `qtask` binary reads its settings through one path (`QTASK_CONFIG`,
//! then `QTASK_*`) and refuses what it does not know, by name.

use std::process::Command;

fn qtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qtask"));
    for (k, _) in std::env::vars() {
        if k.starts_with("QTASK_") || k.starts_with("CELERY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qtask-cli-settings-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_unknown_environment_setting_is_refused_with_the_closest_name() {
    let out = qtask().env("QTASK_TASK_ACK_LATE", "1").args(["--broker", "memory://", "purge"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("QTASK_TASK_ACK_LATE") && err.contains("did you mean `QTASK_TASK_ACKS_LATE`?"), "{err}");
}

#[test]
fn qtask_config_names_the_settings_file() {
    let dir = temp_dir();
    let file = dir.join("qtask.toml");
    let db = dir.join("q.db");
    std::fs::write(&file, format!("broker_url = \"sqlite://{}\"\ntask_default_queue = \"from-file\"\n", db.display()))
        .unwrap();
    let out = qtask().env("QTASK_CONFIG", &file).arg("purge").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.trim(), "purged 0 message(s) from from-file", "the file's default queue is used");
    assert!(db.exists(), "the file's broker_url is used");

    std::fs::write(&file, "task_default_queu = \"x\"\n").unwrap();
    let out = qtask().env("QTASK_CONFIG", &file).arg("purge").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("did you mean `task_default_queue`?"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_celery_setting_qtask_does_not_support_is_reported_not_fatal() {
    let dir = temp_dir();
    let db = dir.join("q.db");
    let out = qtask()
        .env("CELERY_WORKER_MAX_TASKS_PER_CHILD", "100")
        .env("QTASK_BROKER_URL", format!("sqlite://{}", db.display()))
        .arg("purge")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("worker_max_tasks_per_child") && err.contains("does not support"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
