//! The Python virtualenv with real Celery for interop tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Create `.venv` with the pinned requirements if it is missing or stale;
/// returns the venv's python.
pub(crate) fn ensure(root: &Path) -> Result<PathBuf> {
    let reqs = root.join("integration-tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&reqs).with_context(|| format!("cannot read {}", reqs.display()))?;
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("qtask-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let host_python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("no python3 on PATH: install Python 3.9+ for the interop tests")?;
    eprintln!("xtask: creating the Python venv in {}", venv.display());
    let ok = Command::new(host_python).arg("-m").arg("venv").arg(&venv).status()?.success();
    if !ok {
        bail!("python3 -m venv failed (on Debian: apt-get install python3-venv)");
    }
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&reqs)
        .status()?
        .success();
    if !ok {
        bail!("pip install -r {} failed", reqs.display());
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
