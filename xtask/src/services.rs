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
