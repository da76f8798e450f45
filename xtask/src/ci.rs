//! `cargo xtask ci`: what CI runs, in order, stopping at the first failure.
//! Each step also runs alone as `cargo xtask <step>`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run, services, tidy, venv};

/// A step of CI.
type Step = fn(&Path) -> Result<()>;

/// The steps of `cargo xtask ci`, in the order they run.
pub(crate) const STEPS: &[(&str, Step)] = &[
    ("fmt", fmt),
    ("tidy", tidy::tidy),
    ("clippy", clippy),
    ("doc", doc),
    ("features", features),
    ("test", |root| test(root, &[])),
];

/// The adapter and component features of the facade, each checked alone.
const FEATURES: &[&str] = &["memory", "sqlite", "postgres", "redis", "amqp", "worker", "beat", "monitor", "macros"];

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root);
    cmd
}

/// `cargo xtask ci`: every step of [`STEPS`].
pub(crate) fn all(root: &Path) -> Result<()> {
    for (i, (name, step)) in STEPS.iter().enumerate() {
        eprintln!("xtask ci: [{}/{}] {name}", i + 1, STEPS.len());
        step(root).with_context(|| format!("CI step `{name}` failed (`cargo xtask {name}` runs it alone)"))?;
    }
    eprintln!("xtask ci: all {} steps passed", STEPS.len());
    Ok(())
}

/// `cargo fmt --all -- --check`.
fn fmt(root: &Path) -> Result<()> {
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))
}

/// `cargo clippy --workspace --all-targets -- -D warnings`.
fn clippy(root: &Path) -> Result<()> {
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
}

/// Rustdoc with warnings as errors.
fn doc(root: &Path) -> Result<()> {
    run(cargo(root).env("RUSTDOCFLAGS", "-Dwarnings").args(["doc", "--workspace", "--no-deps", "--quiet"]))
}

/// The facade builds with no features and with each feature alone.
///
/// Only the library and the `qtask` binary: the facade's tests use `#[task]`,
/// the worker and SQLite, so they need the default features (the clippy and
/// test steps build them with those).
fn features(root: &Path) -> Result<()> {
    let check = |features: &[&str]| {
        run(cargo(root).args(["check", "-p", "qtask", "--no-default-features", "--lib", "--bins"]).args(features))
    };
    check(&[])?;
    for feature in FEATURES {
        check(&["--features", feature])?;
    }
    Ok(())
}

/// `cargo xtask test`: start the services, install the browser of the page
/// tests, create the Python venv, then `cargo test --workspace` with `args`.
pub(crate) fn test(root: &Path, args: &[String]) -> Result<()> {
    services::ensure_all()?;
    services::ensure_browser()?;
    let python = venv::ensure(root)?;
    run(cargo(root).env("QTASK_PYTHON", &python).args(["test", "--workspace"]).args(args))
}

/// `cargo xtask <step>`: one step of [`STEPS`] alone.
pub(crate) fn step(root: &Path, name: &str) -> Result<()> {
    match STEPS.iter().find(|(n, _)| *n == name) {
        Some((_, step)) => step(root),
        None => bail!("no CI step `{name}`"),
    }
}
