//! `cargo xtask bench redis [--n N] [--calls M]`: qtask beside Python Celery
//! on one private Redis, in one run.
//!
//! * enqueue: one producer, sequential `apply_async` of `tasks.noop`, N times;
//! * drain: N `tasks.noop` pre-filled (then moved onto the worker's queue
//!   with one `RENAME`), time until the queue and `unacked` are empty and, with
//!   results, N results are stored; with results stored and without
//!   (`--backend` omitted / Celery `task_ignore_result`);
//! * round trip: M sequential `delay().get()`, p50 and p99.
//!
//! `--producer` (both brokers, with `--runs K`) measures only the producer:
//! sequential enqueue against Celery's loop and the raw sequential ceiling
//! (one LPUSH per round trip; one publish awaiting its confirm), on RabbitMQ
//! also with `confirm_publish = each`, 10,000 `delay` futures in flight,
//! `App::send_many` and a group of 1,000, and the round trips.
//!
//! qtask runs the release `interop-worker --concurrency 2` (prefetch
//! multiplier 4; the end-to-end rows also at `--concurrency 16`: its tasks
//! are async, so slots are cheap, like a gevent pool's) and `qtask-bench`;
//! Celery runs `celery worker -P prefork -c 2` (prefetch multiplier 4) from
//! the venv.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        for pipe in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Ok(Proc { name: name.to_string(), child, log })
    }

    fn wait_log(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if log.contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited ({st}):\n{log}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{} did not print {needle:?}:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to 30 s, then SIGKILL.
    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output_json(cmd: &mut Command) -> Result<serde_json_lite::Obj> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| anyhow!("{cmd:?} printed {text}"))?;
    serde_json_lite::parse_obj(line)
}

/// A flat JSON object of numbers is all the bench scripts print; parsed
/// without a JSON dependency in xtask.
mod serde_json_lite {
    use anyhow::{anyhow, Result};
    use std::collections::HashMap;

    pub(crate) type Obj = HashMap<String, f64>;

    pub(crate) fn parse_obj(s: &str) -> Result<Obj> {
        let inner = s
            .trim()
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| anyhow!("not an object: {s}"))?;
        let mut m = HashMap::new();
        for part in inner.split(',') {
            let (k, v) = part.split_once(':').ok_or_else(|| anyhow!("bad member {part}"))?;
            let k = k.trim().trim_matches('"').to_string();
            if let Ok(v) = v.trim().parse::<f64>() {
                m.insert(k, v);
            }
        }
        Ok(m)
    }
}

fn get(o: &serde_json_lite::Obj, k: &str) -> Result<f64> {
    o.get(k).copied().ok_or_else(|| anyhow!("no {k} in {o:?}"))
}

struct Bench<'a> {
    root: &'a Path,
    python: &'a Path,
    url: String,
    port: u16,
    n: usize,
    calls: usize,
}

impl Bench<'_> {
    fn bin(&self, name: &str) -> Command {
        Command::new(release_bin(self.root, name))
    }

    fn flush(&self) -> Result<()> {
        let st = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "FLUSHALL"])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("redis-cli FLUSHALL failed");
        }
        Ok(())
    }

    fn qtask_bench(&self, args: &[&str]) -> Result<serde_json_lite::Obj> {
        let mut cmd = self.bin("qtask-bench");
        cmd.args(args).args(["--broker", &self.url]);
        output_json(&mut cmd)
    }

    fn py(&self, queue: &str, backend: bool) -> Command {
        let mut cmd = Command::new(self.python);
        cmd.current_dir(self.root.join("integration-tests/python"))
            .env("PYAPP_BROKER", &self.url)
            .env("PYAPP_QUEUE", queue)
            .env("PYAPP_PREFETCH_MULTIPLIER", "4")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if backend {
            cmd.env("PYAPP_BACKEND", &self.url);
        } else {
            cmd.env_remove("PYAPP_BACKEND").env("PYAPP_IGNORE_RESULT", "1");
        }
        cmd
    }

    fn qtask_worker(&self, queue: &str, backend: bool, concurrency: usize) -> Result<Proc> {
        let mut cmd = self.bin("interop-worker");
        let c = concurrency.to_string();
        cmd.args(["--broker", &self.url, "--queues", queue, "--concurrency", &c, "--prefetch-multiplier", "4"]);
        if backend {
            cmd.args(["--backend", &self.url]);
        }
        cmd.env("QTASK_LOG", "info").env("QTASK_TASK_DEFAULT_QUEUE", queue);
        let mut p = Proc::spawn("interop-worker", cmd)?;
        p.wait_log("worker online")?;
        Ok(p)
    }

    fn celery_worker(&self, queue: &str, backend: bool) -> Result<Proc> {
        let mut cmd = self.py(queue, backend);
        cmd.args(["-m", "celery", "-A", "pyapp", "worker", "-P", "prefork", "-c", "2", "-Q", queue]).args([
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "info",
        ]);
        let mut p = Proc::spawn("celery worker", cmd)?;
        p.wait_log(" ready.")?;
        Ok(p)
    }

    fn enqueue(&self) -> Result<(f64, f64)> {
        let n = self.n.to_string();
        let q = get(&self.qtask_bench(&["enqueue", "--queue", "bench_enqueue", "--n", &n])?, "rate")?;
        self.flush()?;
        let c = get(&output_json(self.py("bench_enqueue", false).args(["bench.py", "enqueue", &n]))?, "rate")?;
        self.flush()?;
        Ok((q, c))
    }

    /// One producer measure of `qtask-bench` (`command`, N tasks), then FLUSHALL.
    fn produce(&self, command: &str, n: usize, extra: &[&str]) -> Result<f64> {
        let n = n.to_string();
        let mut args = vec![command, "--queue", "bench_produce", "--n", &n];
        args.extend_from_slice(extra);
        let rate = get(&self.qtask_bench(&args)?, "rate")?;
        self.flush()?;
        Ok(rate)
    }

    /// Drain rate of a qtask worker with `concurrency` slots, or (None) of Celery.
    fn drain(&self, results: bool, qtask_concurrency: Option<usize>) -> Result<f64> {
        let n = self.n.to_string();
        self.qtask_bench(&["prefill", "--queue", "bench_stage", "--n", &n])?;
        let worker = match qtask_concurrency {
            None => self.celery_worker("bench_drain", results)?,
            Some(c) => self.qtask_worker("bench_drain", results, c)?,
        };
        let mut args = vec!["drain-wait", "--from", "bench_stage", "--queue", "bench_drain", "--n", &n];
        if results {
            args.push("--results");
        }
        let rate = get(&self.qtask_bench(&args)?, "rate")?;
        worker.stop()?;
        self.flush()?;
        Ok(rate)
    }

    fn roundtrip(&self, celery: bool) -> Result<(f64, f64)> {
        let calls = self.calls.to_string();
        let out = if celery {
            let worker = self.celery_worker("bench_rt", true)?;
            let out = output_json(self.py("bench_rt", true).args(["bench.py", "roundtrip", &calls]))?;
            worker.stop()?;
            out
        } else {
            let worker = self.qtask_worker("bench_rt", true, 2)?;
            let out = self.qtask_bench(&["roundtrip", "--queue", "bench_rt", "--calls", &calls])?;
            worker.stop()?;
            out
        };
        self.flush()?;
        Ok((get(&out, "p50_ms")?, get(&out, "p99_ms")?))
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .trim_start_matches("v=")
                .to_string()
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Redis {redis}")
}

/// `cargo xtask bench redis [--n N] [--calls M]`.
pub(crate) fn redis(root: &Path, python: &Path, args: &[String]) -> Result<()> {
    let mut n = 5000;
    let mut calls = 500;
    let mut runs = 1usize;
    let mut producer = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => n = it.next().ok_or_else(|| anyhow!("--n needs a value"))?.parse()?,
            "--calls" => calls = it.next().ok_or_else(|| anyhow!("--calls needs a value"))?.parse()?,
            "--runs" => runs = it.next().ok_or_else(|| anyhow!("--runs needs a value"))?.parse()?,
            "--producer" => producer = true,
            other => bail!(
                "unknown option {other} (usage: cargo xtask bench redis [--n N] [--calls M] [--runs K] [--producer])"
            ),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "--bin",
        "interop-worker",
        "--bin",
        "qtask-bench",
    ]))?;
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut server = Proc::spawn("redis-server", cmd)?;
    server.wait_log("Ready to accept connections")?;
    let b = Bench { root, python, url: format!("redis://127.0.0.1:{port}/0"), port, n, calls };

    if producer {
        let run = |k: usize| {
            eprintln!("xtask: bench redis --producer: run {k} of {runs}");
            let celery = || {
                let n = n.to_string();
                let c = get(&output_json(b.py("bench_enqueue", false).args(["bench.py", "enqueue", &n]))?, "rate")?;
                b.flush()?;
                Ok(c)
            };
            producer_run(n, false, &|c, n, x| b.produce(c, n, x), &celery, &|celery| b.roundtrip(celery))
        };
        let out = (1..=runs).map(run).collect::<Result<Vec<_>>>();
        server.stop()?;
        let out = out?;
        println!("Redis producer benchmark: {}; N = {n}, round trips = {calls}", machine());
        println!("command: cargo xtask bench redis --producer --n {n} --calls {calls} --runs {runs}");
        println!("raw sequential ceiling: one LPUSH per round trip on a plain socket; figures: medians of {runs} runs");
        println!();
        print_producer(&out);
        return Ok(());
    }

    eprintln!("xtask: bench: enqueue ({n} tasks)");
    let (enq_q, enq_c) = b.enqueue()?;
    eprintln!("xtask: bench: drain with results ({n} tasks)");
    let (dr_q, dr_q16, dr_c) = (b.drain(true, Some(2))?, b.drain(true, Some(16))?, b.drain(true, None)?);
    eprintln!("xtask: bench: drain without results ({n} tasks)");
    let (dn_q, dn_q16, dn_c) = (b.drain(false, Some(2))?, b.drain(false, Some(16))?, b.drain(false, None)?);
    eprintln!("xtask: bench: round trips ({calls} calls)");
    let ((p50_q, p99_q), (p50_c, p99_c)) = (b.roundtrip(false)?, b.roundtrip(true)?);
    server.stop()?;

    println!("Redis benchmark: {}; N = {n}, round trips = {calls}", machine());
    println!("command: cargo xtask bench redis --n {n} --calls {calls}");
    println!(
        "qtask: release interop-worker --concurrency 2 (prefetch 8), and --concurrency 16 (prefetch 64) where marked; \
         Celery 5.7: celery worker -P prefork -c 2 (prefetch 8)"
    );
    println!();
    println!("| measure | qtask | Celery | qtask/Celery |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, q: f64, c: f64, unit: &str| {
        println!("| {name} | {q:.0} {unit} | {c:.0} {unit} | {:.1}× |", q / c);
    };
    row("enqueue, one producer", enq_q, enq_c, "tasks/s");
    row("end to end, results stored", dr_q, dr_c, "tasks/s");
    row("end to end, results stored, qtask -c 16", dr_q16, dr_c, "tasks/s");
    row("end to end, no results", dn_q, dn_c, "tasks/s");
    row("end to end, no results, qtask -c 16", dn_q16, dn_c, "tasks/s");
    println!("| round trip `delay().get()` p50 | {p50_q:.3} ms | {p50_c:.3} ms | {:.3} |", p50_q / p50_c);
    println!("| round trip `delay().get()` p99 | {p99_q:.3} ms | {p99_c:.3} ms | {:.3} |", p99_q / p99_c);
    Ok(())
}

// ---------------------------------------------------------------------------
// RabbitMQ

/// `cargo xtask bench amqp`: the same measures on RabbitMQ
/// (`QTASK_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`),
/// results in a private Redis (as most Celery + RabbitMQ deployments store
/// them). Each measure uses fresh queue names, deleted afterwards. A drain
/// fills the queue first, then starts the worker and times from the first
/// message taken until the queue is empty (with results: and N results are
/// stored).
struct AmqpBench<'a> {
    root: &'a Path,
    python: &'a Path,
    amqp: String,
    redis: String,
    redis_port: u16,
    n: usize,
    calls: usize,
    queues: Mutex<Vec<String>>,
}

impl AmqpBench<'_> {
    fn queue(&self, what: &str) -> String {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let q = format!("bench_amqp_{what}_{}_{nanos}", std::process::id());
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).push(q.clone());
        q
    }

    fn flush(&self) -> Result<()> {
        let st = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string(), "FLUSHALL"])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("redis-cli FLUSHALL failed");
        }
        Ok(())
    }

    fn qtask_bench(&self, args: &[&str]) -> Result<serde_json_lite::Obj> {
        let mut cmd = Command::new(release_bin(self.root, "qtask-bench"));
        cmd.args(args).args(["--broker", &self.amqp, "--backend", &self.redis]);
        output_json(&mut cmd)
    }

    fn py(&self, queue: &str, backend: bool) -> Command {
        let mut cmd = Command::new(self.python);
        cmd.current_dir(self.root.join("integration-tests/python"))
            .env("PYAPP_BROKER", &self.amqp)
            .env("PYAPP_QUEUE", queue)
            .env("PYAPP_PREFETCH_MULTIPLIER", "4")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if backend {
            cmd.env("PYAPP_BACKEND", &self.redis);
        } else {
            cmd.env_remove("PYAPP_BACKEND").env("PYAPP_IGNORE_RESULT", "1");
        }
        cmd
    }

    fn qtask_worker(&self, queue: &str, backend: bool, concurrency: usize) -> Result<Proc> {
        let mut cmd = Command::new(release_bin(self.root, "interop-worker"));
        let c = concurrency.to_string();
        cmd.args(["--broker", &self.amqp, "--queues", queue, "--concurrency", &c, "--prefetch-multiplier", "4"]);
        // A current-thread runtime: the delivery, the task and its ack never
        // wake another thread (measured 15-30 % faster than one thread per
        // core on this 2-core machine, where RabbitMQ needs the other core).
        cmd.args(["--threads", "1"]);
        if backend {
            cmd.args(["--backend", &self.redis]);
        }
        cmd.env("QTASK_LOG", "info").env("QTASK_TASK_DEFAULT_QUEUE", queue);
        let mut p = Proc::spawn("interop-worker", cmd)?;
        p.wait_log("worker online")?;
        Ok(p)
    }

    fn celery_worker(&self, queue: &str, backend: bool) -> Result<Proc> {
        let mut cmd = self.py(queue, backend);
        cmd.args(["-m", "celery", "-A", "pyapp", "worker", "-P", "prefork", "-c", "2", "-Q", queue]).args([
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "info",
        ]);
        let mut p = Proc::spawn("celery worker", cmd)?;
        p.wait_log(" ready.")?;
        Ok(p)
    }

    /// One producer measure of `qtask-bench` (`command`, N tasks) on a fresh queue.
    fn produce(&self, command: &str, n: usize, extra: &[&str]) -> Result<f64> {
        let (n, queue) = (n.to_string(), self.queue("produce"));
        let mut args = vec![command, "--queue", &queue, "--n", &n];
        args.extend_from_slice(extra);
        get(&self.qtask_bench(&args)?, "rate")
    }

    fn enqueue(&self) -> Result<(f64, f64)> {
        let n = self.n.to_string();
        let q = get(&self.qtask_bench(&["enqueue", "--queue", &self.queue("enqueue"), "--n", &n])?, "rate")?;
        let c = get(&output_json(self.py(&self.queue("enqueue"), false).args(["bench.py", "enqueue", &n]))?, "rate")?;
        Ok((q, c))
    }

    /// Drain rate of a qtask worker with `concurrency` slots, or (None) of Celery.
    fn drain(&self, results: bool, qtask_concurrency: Option<usize>) -> Result<f64> {
        let n = self.n.to_string();
        let queue = self.queue("drain");
        self.qtask_bench(&["prefill", "--queue", &queue, "--n", &n])?;
        let mut args = vec!["drain-wait".to_string(), "--queue".into(), queue.clone(), "--n".into(), n.clone()];
        if results {
            args.push("--results".into());
        }
        // The waiter runs beside the worker's start-up: it times from the
        // first message taken, so start-up is not counted.
        let mut waiter = Command::new(release_bin(self.root, "qtask-bench"));
        waiter.args(&args).args(["--broker", &self.amqp, "--backend", &self.redis]);
        let waiting = std::thread::spawn(move || output_json(&mut waiter));
        let worker = match qtask_concurrency {
            None => self.celery_worker(&queue, results)?,
            Some(c) => self.qtask_worker(&queue, results, c)?,
        };
        let out = waiting.join().map_err(|_| anyhow!("drain waiter panicked"))??;
        worker.stop()?;
        self.flush()?;
        get(&out, "rate")
    }

    /// The broker's ceiling at a prefetch window: a consumer that only acks.
    fn ack_only(&self, prefetch: usize) -> Result<f64> {
        let (n, p) = (self.n.to_string(), prefetch.to_string());
        let queue = self.queue("ackonly");
        self.qtask_bench(&["prefill", "--queue", &queue, "--n", &n])?;
        get(&self.qtask_bench(&["ack-only", "--queue", &queue, "--n", &n, "--prefetch", &p])?, "rate")
    }

    fn roundtrip(&self, celery: bool) -> Result<(f64, f64)> {
        let calls = self.calls.to_string();
        let queue = self.queue("rt");
        let out = if celery {
            let worker = self.celery_worker(&queue, true)?;
            let out = output_json(self.py(&queue, true).args(["bench.py", "roundtrip", &calls]))?;
            worker.stop()?;
            out
        } else {
            let worker = self.qtask_worker(&queue, true, 2)?;
            let out = self.qtask_bench(&["roundtrip", "--queue", &queue, "--calls", &calls])?;
            worker.stop()?;
            out
        };
        self.flush()?;
        Ok((get(&out, "p50_ms")?, get(&out, "p99_ms")?))
    }

    /// Delete this run's queues (best effort).
    fn cleanup(&self) {
        for q in self.queues.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &q])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `cargo xtask bench amqp [--n N] [--calls M] [--runs K]`: with several
/// runs the table gives each measure's median, and every run's ratio.
pub(crate) fn amqp(root: &Path, python: &Path, args: &[String]) -> Result<()> {
    let mut n = 5000;
    let mut calls = 500;
    let mut runs = 1usize;
    let mut producer = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => n = it.next().ok_or_else(|| anyhow!("--n needs a value"))?.parse()?,
            "--calls" => calls = it.next().ok_or_else(|| anyhow!("--calls needs a value"))?.parse()?,
            "--runs" => runs = it.next().ok_or_else(|| anyhow!("--runs needs a value"))?.parse()?,
            "--producer" => producer = true,
            other => bail!(
                "unknown option {other} (usage: cargo xtask bench amqp [--n N] [--calls M] [--runs K] [--producer])"
            ),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "--bin",
        "interop-worker",
        "--bin",
        "qtask-bench",
    ]))?;
    let amqp = std::env::var("QTASK_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut server = Proc::spawn("redis-server", cmd)?;
    server.wait_log("Ready to accept connections")?;
    let b = AmqpBench {
        root,
        python,
        amqp,
        redis: format!("redis://127.0.0.1:{port}/0"),
        redis_port: port,
        n,
        calls,
        queues: Mutex::new(Vec::new()),
    };
    if producer {
        let run = |k: usize| {
            eprintln!("xtask: bench amqp --producer: run {k} of {runs}");
            let celery = || {
                let n = n.to_string();
                get(&output_json(b.py(&b.queue("enqueue"), false).args(["bench.py", "enqueue", &n]))?, "rate")
            };
            producer_run(n, true, &|c, n, x| b.produce(c, n, x), &celery, &|celery| b.roundtrip(celery))
        };
        let out = (1..=runs).map(run).collect::<Result<Vec<_>>>();
        b.cleanup();
        server.stop()?;
        let out = out?;
        println!(
            "RabbitMQ producer benchmark: {}, RabbitMQ {}; N = {n}, round trips = {calls}",
            machine(),
            rabbit_version()
        );
        println!("command: cargo xtask bench amqp --producer --n {n} --calls {calls} --runs {runs}");
        println!(
            "raw sequential ceiling: one persistent publish awaiting its confirm (lapin); qtask publishes with \
             pipelined confirms and every rate includes the final flush; Celery publishes without confirms; \
             figures: medians of {runs} runs"
        );
        println!();
        print_producer(&out);
        return Ok(());
    }
    // One run: (qtask, Celery) per row, in the table's order.
    let run = |k: usize| -> Result<Vec<(f64, f64)>> {
        eprintln!("xtask: bench amqp: run {k} of {runs}: enqueue ({n} tasks)");
        let (enq_q, enq_c) = b.enqueue()?;
        eprintln!("xtask: bench amqp: run {k} of {runs}: drain with results ({n} tasks)");
        let (dr_q, dr_q16, dr_c) = (b.drain(true, Some(2))?, b.drain(true, Some(16))?, b.drain(true, None)?);
        eprintln!("xtask: bench amqp: run {k} of {runs}: drain without results ({n} tasks)");
        let (dn_q, dn_q16, dn_c) = (b.drain(false, Some(2))?, b.drain(false, Some(16))?, b.drain(false, None)?);
        eprintln!("xtask: bench amqp: run {k} of {runs}: consume and ack only ({n} messages)");
        let (ack8, ack64) = (b.ack_only(8)?, b.ack_only(64)?);
        eprintln!("xtask: bench amqp: run {k} of {runs}: round trips ({calls} calls)");
        let ((p50_q, p99_q), (p50_c, p99_c)) = (b.roundtrip(false)?, b.roundtrip(true)?);
        Ok(vec![
            (enq_q, enq_c),
            (dr_q, dr_c),
            (dr_q16, dr_c),
            (dn_q, dn_c),
            (dn_q16, dn_c),
            (ack8, dn_c),
            (ack64, dn_c),
            (p50_q, p50_c),
            (p99_q, p99_c),
        ])
    };
    let out = (1..=runs).map(run).collect::<Result<Vec<_>>>();
    b.cleanup();
    server.stop()?;
    let out = out?;
    let rabbit = rabbit_version();

    println!("RabbitMQ benchmark: {}, RabbitMQ {rabbit}; N = {n}, round trips = {calls}", machine());
    println!("command: cargo xtask bench amqp --n {n} --calls {calls} --runs {runs}");
    println!(
        "qtask: release interop-worker --threads 1 --concurrency 2 (prefetch 8), and --concurrency 16 (prefetch 64) \
         where marked; Celery 5.7: celery worker -P prefork -c 2 (prefetch 8); results in a private Redis"
    );
    if runs > 1 {
        println!("figures: the median of {runs} runs (each run measures qtask and Celery one after the other)");
    }
    println!();
    println!("| measure | qtask | Celery | qtask/Celery | ratio in each run |");
    println!("|---|---:|---:|---:|---|");
    let rows = [
        ("enqueue, one producer", "tasks/s"),
        ("end to end, results stored", "tasks/s"),
        ("end to end, results stored, qtask -c 16", "tasks/s"),
        ("end to end, no results", "tasks/s"),
        ("end to end, no results, qtask -c 16", "tasks/s"),
        ("broker ceiling: consume and ack only, prefetch 8 (vs Celery without results)", "msgs/s"),
        ("broker ceiling: consume and ack only, prefetch 64 (vs Celery without results)", "msgs/s"),
        ("round trip `delay().get()` p50", "ms"),
        ("round trip `delay().get()` p99", "ms"),
    ];
    for (i, (name, unit)) in rows.iter().enumerate() {
        let q = median(out.iter().map(|r| r[i].0).collect());
        let c = median(out.iter().map(|r| r[i].1).collect());
        let each: Vec<String> = out.iter().map(|r| format!("{:.2}", r[i].0 / r[i].1)).collect();
        if *unit == "ms" {
            println!("| {name} | {q:.3} ms | {c:.3} ms | {:.3} | {} |", q / c, each.join(", "));
        } else {
            println!("| {name} | {q:.0} {unit} | {c:.0} {unit} | {:.1}× | {} |", q / c, each.join(", "));
        }
    }
    Ok(())
}

/// The rows of `--producer`: (measure, unit, what the qtask figure is set against).
const PRODUCER_ROWS: [(&str, &str, &str); 9] = [
    ("enqueue, one producer, sequential", "tasks/s", "Celery's apply_async loop"),
    ("enqueue, one producer, sequential", "tasks/s", "the raw sequential ceiling"),
    ("enqueue, sequential, each publish awaiting its confirm", "tasks/s", "Celery's apply_async loop"),
    ("raw sequential ceiling", "tasks/s", "Celery's apply_async loop"),
    ("enqueue, 10,000 delay futures in flight", "tasks/s", "Celery's apply_async loop"),
    ("App::send_many of 1,000", "tasks/s", "Celery's apply_async loop"),
    ("a group of 1,000", "tasks/s", "Celery's apply_async loop"),
    ("round trip `delay().get()` p50", "ms", "Celery"),
    ("round trip `delay().get()` p99", "ms", "Celery"),
];

/// Runs `qtask-bench COMMAND` for N tasks with extra arguments: its rate.
type Produce<'a> = dyn Fn(&str, usize, &[&str]) -> Result<f64> + 'a;

/// One run of the producer measures, (qtask, reference) per row of
/// [`PRODUCER_ROWS`]: `produce(command, n, extra args)` runs `qtask-bench`,
/// `celery_enqueue` Celery's loop, `roundtrip(celery)` the round trips.
fn producer_run(
    n: usize,
    amqp: bool,
    produce: &Produce<'_>,
    celery_enqueue: &dyn Fn() -> Result<f64>,
    roundtrip: &dyn Fn(bool) -> Result<(f64, f64)>,
) -> Result<Vec<(f64, f64)>> {
    let raw = produce("raw-ceiling", n, &[])?;
    let seq = produce("enqueue", n, &[])?;
    let celery = celery_enqueue()?;
    // Only RabbitMQ has a confirm mode; on Redis the row repeats `enqueue`.
    let each = if amqp { produce("enqueue", n, &["--confirm", "each"])? } else { produce("enqueue", n, &[])? };
    let concurrent = produce("enqueue-concurrent", 10_000, &[])?;
    let many = produce("send-many", 1000, &[])?;
    let group = produce("group", 1000, &[])?;
    let ((p50_q, p99_q), (p50_c, p99_c)) = (roundtrip(false)?, roundtrip(true)?);
    Ok(vec![
        (seq, celery),
        (seq, raw),
        (each, celery),
        (raw, celery),
        (concurrent, celery),
        (many, celery),
        (group, celery),
        (p50_q, p50_c),
        (p99_q, p99_c),
    ])
}

/// Print the `--producer` table: medians of the runs and each run's ratio.
fn print_producer(out: &[Vec<(f64, f64)>]) {
    println!("| measure | qtask | against | reference | ratio | ratio in each run |");
    println!("|---|---:|---|---:|---:|---|");
    for (i, (name, unit, against)) in PRODUCER_ROWS.iter().enumerate() {
        let q = median(out.iter().map(|r| r[i].0).collect());
        let c = median(out.iter().map(|r| r[i].1).collect());
        let each: Vec<String> = out.iter().map(|r| format!("{:.2}", r[i].0 / r[i].1)).collect();
        if *unit == "ms" {
            println!("| {name} | {q:.3} ms | {against} | {c:.3} ms | {:.2} | {} |", q / c, each.join(", "));
        } else {
            println!("| {name} | {q:.0} {unit} | {against} | {c:.0} {unit} | {:.2}× | {} |", q / c, each.join(", "));
        }
    }
}

/// A release binary of the workspace, in `CARGO_TARGET_DIR` when set (as
/// `cargo build` put it there), else in `<root>/target`.
pub(crate) fn release_bin(root: &Path, name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    target.join("release").join(name)
}

/// `rabbitmqctl version` (empty when it cannot be run).
fn rabbit_version() -> String {
    Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n.is_multiple_of(2) => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}
