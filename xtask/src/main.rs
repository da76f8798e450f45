//! `cargo xtask <command>`: project automation in Rust.
//!
//! * `cargo xtask test` — start the services the tests need if they are down
//!   (Redis, RabbitMQ, PostgreSQL), create the Python venv for interop tests,
//!   then run `cargo test --workspace`. This is the README's test command.
//! * `cargo xtask ci` — what CI (`.ci/run`) runs, in order, stopping at the
//!   first failure: `fmt` (`cargo fmt --all -- --check`), `tidy`, `clippy`
//!   (`--workspace --all-targets -D warnings`), `doc` (rustdoc, warnings
//!   denied), `features` (`cargo check -p qtask --no-default-features`, then
//!   with each of its features alone) and `test` (as `cargo xtask test`).
//!   `cargo xtask fmt|tidy|clippy|doc|features` runs one step alone.
//! * `cargo xtask tidy` — the dependency direction of ARCHITECTURE.md on the
//!   manifests of `crates/*`: no adapter depends on another adapter or on
//!   qworker/qtask, qworker knows no adapter, qmacros uses proc-macro crates
//!   only, qcore does no I/O (rules in `tidy.rs`, one line per crate).
//! * `cargo xtask services` — only make sure the services are up.
//! * `cargo xtask venv` — only create the Python venv (`.venv`, celery==5.7.0).
//! * `cargo xtask e2e` — the full stack: services, venv, release build of the
//!   binaries, and the end-to-end tests.
//! * `cargo xtask bench redis [--n N] [--calls M]` — qtask beside Python
//!   Celery on a private Redis (release binaries, the venv's Celery); prints
//!   a Markdown table (see docs/benchmarks.md); `cargo xtask bench amqp`
//!   the same on RabbitMQ; `cargo xtask bench postgres|sqlite [--poll SECS]`
//!   the SQL broker and backend beside Celery on kombu's SQLAlchemy transport.
//! * `cargo xtask fuzz [--seconds S] [--runs N] [TARGET ...]` — the fuzz
//!   targets of `fuzz/` (cargo-fuzz on nightly, installed when missing),
//!   each from its seeds, then a table of executions (docs/reliability.md).

mod bench;
mod bench_sql;
mod ci;
mod fuzz;
mod services;
mod tidy;
mod venv;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn workspace_root() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => ci::test(&root, &args[1..]),
        Some("ci") if args.len() == 1 => ci::all(&root),
        Some("services") => services::ensure_all(),
        Some("venv") => {
            let python = venv::ensure(&root)?;
            println!("{}", python.display());
            Ok(())
        }
        Some("e2e") => {
            services::ensure_all()?;
            let python = venv::ensure(&root)?;
            run(Command::new(env!("CARGO")).current_dir(&root).args([
                "build",
                "--release",
                "--bin",
                "interop-worker",
                "--bin",
                "qtask",
            ]))?;
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(&root)
                .env("QTASK_PYTHON", &python)
                .env("QTASK_E2E_RELEASE", "1")
                .args(["test", "--release", "-p", "integration-tests"])
                .args(&args[1..]);
            run(&mut cmd)
        }
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("redis") => {
                let python = venv::ensure(&root)?;
                bench::redis(&root, &python, &args[2..])
            }
            Some("amqp") => {
                let python = venv::ensure(&root)?;
                bench::amqp(&root, &python, &args[2..])
            }
            Some(engine @ ("postgres" | "sqlite")) => {
                let python = venv::ensure(&root)?;
                bench_sql::sql(&root, &python, engine, &args[2..])
            }
            _ => bail!("usage: cargo xtask bench redis|amqp|postgres|sqlite [--n N] [--calls M]"),
        },
        Some("fuzz") => fuzz::fuzz(&root, &args[1..]),
        Some(step @ ("fmt" | "tidy" | "clippy" | "doc" | "features")) if args.len() == 1 => ci::step(&root, step),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|ci|fmt|tidy|clippy|doc|features|services|venv|e2e|fuzz|bench redis|amqp|postgres|sqlite> [args...]"
            );
            std::process::exit(2);
        }
    }
}
