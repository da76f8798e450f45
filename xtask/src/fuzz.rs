//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer,
//! nightly), each run for a time or a number of executions, then a table.
//!
//! ```text
//! cargo xtask fuzz [--seconds S] [--runs N] [TARGET ...]
//! ```
//!
//! Each target starts from its committed seeds (`fuzz/seeds/<target>`,
//! written from the captured Celery messages by `fuzz/make_seeds.py`) and its
//! own growing corpus (`fuzz/corpus/<target>`, not committed). A crash stops
//! the run with libFuzzer's artifact path (`fuzz/artifacts/<target>/`);
//! every crash found becomes a regression test in the crate it is about.
//! cargo-fuzz and the nightly toolchain are installed when missing.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

/// Every target of `fuzz/Cargo.toml`, in the order they run.
pub(crate) const TARGETS: &[&str] =
    &["task_message", "task_body", "redis_envelope", "amqp_frames", "result_doc", "event", "pidbox", "config", "urls"];

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The nightly toolchain and cargo-fuzz, installed when missing.
fn ensure_tools() -> Result<()> {
    if !ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        eprintln!("xtask fuzz: installing the nightly toolchain (rustup, minimal profile)");
        crate::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if !ok(Command::new("cargo").args(["fuzz", "--version"])) {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        crate::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// One target's figures.
struct Outcome {
    target: &'static str,
    runs: u64,
    seconds: f64,
}

/// The executions of a run: libFuzzer's final `stat::number_of_executed_units`,
/// else its `Done 123456 runs in 10 second(s)` line.
fn executed_runs(stderr: &str) -> Option<u64> {
    let stat = stderr.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")?.trim().parse().ok());
    stat.or_else(|| stderr.lines().rev().find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse().ok()))
}

pub(crate) fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds: Option<u64> = None;
    let mut runs: Option<u64> = None;
    let mut targets: Vec<&'static str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = Some(it.next().ok_or_else(|| anyhow!("--seconds needs a value"))?.parse()?),
            "--runs" => runs = Some(it.next().ok_or_else(|| anyhow!("--runs needs a value"))?.parse()?),
            t => match TARGETS.iter().find(|k| **k == t) {
                Some(k) => targets.push(k),
                None => {
                    bail!("unknown fuzz target {t:?} (targets: {}; options --seconds S, --runs N)", TARGETS.join(", "))
                }
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    if seconds.is_none() && runs.is_none() {
        seconds = Some(60);
    }
    ensure_tools()?;
    let dir = root.join("fuzz");
    crate::run(Command::new("cargo").current_dir(&dir).args(["+nightly", "fuzz", "build", "-O"]))?;
    let mut outcomes = Vec::new();
    for target in targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir).args(["+nightly", "fuzz", "run", "-O", target]);
        cmd.arg(&corpus).arg(dir.join("seeds").join(target));
        cmd.args(["--", "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"]);
        if let Some(s) = seconds {
            cmd.arg(format!("-max_total_time={s}"));
        }
        if let Some(n) = runs {
            cmd.arg(format!("-runs={n}"));
        }
        eprintln!("xtask fuzz: {target}");
        let started = Instant::now();
        let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); the crashing input is under fuzz/artifacts/{target}/:\n{}",
                out.status,
                tail.join("\n")
            );
        }
        let runs = executed_runs(&stderr)
            .ok_or_else(|| anyhow!("fuzz target {target}: no `Done N runs` line in libFuzzer's output"))?;
        outcomes.push(Outcome { target, runs, seconds: started.elapsed().as_secs_f64() });
    }
    println!("| target | executions | seconds | executions/s | crashes |");
    println!("|---|---:|---:|---:|---:|");
    for o in &outcomes {
        println!("| `{}` | {} | {:.0} | {:.0} | 0 |", o.target, o.runs, o.seconds, o.runs as f64 / o.seconds.max(1e-9));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_count_is_read_from_libfuzzers_last_line() {
        let err = "#1024\tpulse  cov: 10\nDone 2097152 runs in 61 second(s)\nstat::number_of_executed_units: 2097153\n";
        assert_eq!(executed_runs(err), Some(2_097_153));
        assert_eq!(executed_runs("Done 77 runs in 1 second(s)\n"), Some(77));
        assert_eq!(executed_runs("INFO: nothing\n"), None);
    }

    #[test]
    fn every_target_has_a_file_and_seeds() {
        let root = crate::workspace_root();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t} is not a [[bin]] of fuzz/Cargo.toml");
            assert!(root.join(format!("fuzz/fuzz_targets/{t}.rs")).is_file(), "fuzz/fuzz_targets/{t}.rs is missing");
            let seeds = std::fs::read_dir(root.join(format!("fuzz/seeds/{t}"))).map(|d| d.count()).unwrap_or(0);
            assert!(seeds > 0, "fuzz/seeds/{t} has no seed input");
        }
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has targets that `cargo xtask fuzz` does not run");
    }
}
