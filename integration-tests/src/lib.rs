//! Support for the cross-crate tests: paths to the workspace, the Python
//! venv with real Celery, worker processes (qtask's `interop-worker`, Python
//! Celery workers), private Redis servers for fault tests, and the `qtask`
//! CLI binary (run by the CLI tests through [`cli`]); the producer-side
//! task declarations ([`tasks`]), the Python interop checks both brokers
//! share ([`interop`]) and the helpers of the broker fault tests
//! ([`faults`]).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub mod browser;
pub mod cli;
pub mod control;
pub mod faults;
pub mod interop;
pub mod tasks;

pub use interop::Interop;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

/// The Python with celery==5.7.0 installed: `QTASK_PYTHON`, else the
/// workspace's `.venv`. Panics with the command to run when it is missing,
/// so interop tests fail loudly instead of skipping.
pub fn python() -> PathBuf {
    let p = std::env::var_os("QTASK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "the Python venv for interop tests is missing ({}): run `cargo xtask venv`, or run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// The directory of the Python helpers (`pyapp.py`, `producer.py`).
pub fn python_dir() -> PathBuf {
    workspace_root().join("integration-tests/python")
}

/// A unique name for queues, key prefixes and schemas of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The shared Redis of the interop tests: `QTASK_TEST_REDIS_URL`, else
/// `redis://127.0.0.1:6379/0`. Tests share it and own their queue names.
pub fn redis_url() -> String {
    std::env::var("QTASK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string())
}

/// The path of the `interop-worker` binary; call as
/// `interop_worker_bin!()` from a test of this package.
#[macro_export]
macro_rules! interop_worker_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_interop-worker"))
    };
}

/// Wait until `cond` returns true, checking every 20 ms, for at most `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send `signal` (a `kill` name such as `TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let st = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
    if !st.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// A child process with its stderr collected in the background; killed
/// (SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    log_changed: Arc<(Mutex<u64>, std::sync::Condvar)>,
}

impl Proc {
    /// Start `cmd` with stderr (and stdout) captured into the log.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let log_changed = Arc::new((Mutex::new(0u64), std::sync::Condvar::new()));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?),
            Box::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?),
        ];
        for pipe in pipes {
            let (log, changed) = (log.clone(), log_changed.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                        l.push_str(&line);
                        l.push('\n');
                    }
                    let (n, cv) = &*changed;
                    *n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    cv.notify_all();
                }
            });
        }
        Ok(Proc { name: name.to_string(), child, log, log_changed })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Block until the log contains `needle` (or the process exits, or `limit` passes).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited ({st}) before printing {needle:?}; log:\n{}", self.name, self.log());
            }
            if Instant::now() > deadline {
                bail!("{} did not print {needle:?} within {limit:?}; log:\n{}", self.name, self.log());
            }
            let (n, cv) = &*self.log_changed;
            let guard = n.lock().unwrap_or_else(|p| p.into_inner());
            let _ = cv.wait_timeout(guard, Duration::from_millis(50));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal (`TERM`, `KILL`, ...).
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid(), sig)
    }

    /// Wait for the process to exit within `limit`; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {limit:?}; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (warm shutdown) for at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit(limit)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options of a spawned `interop-worker`.
#[derive(Debug, Clone, Default)]
pub struct WorkerOpts {
    /// `--backend` (None: results not stored).
    pub backend: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--prefetch-multiplier`.
    pub prefetch_multiplier: Option<usize>,
    /// `--acks-late`.
    pub acks_late: bool,
    /// `--threads` (1: a current-thread runtime; None: one thread per core).
    pub threads: Option<usize>,
    /// Extra environment (`QTASK_*` settings).
    pub env: Vec<(String, String)>,
}

/// Start `interop-worker` (path from [`interop_worker_bin!`]) on `broker`
/// consuming `queues` (the first one is also its default queue, for chain
/// steps and callbacks it sends) and wait until it is online.
pub fn spawn_interop_worker(bin: &Path, broker: &str, queues: &[&str], opts: &WorkerOpts) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg("--broker").arg(broker).arg("--queues").arg(queues.join(","));
    if let Some(b) = &opts.backend {
        cmd.arg("--backend").arg(b);
    }
    if let Some(c) = opts.concurrency {
        cmd.arg("--concurrency").arg(c.to_string());
    }
    if let Some(m) = opts.prefetch_multiplier {
        cmd.arg("--prefetch-multiplier").arg(m.to_string());
    }
    if opts.acks_late {
        cmd.arg("--acks-late");
    }
    if let Some(t) = opts.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    cmd.env("QTASK_LOG", std::env::var("QTASK_TEST_WORKER_LOG").unwrap_or_else(|_| "info".into()));
    if let Some(q) = queues.first() {
        cmd.env("QTASK_TASK_DEFAULT_QUEUE", q);
    }
    cmd.env("QTASK_RESULT_EXTENDED", "true");
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn("interop-worker", cmd)?;
    p.wait_log("worker online", Duration::from_secs(30))?;
    Ok(p)
}

/// Environment of the Python app (`pyapp.py`) for one test.
#[derive(Debug, Clone)]
pub struct PyEnv {
    /// Broker URL.
    pub broker: String,
    /// Result backend URL.
    pub backend: Option<String>,
    /// Default queue.
    pub queue: String,
    /// `json` or `msgpack`.
    pub serializer: String,
    /// More `PYAPP_*` variables (see `pyapp.py`).
    pub vars: Vec<(String, String)>,
}

impl PyEnv {
    /// JSON, broker and backend both `url`, default queue `queue`.
    pub fn new(url: &str, queue: &str) -> PyEnv {
        PyEnv {
            broker: url.into(),
            backend: Some(url.into()),
            queue: queue.into(),
            serializer: "json".into(),
            vars: Vec::new(),
        }
    }

    /// Broker `broker`, results in `backend` (e.g. RabbitMQ with Redis results).
    pub fn with_backend(broker: &str, backend: &str, queue: &str) -> PyEnv {
        PyEnv { backend: Some(backend.into()), ..PyEnv::new(broker, queue) }
    }

    /// Set one more environment variable of the Python app.
    pub fn var(mut self, name: &str, value: &str) -> PyEnv {
        self.vars.push((name.into(), value.into()));
        self
    }

    /// With another serializer.
    pub fn serializer(mut self, s: &str) -> PyEnv {
        self.serializer = s.into();
        self
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.current_dir(python_dir())
            .env("PYAPP_BROKER", &self.broker)
            .env("PYAPP_QUEUE", &self.queue)
            .env("PYAPP_SERIALIZER", &self.serializer)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        match &self.backend {
            Some(b) => cmd.env("PYAPP_BACKEND", b),
            None => cmd.env_remove("PYAPP_BACKEND"),
        };
    }
}

/// Start a Python Celery worker (`-P solo`, or prefork with `concurrency`)
/// on `queues` and wait until it is ready.
pub fn spawn_python_worker(env: &PyEnv, queues: &[&str], concurrency: Option<usize>) -> Result<Proc> {
    spawn_python_worker_named(env, queues, concurrency, &format!("{}@%h", unique("py")))
}

/// [`spawn_python_worker`] with the node name `node` (`-n`).
pub fn spawn_python_worker_named(env: &PyEnv, queues: &[&str], concurrency: Option<usize>, node: &str) -> Result<Proc> {
    spawn_python_worker_with(env, queues, concurrency, &["--without-heartbeat", "-n", node])
}

/// [`spawn_python_worker`] with more `celery worker` arguments (`-E`,
/// `-n NAME`, `--without-heartbeat`, ...); a later `-n` wins over the unique
/// default name.
pub fn spawn_python_worker_with(
    env: &PyEnv,
    queues: &[&str],
    concurrency: Option<usize>,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = Command::new(python());
    env.apply(&mut cmd);
    cmd.args(["-m", "celery", "-A", "pyapp", "worker", "--without-mingle", "--without-gossip"])
        .args(["-l", "info", "-Q", &queues.join(",")])
        .args(["-n", &format!("{}@%h", unique("py"))])
        .args(extra);
    match concurrency {
        None => cmd.args(["-P", "solo"]),
        Some(c) => cmd.args(["-P", "prefork", "-c", &c.to_string()]),
    };
    let mut p = Proc::spawn("celery worker", cmd)?;
    p.wait_log(" ready.", Duration::from_secs(60))?;
    Ok(p)
}

/// Run `producer.py SCENARIO ARGS...` and return the JSON it printed.
pub fn py_producer(env: &PyEnv, scenario: &str, args: &[&str]) -> Result<Value> {
    let mut cmd = Command::new(python());
    env.apply(&mut cmd);
    cmd.arg("producer.py").arg(scenario).args(args);
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("producer.py {scenario} failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("producer.py {scenario} printed:\n{stdout}\n{stderr}"))?;
    if let Some(e) = v.get("error") {
        bail!("producer.py {scenario} raised {e}\nstderr:\n{stderr}");
    }
    Ok(v)
}

/// The shared RabbitMQ of the interop tests: `QTASK_TEST_AMQP_URL`, else
/// `amqp://guest:guest@127.0.0.1:5672/%2f`. Tests own their queue names.
pub fn amqp_url() -> String {
    std::env::var("QTASK_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Run `rabbitmqctl ARGS...` (through `sudo -n` when not root and plain
/// `rabbitmqctl` is refused) and return its stdout.
pub fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let mut errors = Vec::new();
    for prefix in [&[][..], &["sudo", "-n"][..]] {
        let mut cmd = match prefix.first() {
            Some(p) => {
                let mut c = Command::new(p);
                c.args(&prefix[1..]).arg("rabbitmqctl");
                c
            }
            None => Command::new("rabbitmqctl"),
        };
        cmd.args(["-q"]).args(args);
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            Ok(out) => errors.push(format!("{cmd:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr))),
            Err(e) => errors.push(format!("{cmd:?}: {e}")),
        }
    }
    bail!("rabbitmqctl failed: {}", errors.join("; "))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private `redis-server` for one test (fault tests): its own port and
/// directory, killed when dropped.
pub struct RedisServer {
    /// The port.
    pub port: u16,
    dir: PathBuf,
    appendonly: bool,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Start `redis-server --port <free> --save ''` with `--appendonly yes|no`.
    pub fn start(appendonly: bool) -> Result<RedisServer> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique("qtask-redis"));
        std::fs::create_dir_all(&dir)?;
        let mut s = RedisServer { port, dir, appendonly, proc: None };
        s.launch()?;
        Ok(s)
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir);
        let mut p = Proc::spawn("redis-server", cmd)?;
        p.wait_log("Ready to accept connections", Duration::from_secs(20))?;
        self.proc = Some(p);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kill the server (SIGKILL: no save on shutdown).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Start it again on the same port and directory (with appendonly the
    /// data written before the kill comes back).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `qtask` CLI binary: `QTASK_CLI` if set, else `target/<profile>/qtask`
/// next to the running test executable, (re)built once per test process
/// with `cargo build -p qtask --bin qtask --features redis,amqp` into the same
/// target directory: `cargo test` does not build the `qtask` package's
/// binary (that package has no integration tests), and a binary left there
/// by a plain `cargo build -p qtask` lacks the `redis` and `amqp` features. cargo
/// releases its build lock before it runs tests, so this does not deadlock
/// (it waits while another cargo builds); when up to date it takes a moment.
pub fn qtask_cli() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("QTASK_CLI") {
        return Ok(PathBuf::from(p));
    }
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/qtask
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| anyhow!("odd test path {exe:?}"))?;
    let built = profile_dir.join("qtask");
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = DONE.get() {
        return Ok(p.clone());
    }
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "qtask", "--bin", "qtask", "--features", "redis,amqp", "--target-dir"])
        .arg(target);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() || !built.exists() {
        bail!("{cmd:?} failed ({st}); build it first with `cargo build -p qtask --bin qtask --features redis,amqp`");
    }
    Ok(DONE.get_or_init(|| built).clone())
}

/// A binary of another workspace package (`cargo build -p PACKAGE --bin
/// BIN`), built once per test process into the running test's target
/// directory and profile, as [`qtask_cli`] builds `qtask`.
pub fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| b == bin) {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| anyhow!("odd test path {exe:?}"))?;
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin, "--target-dir"])
        .arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    let path = profile_dir.join(bin);
    if !st.success() || !path.exists() {
        bail!("{cmd:?} failed ({st})");
    }
    built.push((bin.to_string(), path.clone()));
    Ok(path)
}

/// A reply of [`redis_cmd`].
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+OK` and friends.
    Simple(String),
    /// An integer.
    Int(i64),
    /// A bulk string (None: nil).
    Bulk(Option<Vec<u8>>),
    /// An array (None: nil).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (bulk or simple), None for nil.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The reply as an integer (0 for nil).
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => other.text().and_then(|t| t.parse().ok()).unwrap_or(0),
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => bail!("redis error: {rest}"),
        ":" => Resp::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Resp::Array(None)
            } else {
                Resp::Array(Some((0..n).map(|_| read_resp(r)).collect::<Result<_>>()?))
            }
        }
        _ => bail!("unexpected redis reply {line:?}"),
    })
}

/// Run one command on the Redis of `url` (`redis://host:port/db`, no
/// auth) with a tiny blocking RESP client: for tests' own checks.
pub fn redis_cmd(url: &str, args: &[&str]) -> Result<Resp> {
    let rest = url.strip_prefix("redis://").ok_or_else(|| anyhow!("not a redis URL: {url}"))?;
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:6379") };
    let stream = std::net::TcpStream::connect(&hostport).with_context(|| format!("connect {hostport}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut send = |args: &[&str]| -> Result<Resp> {
        use std::io::Write;
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        w.write_all(&buf)?;
        read_resp(&mut r)
    };
    let db = db.trim_end_matches('/');
    if !db.is_empty() && db != "0" {
        send(&["SELECT", db])?;
    }
    send(args)
}

/// Wait until the lines of [`redis_monitor`] hold every command the server
/// ran before this call. The monitor's thread reads them a moment after the
/// server runs them, so a count taken right after reading a result could
/// miss the write of that very result: this sends a unique `ECHO` and waits
/// for it to be listed (MONITOR lists commands in the order they run).
pub async fn monitor_caught_up(url: &str, lines: &Mutex<Vec<String>>) -> Result<()> {
    let marker = unique("monitor-mark");
    redis_cmd(url, &["ECHO", &marker])?;
    wait_for("MONITOR to list every earlier command", Duration::from_secs(10), || {
        let seen = lines.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|l| l.contains(&marker));
        async move { Ok(seen) }
    })
    .await
}

/// Lines of `MONITOR` on the Redis of `url` (every command any client
/// sends, with its arguments), collected in the background until the
/// server goes away. For fault tests that count what workers wrote.
pub fn redis_monitor(url: &str) -> Result<Arc<Mutex<Vec<String>>>> {
    let rest = url.strip_prefix("redis://").ok_or_else(|| anyhow!("not a redis URL: {url}"))?;
    let hostport = rest.split_once('/').map(|(h, _)| h).unwrap_or(rest).to_string();
    let stream = std::net::TcpStream::connect(&hostport).with_context(|| format!("connect {hostport}"))?;
    let mut w = stream.try_clone()?;
    std::io::Write::write_all(&mut w, b"MONITOR\r\n")?;
    let mut r = BufReader::new(stream);
    let mut ok = String::new();
    r.read_line(&mut ok)?;
    if !ok.starts_with("+OK") {
        bail!("MONITOR answered {ok:?}");
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        let _keep = w;
        for line in r.lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    Ok(lines)
}
