//! [`TlsOptions`]: the certificates an `amqps://` connection uses (Celery's
//! `broker_use_ssl`).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use qcore::{BrokerError, ErrorKind};

/// TLS settings of `amqps://` connections, as Celery's `broker_use_ssl`
/// (`{'ca_certs': ..., 'certfile': ..., 'keyfile': ..., 'cert_reqs':
/// ssl.CERT_REQUIRED}`).
///
/// The default trusts the system's root certificates and sends no client
/// certificate. [`ca_file`](Self::ca_file) adds the CA certificates of a PEM
/// file (a private CA that signed the broker's certificate);
/// [`client_cert_files`](Self::client_cert_files) adds a client certificate
/// and key for brokers that require one (`ssl_options.verify = verify_peer`,
/// `fail_if_no_peer_cert = true`). Files are read and checked when given, so
/// a missing or unreadable file, or one without a PEM certificate (or key),
/// is a [`Config`](ErrorKind::Config) error here and not at the first
/// connection. The server certificate and its host name are always
/// verified. Ignored on `amqp://` URLs.
///
/// ```no_run
/// use qamqp::{AmqpOptions, TlsOptions};
///
/// # fn demo() -> Result<(), qcore::BrokerError> {
/// let tls = TlsOptions::default()
///     .ca_file("/etc/qtask/ca.pem")?
///     .client_cert_files("/etc/qtask/client.pem", Some("/etc/qtask/client.key"))?;
/// let opts = AmqpOptions::default().tls(tls);
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM text of the extra trusted CA certificates, and the file it came from.
    ca: Option<(PathBuf, String)>,
    /// PEM client certificate chain and PEM private key, and their files.
    client: Option<ClientIdentity>,
}

#[derive(Clone, PartialEq, Eq)]
struct ClientIdentity {
    cert_file: PathBuf,
    key_file: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for TlsOptions {
    // Paths only: never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_file", &self.ca.as_ref().map(|(p, _)| p))
            .field("client_cert_file", &self.client.as_ref().map(|c| &c.cert_file))
            .field("client_key_file", &self.client.as_ref().map(|c| &c.key_file))
            .finish()
    }
}

fn config_err(msg: String) -> BrokerError {
    BrokerError::new(ErrorKind::Config, msg)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|e| config_err(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The PEM blocks (label, DER) of `text`; a block that is not closed or
/// whose body is not base64 is an error.
fn pem_blocks(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else { continue };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            // Headers of old-style encrypted PEM (`Proc-Type: ...`) are kept
            // out of the base64 and make the block unusable below.
            if l.contains(':') {
                return Err(format!("the {label} block has PEM headers (an encrypted key?)"));
            }
            body.push_str(l);
        }
        if !closed {
            return Err(format!("the {label} block has no {end} line"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("the {label} block is not valid base64: {e}"))?;
        // Certificates and keys are DER SEQUENCEs.
        if der.first() != Some(&0x30) {
            return Err(format!("the {label} block does not hold DER data"));
        }
        blocks.push((label.to_string(), der));
    }
    Ok(blocks)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<u8>, BrokerError> {
    let pem = read(path, what)?;
    let blocks = pem_blocks(&pem).map_err(|e| config_err(format!("the {what} {}: {e}", path.display())))?;
    if !blocks.iter().any(|(label, _)| label == "CERTIFICATE") {
        return Err(config_err(format!(
            "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

impl TlsOptions {
    /// Also trust the CA certificates of the PEM file at `path` (Celery's
    /// `ca_certs`), on top of the system's roots.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, BrokerError> {
        let path = path.as_ref();
        let pem = certificates(path, "CA file (ca_certs)")?;
        // Valid UTF-8 once the blocks parsed: the PEM armour is ASCII.
        let text = String::from_utf8(pem)
            .map_err(|_| config_err(format!("the CA file (ca_certs) {} is not a text PEM file", path.display())))?;
        self.ca = Some((path.to_path_buf(), text));
        Ok(self)
    }

    /// Present the client certificate (chain) of the PEM file `cert` with
    /// the unencrypted PEM private key of `key` (Celery's `certfile` and
    /// `keyfile`); without `key` the key is looked for in `cert`, as
    /// Python's `ssl` does.
    pub fn client_cert_files(
        mut self,
        cert: impl AsRef<Path>,
        key: Option<impl AsRef<Path>>,
    ) -> Result<Self, BrokerError> {
        let cert = cert.as_ref();
        let cert_pem = certificates(cert, "client certificate file (certfile)")?;
        let key_file = key.as_ref().map_or(cert, |k| k.as_ref());
        let key_pem = if key.is_some() { read(key_file, "client key file (keyfile)")? } else { cert_pem.clone() };
        let blocks = pem_blocks(&key_pem)
            .map_err(|e| config_err(format!("the client key file (keyfile) {}: {e}", key_file.display())))?;
        if blocks.iter().any(|(label, _)| label == "ENCRYPTED PRIVATE KEY") {
            return Err(config_err(format!(
                "the client key {} is encrypted; qtask needs an unencrypted PEM key",
                key_file.display()
            )));
        }
        let Some((label, der)) = blocks.iter().find(|(label, _)| KEY_LABELS.contains(&label.as_str())) else {
            return Err(config_err(format!(
                "no PEM private key (-----BEGIN PRIVATE KEY-----) in {}{}",
                key_file.display(),
                if key.is_none() { "; give the key file (keyfile)" } else { "" }
            )));
        };
        // Only the key goes to the TLS library, re-armoured.
        let key_only = armour(label, der);
        self.client = Some(ClientIdentity {
            cert_file: cert.to_path_buf(),
            key_file: key_file.to_path_buf(),
            cert_pem,
            key_pem: key_only,
        });
        Ok(self)
    }

    /// Celery's `broker_use_ssl` keys: `ca_certs`, `certfile`, `keyfile`
    /// (each optional; `keyfile` needs `certfile`).
    pub fn from_files(
        ca_certs: Option<&Path>,
        certfile: Option<&Path>,
        keyfile: Option<&Path>,
    ) -> Result<Self, BrokerError> {
        let mut tls = TlsOptions::default();
        if let Some(ca) = ca_certs {
            tls = tls.ca_file(ca)?;
        }
        match (certfile, keyfile) {
            (Some(cert), key) => tls = tls.client_cert_files(cert, key)?,
            (None, Some(key)) => {
                return Err(config_err(format!("a client key file (keyfile {}) needs a certfile", key.display())))
            }
            (None, None) => {}
        }
        Ok(tls)
    }

    /// The CA file given, if any.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(|(p, _)| p.as_path())
    }

    /// The client certificate and key files given, if any.
    pub fn client_cert_paths(&self) -> Option<(&Path, &Path)> {
        self.client.as_ref().map(|c| (c.cert_file.as_path(), c.key_file.as_path()))
    }

    /// The rustls configuration of the task consumers' own connections
    /// ([`crate::direct`]): the system's roots and the CA file, and the
    /// client certificate, as lapin is given them.
    #[cfg(feature = "tls")]
    pub(crate) fn rustls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, BrokerError> {
        use rustls::pki_types::{
            CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
        };
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped, as lapin skips them.
        let (_added, _skipped) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some((path, pem)) = &self.ca {
            let blocks =
                pem_blocks(pem.as_bytes()).map_err(|e| config_err(format!("the CA file {}: {e}", path.display())))?;
            for (_, der) in blocks.into_iter().filter(|(label, _)| label == "CERTIFICATE") {
                roots.add(CertificateDer::from(der)).map_err(|e| {
                    config_err(format!("a certificate of the CA file {} is not usable: {e}", path.display()))
                })?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(format!("TLS settings: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let what = |e: String| config_err(format!("the client certificate {}: {e}", id.cert_file.display()));
                let chain: Vec<CertificateDer<'static>> = pem_blocks(&id.cert_pem)
                    .map_err(what)?
                    .into_iter()
                    .filter(|(label, _)| label == "CERTIFICATE")
                    .map(|(_, der)| CertificateDer::from(der))
                    .collect();
                let blocks = pem_blocks(&id.key_pem)
                    .map_err(|e| config_err(format!("the client key {}: {e}", id.key_file.display())))?;
                let key = blocks
                    .into_iter()
                    .find_map(|(label, der)| match label.as_str() {
                        "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
                        "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
                        "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
                        _ => None,
                    })
                    .ok_or_else(|| config_err(format!("no private key in {}", id.key_file.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    config_err(format!(
                        "the client certificate {} and key {} are not usable: {e}",
                        id.cert_file.display(),
                        id.key_file.display()
                    ))
                })?
            }
        };
        Ok(std::sync::Arc::new(config))
    }

    /// lapin's TLS configuration.
    pub(crate) fn lapin_config(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: self
                .client
                .as_ref()
                .map(|c| lapin::tcp::OwnedIdentity::PKCS8 { pem: c.cert_pem.clone(), key: c.key_pem.clone() }),
            cert_chain: self.ca.as_ref().map(|(_, pem)| pem.clone()),
        }
    }
}

fn armour(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// Whether a connection error is TLS refusing a certificate (the server's:
/// unknown issuer, wrong host name, expired; or ours: missing, unknown).
/// rustls' own error is looked for in the chain (also inside an
/// `io::Error`); lapin's errors, which carry it only as text, are matched by
/// rustls' wording.
pub(crate) fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    const NEEDLES: [&str; 4] =
        ["invalid peer certificate", "certificate not valid for name", "CertificateRequired", "BadCertificate"];
    let mut cur = Some(e);
    while let Some(err) = cur {
        #[cfg(feature = "tls")]
        if rustls_error(err).is_some_and(refuses_a_certificate) {
            return true;
        }
        let message = err.to_string();
        if NEEDLES.iter().any(|needle| message.contains(needle)) {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(feature = "tls")]
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(e) = err.downcast_ref::<rustls::Error>() {
        return Some(e);
    }
    err.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(feature = "tls")]
fn refuses_a_certificate(e: &rustls::Error) -> bool {
    use rustls::{AlertDescription as A, Error as E};
    matches!(
        e,
        E::InvalidCertificate(_)
            | E::NoCertificatesPresented
            | E::AlertReceived(
                A::CertificateRequired
                    | A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
            )
    )
}

/// Open a connection to `uri` with `tls` (used on `amqps://` URIs; lapin
/// ignores it on `amqp://` ones).
pub(crate) async fn connect(
    uri: lapin::uri::AMQPUri,
    props: lapin::ConnectionProperties,
    tls: &TlsOptions,
) -> lapin::Result<lapin::Connection> {
    use lapin::Connect as _;
    uri.connect_with_config(props, tls.lapin_config(), lapin::runtime::default_runtime()?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("qamqp-tls-unit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMAMCAQE=\n-----END PRIVATE KEY-----\n";

    #[test]
    fn files_are_read_and_checked_up_front() {
        let d = dir();
        let (cert, key, both, junk) = (d.join("c.pem"), d.join("k.pem"), d.join("both.pem"), d.join("junk.pem"));
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        std::fs::write(&both, format!("{CERT}{KEY}")).unwrap();
        std::fs::write(&junk, "not a certificate\n").unwrap();

        let tls = TlsOptions::from_files(Some(&cert), Some(&cert), Some(&key)).unwrap();
        assert_eq!(tls.ca_path(), Some(cert.as_path()));
        assert_eq!(tls.client_cert_paths(), Some((cert.as_path(), key.as_path())));
        let cfg = tls.lapin_config();
        assert!(cfg.cert_chain.as_deref().is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
        // The key comes from the certfile when there is no keyfile.
        let tls = TlsOptions::default().client_cert_files(&both, None::<&Path>).unwrap();
        assert_eq!(tls.client_cert_paths(), Some((both.as_path(), both.as_path())));
        assert!(!format!("{tls:?}").contains("MAMCAQE"), "{tls:?}");
        assert_eq!(TlsOptions::from_files(None, None, None).unwrap(), TlsOptions::default());

        let missing = d.join("missing.pem");
        for (what, r) in [
            ("missing CA", TlsOptions::from_files(Some(&missing), None, None)),
            ("CA without a certificate", TlsOptions::from_files(Some(&junk), None, None)),
            ("CA that is a key", TlsOptions::from_files(Some(&key), None, None)),
            ("missing certfile", TlsOptions::from_files(None, Some(&missing), Some(&key))),
            ("missing keyfile", TlsOptions::from_files(None, Some(&cert), Some(&missing))),
            ("keyfile without a key", TlsOptions::from_files(None, Some(&cert), Some(&cert))),
            ("certfile without a key", TlsOptions::from_files(None, Some(&cert), None)),
            ("keyfile without certfile", TlsOptions::from_files(None, None, Some(&key))),
        ] {
            let e = r.expect_err(what);
            assert_eq!(e.kind(), ErrorKind::Config, "{what}: {e}");
        }
        let e = TlsOptions::from_files(Some(&missing), None, None).unwrap_err().to_string();
        assert!(e.contains("missing.pem") && e.contains("ca_certs"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn broken_pem_is_an_error_not_a_panic() {
        for text in [
            "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nMAMCAQE=\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN \u{fffd}\u{0}",
        ] {
            assert!(
                pem_blocks(text.as_bytes()).is_err() || pem_blocks(text.as_bytes()).is_ok_and(|b| b.is_empty()),
                "{text}"
            );
        }
        assert!(pem_blocks(b"\xff\xfe-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----").is_ok());
    }
}
