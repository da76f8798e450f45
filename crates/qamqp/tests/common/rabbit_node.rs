//! A private RabbitMQ node for one test: its own node name, ports, data
//! and log directory, Erlang cookie and configuration file, so a test can
//! kill and restart it (or give it a TLS listener) without touching the
//! shared server on 5672.
//!
//! Uses only `std` and `anyhow`, so both qamqp's tests (`#[path =
//! "common/rabbit_node.rs"] mod rabbit_node;`) and integration-tests (by
//! path) compile this one file. Needs RabbitMQ's scripts in
//! `/usr/lib/rabbitmq/bin` (Debian's packages; `RABBITMQ_BIN_DIR` overrides)
//! and an `epmd` it can register with; a missing RabbitMQ is an error, not a
//! skip.
//!
//! The node is started with `rabbitmq-server` in its own process group and
//! taken down with SIGKILL of that group (no clean shutdown: what a crash or
//! an OOM kill does). Nodes left behind by a test process that died are
//! killed by the next [`RabbitNode::start`].

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

/// How long a start (or restart) may take before the test fails.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A TLS listener of a [`RabbitNode`] (RabbitMQ's `ssl_options`).
#[derive(Debug, Clone)]
pub(crate) struct TlsListener {
    /// PEM file of the CA(s) the node trusts for client certificates.
    pub(crate) cacertfile: PathBuf,
    /// PEM file of the server certificate.
    pub(crate) certfile: PathBuf,
    /// PEM file of the server key.
    pub(crate) keyfile: PathBuf,
    /// Ask for a client certificate and refuse the connection without a
    /// valid one (`verify_peer` + `fail_if_no_peer_cert`).
    pub(crate) require_client_cert: bool,
}

/// A RabbitMQ node owned by one test; killed (and its directory removed)
/// when dropped.
pub(crate) struct RabbitNode {
    /// Erlang node name (`qtask-<pid>-<n>@localhost`).
    pub(crate) name: String,
    /// AMQP (plain TCP) port on 127.0.0.1.
    pub(crate) port: u16,
    /// Erlang distribution port (used by `rabbitmqctl`).
    pub(crate) dist_port: u16,
    /// AMQPS port (all interfaces), when started with a [`TlsListener`].
    pub(crate) tls_port: Option<u16>,
    dir: PathBuf,
    tls: Option<TlsListener>,
    child: Option<Child>,
}

fn bin_dir() -> PathBuf {
    std::env::var_os("RABBITMQ_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin"))
}

/// A port below Linux's ephemeral range (32768-60999) that is free now on
/// every interface: a port from `bind(0)` could be taken as the local port
/// of some outgoing connection while the node is down for a restart, and
/// RabbitMQ binds without `SO_REUSEADDR`.
fn pick_port(taken: &[u16]) -> Result<u16> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0));
    for i in 0..500u32 {
        let n = seed.wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729)).wrapping_add(i);
        let port = 20_000 + (n % 12_000) as u16;
        // 25672 is the distribution port of a default node on 5672.
        if port == 25_672 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("0.0.0.0", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found for a RabbitMQ node")
}

/// Whether `pid` is alive (a zombie counts as dead).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).is_some_and(|s| !s.starts_with('Z')),
        Err(_) => false,
    }
}

/// The process group of `pid` (from `/proc/<pid>/stat`).
fn pgid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

/// Kill the nodes of test processes that are gone (their directories are
/// `qtask-rabbit-<test pid>-...` in the temp dir) and remove the directories.
fn reap_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_prefix("qtask-rabbit-").and_then(|r| r.split('-').next()) else { continue };
        let Ok(owner) = owner.parse::<u32>() else { continue };
        if owner == std::process::id() || alive(owner) {
            continue;
        }
        let dir = e.path();
        if let Some(pid) = fs::read_to_string(dir.join("node.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
            // Only a beam started for this directory (its command line names it).
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                if let Some(pgid) = pgid_of(pid) {
                    kill_group(pgid);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

impl RabbitNode {
    /// Start a node with a plain AMQP listener.
    pub(crate) fn start() -> Result<RabbitNode> {
        Self::start_with(None)
    }

    /// Start a node, with a TLS listener too when `tls` is given; waits
    /// until it accepts AMQP connections.
    pub(crate) fn start_with(tls: Option<TlsListener>) -> Result<RabbitNode> {
        static N: AtomicU32 = AtomicU32::new(0);
        reap_stale();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("qtask-{}-{n}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("qtask-rabbit-{}-{n}-{}", std::process::id(), fastish_suffix()));
        fs::create_dir_all(dir.join("home"))?;
        let mut node = RabbitNode { name, port: 0, dist_port: 0, tls_port: None, dir, tls, child: None };
        // A port can be taken between the check and the node's bind: try
        // fresh ports a few times before giving up.
        let mut last = None;
        for _ in 0..3 {
            node.port = pick_port(&[])?;
            node.dist_port = pick_port(&[node.port])?;
            node.tls_port = match node.tls {
                Some(_) => Some(pick_port(&[node.port, node.dist_port])?),
                None => None,
            };
            match node.launch() {
                Ok(()) => return Ok(node),
                Err(e) if format!("{e:#}").contains("eaddrinuse") => {
                    node.kill();
                    let _ = fs::remove_dir_all(node.dir.join("mnesia"));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("could not start a RabbitMQ node")))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@<host>:<tls port>/%2f`.
    pub(crate) fn tls_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port.unwrap_or(0))
    }

    /// The node's directory (data, logs, configuration).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_config(&self) -> Result<()> {
        let mut conf = String::from("log.console = true\nlog.console.level = info\nlog.file = false\n");
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            conf.push_str(&format!(
                "listeners.ssl.default = {port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n",
                tls.cacertfile.display(),
                tls.certfile.display(),
                tls.keyfile.display()
            ));
            if tls.require_client_cert {
                conf.push_str("ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n");
            } else {
                conf.push_str("ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n");
            }
        }
        fs::write(self.dir.join("rabbitmq.conf"), conf)?;
        fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        fs::write(self.dir.join("rabbitmq-env.conf"), "")?;
        let cookie = self.dir.join("home/.erlang.cookie");
        if !cookie.exists() {
            fs::write(&cookie, format!("QTASKTEST{}", fastish_suffix().to_uppercase()))?;
            fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
        }
        Ok(())
    }

    /// The environment every RabbitMQ script run for this node gets.
    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("node.pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}");
    }

    fn launch(&mut self) -> Result<()> {
        self.write_config()?;
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log"))?;
        let mut cmd = Command::new(bin_dir().join("rabbitmq-server"));
        self.env(&mut cmd);
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: killing the group takes the shell
            // script, beam and its helpers down together.
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin_dir().join("rabbitmq-server").display()))?;
        self.child = Some(child);
        self.wait_ready(START_LIMIT)
    }

    /// Poll until an AMQP protocol header on the plain port is answered
    /// with a frame (and the TLS port accepts connections), failing early
    /// when the node exits.
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("RabbitMQ node {} exited ({status}) while starting:\n{}", self.name, self.log_tail(40));
                }
            }
            if amqp_answers(self.port) && self.tls_port.is_none_or(tcp_accepts) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("RabbitMQ node {} not ready after {limit:?}:\n{}", self.name, self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of the node's output.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kill the node (SIGKILL to its process group: no clean shutdown) and
    /// wait until its processes are gone and its port is closed.
    pub(crate) fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let beam = fs::read_to_string(self.dir.join("node.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
        kill_group(child.id());
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && (beam.is_some_and(alive) || tcp_accepts(self.port)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_file(self.dir.join("node.pid"));
    }

    /// Kill the node and start it again on the same ports, name and data
    /// directory (durable queues and persistent messages come back).
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// Whether the node's processes are running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Run `rabbitmqctl -n <node> args...` with the node's cookie and return
    /// its stdout.
    pub(crate) fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(bin_dir().join("rabbitmqctl"));
        self.env(&mut cmd);
        cmd.args(["-q", "-n", &self.name]).args(args);
        let out = cmd.output().context("running rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {args:?}: {}\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn fastish_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}", nanos ^ (u128::from(std::process::id()) << 64))
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)).is_ok()
}

/// Whether the port answers an AMQP 0-9-1 protocol header with a method
/// frame (`connection.start`).
fn amqp_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut first = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok() && s.read_exact(&mut first).is_ok() && first[0] == 1
}
