//! Test support: a RabbitMQ vhost of this test run, `rabbitmqctl`, waits.
//!
//! Every test binary creates its own vhost `qamqp-test-<pid>-<random>` on the
//! shared RabbitMQ ([`shared_url`]: `QTASK_TEST_AMQP_URL`, else
//! 127.0.0.1:5672 as guest/guest), so the durable queues the tests
//! declare never pile up in `/` and parallel runs do not meet. Vhosts left
//! by earlier runs whose process is gone are deleted first. Needs
//! `rabbitmqctl` (run as root locally and in CI); a missing server fails.

#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use qamqp::{AmqpBroker, AmqpOptions};
use serde_json::Value;

/// Run `rabbitmqctl args...` and return its stdout; panics on failure.
pub(crate) fn ctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().unwrap_or_else(|e| panic!("rabbitmqctl: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rabbitmqctl -q --formatter json <what> -p <vhost> columns...` as JSON rows.
pub(crate) fn list(what: &str, columns: &[&str]) -> Vec<Value> {
    let mut args = vec!["-q", "--formatter", "json", what, "-p", vhost()];
    args.extend_from_slice(columns);
    let out = ctl(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("rabbitmqctl {what} printed no JSON ({e}): {out}"))
}

fn stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("qamqp-test-") else { return false };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// This run's vhost (created on first use).
pub(crate) fn vhost() -> &'static str {
    static VHOST: OnceLock<String> = OnceLock::new();
    VHOST.get_or_init(|| {
        for line in ctl(&["-q", "list_vhosts", "name"]).lines() {
            let name = line.trim();
            if stale(name) {
                let _ = Command::new("rabbitmqctl").args(["-q", "delete_vhost", name]).output();
            }
        }
        let name = format!("qamqp-test-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        ctl(&["-q", "add_vhost", &name]);
        ctl(&["-q", "set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        name
    })
}

/// The shared RabbitMQ of the tests: `QTASK_TEST_AMQP_URL`, else
/// `amqp://guest:guest@127.0.0.1:5672/%2f` (as in integration-tests).
pub(crate) fn shared_url() -> String {
    std::env::var("QTASK_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// The shared server's URL with `vhost` (URL-encoded) in place of its vhost;
/// its query is kept.
pub(crate) fn on_vhost(vhost: &str) -> String {
    let shared = shared_url();
    let (base, query) = match shared.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (shared.as_str(), String::new()),
    };
    let host = base.find("://").map_or(0, |i| i + 3);
    let path = base[host..].find('/').map_or(base.len(), |i| host + i);
    format!("{}/{vhost}{query}", &base[..path])
}

/// The shared server's URL (its user and vhost) with `password` in place of
/// its password.
pub(crate) fn with_password(password: &str) -> String {
    let shared = shared_url();
    let start = shared.find("://").map_or(0, |i| i + 3);
    let (user, rest) = match shared[start..].split_once('@') {
        Some((userinfo, rest)) => (userinfo.split(':').next().unwrap_or_default(), rest),
        None => ("guest", &shared[start..]),
    };
    format!("{}{user}:{password}@{rest}", &shared[..start])
}

/// The URL of this run's vhost.
pub(crate) fn url() -> String {
    on_vhost(vhost())
}

/// A broker on this run's vhost.
pub(crate) async fn broker(opts: AmqpOptions) -> AmqpBroker {
    AmqpBroker::connect(&url(), opts).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

/// A name no other test uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Poll `cond` until it holds or `within` passes (then panic with `what`).
pub(crate) async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut interval = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not true within {within:?}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// The row of `rows` whose `name` is `name`.
pub(crate) fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} not listed in {rows:?}"))
}

/// Close (server side, like a network cut) every connection whose
/// `connection_name` client property is `name`; returns how many.
pub(crate) fn close_connections(name: &str) -> usize {
    // The plain (tab-separated) listing prints pids as close_connection wants them.
    let out = ctl(&["-q", "--no-table-headers", "list_connections", "pid", "client_properties"]);
    let needle = format!("\"{name}\"");
    let mut closed = 0;
    for line in out.lines().filter(|l| l.contains(&needle)) {
        if let Some(pid) = line.split('\t').next() {
            ctl(&["-q", "close_connection", pid.trim(), "qamqp fault test"]);
            closed += 1;
        }
    }
    closed
}

/// Whether a connection named `name` is open.
pub(crate) fn connection_open(name: &str) -> bool {
    let out = ctl(&["-q", "--formatter", "json", "list_connections", "client_properties"]);
    out.contains(&format!("\"{name}\""))
}
