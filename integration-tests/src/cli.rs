//! Running the `qtask` CLI ([`crate::qtask_cli`]) in the CLI tests
//! (`tests/redis_cli.rs`, `tests/amqp_cli.rs`).

use std::process::{Command, Output};

use anyhow::Result;

use crate::qtask_cli;

/// The CLI with no inherited QTASK_*/CELERY_* settings.
pub fn cli() -> Result<Command> {
    let mut cmd = Command::new(qtask_cli()?);
    for (k, _) in std::env::vars() {
        if k.starts_with("QTASK_") || k.starts_with("CELERY_") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd)
}

/// Run `cmd` to the end; its command line, status, stdout and stderr are
/// printed to stderr (shown when the test fails).
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output()?;
    eprintln!(
        "{cmd:?} -> {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The lines of `out`'s stdout.
pub fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}
