//! Start the local services the tests need when they are not running.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

struct Service {
    name: &'static str,
    port: u16,
    start: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "Redis",
        port: 6379,
        start: "mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    },
    Service { name: "RabbitMQ", port: 5672, start: "rabbitmq-server -detached" },
    Service {
        name: "PostgreSQL",
        port: 5432,
        start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start",
    },
];

fn is_up(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Make sure Redis, RabbitMQ and PostgreSQL answer on their ports.
pub(crate) fn ensure_all() -> Result<()> {
    for s in SERVICES {
        if is_up(s.port) {
            continue;
        }
        eprintln!("xtask: {} is not running on port {}; starting it", s.name, s.port);
        let status = Command::new("sh").arg("-c").arg(s.start).status();
        if let Err(e) = status {
            bail!("cannot start {}: {e}", s.name);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while !is_up(s.port) {
            if Instant::now() > deadline {
                bail!("{} did not come up on port {} (started with: {})", s.name, s.port, s.start);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("xtask: {} is up", s.name);
    }
    Ok(())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).exists()))
}

/// Make sure Debian's `chromium` and `chromedriver` are installed: the page
/// tests drive a real headless browser (integration-tests/src/browser.rs).
pub(crate) fn ensure_browser() -> Result<()> {
    if on_path("chromium") && on_path("chromedriver") {
        return Ok(());
    }
    eprintln!("xtask: installing chromium and chromium-driver (apt) for the page tests");
    let install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver";
    let ok = |cmd: &str| Command::new("sh").arg("-c").arg(cmd).status().is_ok_and(|s| s.success());
    // The package lists may be missing or old on a new machine: update once and retry.
    let installed = ok(install) || (ok("apt-get update -qq") && ok(install));
    if !installed {
        bail!("cannot install the browser of the page tests: run `apt-get install chromium chromium-driver` as root");
    }
    if !(on_path("chromium") && on_path("chromedriver")) {
        bail!("chromium or chromedriver is still missing after apt-get install");
    }
    Ok(())
}
