//! A throwaway PKI for TLS tests, made with the `openssl` command: a CA, a
//! server certificate for `localhost` and a client certificate for `guest`
//! (EC P-256 keys, unencrypted PKCS#8 PEM), in a temporary directory.
//!
//! `std` and `anyhow` only, and the node settings of `rabbit_node.rs`
//! (include both by path), so qamqp's tests and integration-tests share it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use super::rabbit_node::TlsListener;

fn unique_suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos:x}", N.fetch_add(1, Ordering::Relaxed))
}

/// A CA with a server certificate for `localhost` and a client certificate
/// for `guest`, in a temporary directory (removed on drop).
pub(crate) struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pki {
    pub(crate) fn new() -> Result<Pki> {
        let dir = std::env::temp_dir().join(format!("qtask-pki-{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca =
            vec!["req", "-x509", "-days", "2", "-subj", "/CN=qtask test CA", "-keyout", "ca.key", "-out", "ca.pem"];
        ca.extend(ec);
        openssl(&dir, &ca)?;
        for (name, subject, ext) in [
            (
                "server",
                "/CN=localhost",
                "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            ("client", "/CN=guest", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
        ] {
            let (key, csr, pem, extfile) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            std::fs::write(dir.join(&extfile), ext)?;
            let mut req = vec!["req", "-subj", subject, "-keyout", &key, "-out", &csr];
            req.extend(ec);
            openssl(&dir, &req)?;
            let sign = format!(
                "x509 -req -in {csr} -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile {extfile} -out {pem}"
            );
            openssl(&dir, &sign.split_whitespace().collect::<Vec<_>>())?;
        }
        Ok(Pki { dir })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn listener(&self, require_client_cert: bool) -> TlsListener {
        TlsListener {
            cacertfile: self.path("ca.pem"),
            certfile: self.path("server.pem"),
            keyfile: self.path("server.key"),
            require_client_cert,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
