//! Drivers: how an adapter crate declares itself.
//!
//! Each adapter crate exports a [`Driver`] value: its name, the URL schemes
//! it serves, and how to connect a broker and/or a result backend from a
//! URL and the app's [`Config`]. The adapter reads its own settings from the
//! `Config` there, in one place. The facade (`qtask::connect`) is a lookup
//! over the drivers its cargo features enable ([`find`]); adding an adapter
//! is one crate and one entry in that list.
//!
//! ```
//! use std::sync::Arc;
//! use qcore::driver::{self, Driver, Role};
//! use qcore::{Broker, Config, Error};
//!
//! fn connect<'a>(_url: &'a str, _cfg: &'a Config) -> driver::BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
//!     Box::pin(async { Err(Error::Config("a sketch".into())) })
//! }
//!
//! static TOY: Driver = Driver::new("toy").broker(&["toy"], connect);
//! let drivers = [&TOY];
//! assert_eq!(driver::find(&drivers, "toy://host", Role::Broker).unwrap().name, "toy");
//! let e = driver::find(&drivers, "nope://host", Role::Broker).unwrap_err().to_string();
//! assert!(e.contains("toy://"), "{e}");
//! assert!(driver::find(&drivers, "toy://host", Role::Backend).is_err());
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::config::Config;
use crate::error::Error;

/// A boxed, sendable future (what a driver's connect functions return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connects a broker: the URL (secrets included) and the app's settings.
pub type ConnectBroker = for<'a> fn(&'a str, &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>>;

/// Connects a result backend: the URL and the app's settings.
pub type ConnectBackend = for<'a> fn(&'a str, &'a Config) -> BoxFuture<'a, Result<Arc<dyn ResultBackend>, Error>>;

/// What a URL is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A broker (`broker_url`).
    Broker,
    /// A result backend (`result_backend`).
    Backend,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Backend => "result backend",
        }
    }
}

/// An adapter's declaration: name, URL schemes, connect functions.
#[derive(Clone, Copy)]
pub struct Driver {
    /// Short name (`redis`, `amqp`, `postgres`, ...).
    pub name: &'static str,
    /// URL schemes served as a broker.
    pub broker_schemes: &'static [&'static str],
    /// URL schemes served as a result backend.
    pub backend_schemes: &'static [&'static str],
    /// Connects a broker (when `broker_schemes` is not empty).
    pub connect_broker: Option<ConnectBroker>,
    /// Connects a result backend (when `backend_schemes` is not empty).
    pub connect_backend: Option<ConnectBackend>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("name", &self.name)
            .field("broker_schemes", &self.broker_schemes)
            .field("backend_schemes", &self.backend_schemes)
            .finish()
    }
}

impl Driver {
    /// A driver that serves nothing yet.
    pub const fn new(name: &'static str) -> Driver {
        Driver { name, broker_schemes: &[], backend_schemes: &[], connect_broker: None, connect_backend: None }
    }

    /// Serve `schemes` as a broker.
    pub const fn broker(mut self, schemes: &'static [&'static str], connect: ConnectBroker) -> Driver {
        self.broker_schemes = schemes;
        self.connect_broker = Some(connect);
        self
    }

    /// Serve `schemes` as a result backend.
    pub const fn backend(mut self, schemes: &'static [&'static str], connect: ConnectBackend) -> Driver {
        self.backend_schemes = schemes;
        self.connect_backend = Some(connect);
        self
    }

    /// The schemes served in `role`.
    pub fn schemes(&self, role: Role) -> &'static [&'static str] {
        match role {
            Role::Broker => self.broker_schemes,
            Role::Backend => self.backend_schemes,
        }
    }

    /// Whether this driver serves `scheme` in `role`. SQLAlchemy's
    /// `dialect+driver` spelling matches its dialect
    /// (`db+postgresql+psycopg2` is served by a driver of `db+postgresql`).
    pub fn serves(&self, scheme: &str, role: Role) -> bool {
        let schemes = self.schemes(role);
        let mut s = scheme;
        loop {
            if schemes.iter().any(|k| k.eq_ignore_ascii_case(s)) {
                return true;
            }
            match s.rsplit_once('+') {
                Some((head, _)) => s = head,
                None => return false,
            }
        }
    }
}

/// The scheme of `url`: what comes before `://` (or before `:` for
/// `sqlite::memory:`-style URLs).
pub fn scheme(url: &str) -> Result<&str, Error> {
    let url = url.trim();
    url.split_once("://")
        .map(|(s, _)| s)
        .or_else(|| url.split_once(':').map(|(s, _)| s))
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .ok_or_else(|| Error::Config(format!("invalid URL {:?}: expected scheme://...", crate::url::redact(url))))
}

/// The driver among `drivers` that serves `url` in `role`, or a
/// configuration error that lists what this build supports (the URL's
/// password hidden).
pub fn find<'d>(drivers: &[&'d Driver], url: &str, role: Role) -> Result<&'d Driver, Error> {
    let s = scheme(url)?;
    if let Some(d) = drivers.iter().find(|d| d.serves(s, role)) {
        return Ok(d);
    }
    let supported: Vec<String> =
        drivers.iter().flat_map(|d| d.schemes(role).iter().map(|s| format!("{s}://"))).collect();
    let elsewhere = drivers
        .iter()
        .find(|d| d.serves(s, other(role)))
        .map(|d| format!(" ({s}:// is a {} URL of the {} adapter, not a {})", other(role).noun(), d.name, role.noun()));
    Err(Error::Config(format!(
        "unsupported {} URL {:?}{}: this build supports {} (enable the matching qtask feature for others)",
        role.noun(),
        crate::url::redact(url),
        elsewhere.unwrap_or_default(),
        if supported.is_empty() { "none".to_string() } else { supported.join(", ") }
    )))
}

fn other(role: Role) -> Role {
    match role {
        Role::Broker => Role::Backend,
        Role::Backend => Role::Broker,
    }
}

/// Connect the broker of `url` through the matching driver.
pub async fn connect_broker(drivers: &[&Driver], url: &str, cfg: &Config) -> Result<Arc<dyn Broker>, Error> {
    let d = find(drivers, url, Role::Broker)?;
    let connect = d.connect_broker.ok_or_else(|| Error::Config(format!("the {} driver connects no broker", d.name)))?;
    connect(url.trim(), cfg).await
}

/// Connect the result backend of `url` through the matching driver.
pub async fn connect_backend(drivers: &[&Driver], url: &str, cfg: &Config) -> Result<Arc<dyn ResultBackend>, Error> {
    let d = find(drivers, url, Role::Backend)?;
    let connect =
        d.connect_backend.ok_or_else(|| Error::Config(format!("the {} driver connects no result backend", d.name)))?;
    connect(url.trim(), cfg).await
}
