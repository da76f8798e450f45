//! `qtask purge`: every queue the app knows, asking first unless `-f`; a
//! named queue at once. On the embedded SQLite broker (no server needed).

use std::process::{Command, Output};

fn qtask(db: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qtask"));
    for (k, _) in std::env::vars() {
        if k.starts_with("QTASK_") || k.starts_with("CELERY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("QTASK_BROKER_URL", format!("sqlite://{}", db.display()));
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{cmd:?} -> {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn purge_asks_before_emptying_every_known_queue() {
    let dir = std::env::temp_dir().join(format!("qtask-cli-purge-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("q.db");
    let file = dir.join("qtask.toml");
    std::fs::write(&file, "[task_routes]\n\"report.*\" = \"reports\"\n").unwrap();
    let send = |queue: Option<&str>| {
        let mut cmd = qtask(&db);
        cmd.args(["call", "tasks.noop"]);
        if let Some(q) = queue {
            cmd.args(["--queue", q]);
        }
        assert!(run(&mut cmd).status.success());
    };
    send(None);
    send(None);
    send(Some("reports"));
    send(Some("elsewhere"));

    // The routes name a second known queue; stdin is no terminal, so without -f nothing is deleted.
    let out = run(qtask(&db).env("QTASK_CONFIG", &file).arg("purge"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delete 3 message(s) from 2 queue(s): celery, reports") && err.contains("add -f"), "{err}");

    // -X leaves a queue out; -f does not ask.
    let out = run(qtask(&db).env("QTASK_CONFIG", &file).args(["purge", "-f", "-X", "reports"]));
    assert!(out.status.success());
    assert_eq!(stdout(&out), "purged 2 message(s) from celery\n");
    let out = run(qtask(&db).env("QTASK_CONFIG", &file).args(["purge", "-f"]));
    assert_eq!(stdout(&out), "purged 0 message(s) from celery\npurged 1 message(s) from reports\n");

    // A named queue is purged at once, as before.
    let out = run(qtask(&db).args(["purge", "--queue", "elsewhere"]));
    assert!(out.status.success());
    assert_eq!(stdout(&out), "purged 1 message(s) from elsewhere\n");
    let _ = std::fs::remove_dir_all(dir);
}
