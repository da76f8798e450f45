//! `cargo xtask bench postgres|sqlite [--n N] [--calls M]`: qtask's SQL
//! broker and result backend beside Python Celery on the same database
//! engine, in one run.
//!
//! Celery 5.7 has no SQL broker of its own: the comparison uses kombu's
//! SQLAlchemy transport (`sqla+postgresql+psycopg2://`, `sqla+sqlite:///`)
//! with Celery's database result backend (`db+…`). Its idle consumer and
//! `AsyncResult.get()` poll; they run with a 10 ms interval (`--poll`),
//! instead of the defaults (1 s and 0.5 s) that would make the round trip
//! a measure of the polling interval.
//!
//! * enqueue: one producer, sequential `apply_async` of `tasks.noop`, N times;
//! * drain: N `tasks.noop` pre-filled on a staging queue, moved onto the
//!   worker's queue with one `UPDATE` (for qtask followed by one more
//!   publish, whose `NOTIFY` wakes the idle worker as any publish does: a
//!   bare `UPDATE` wakes nobody and the worker would sleep its idle poll),
//!   time until the queue is empty and, with results, all SUCCESS rows are
//!   in `celery_taskmeta`; with results and without;
//! * round trip: M sequential `delay().get()`, p50 and p99.
//!
//! Every measure gets a fresh database (PostgreSQL: a new database, dropped
//! at the end; SQLite: a new file in a temporary directory). qtask runs the
//! release `interop-worker --concurrency 2` (prefetch multiplier 4) and
//! `qtask-sql-bench`; Celery runs `celery worker -P prefork -c 2` (prefetch
//! multiplier 4) from the venv.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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

/// The number after `"key":` in a one-line JSON object of numbers.
fn number(line: &str, key: &str) -> Result<f64> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat).ok_or_else(|| anyhow!("no {key} in {line}"))? + pat.len();
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().with_context(|| format!("{key} in {line}"))
}

fn output_line(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().rev().find(|l| l.starts_with('{')).map(str::to_owned).ok_or_else(|| anyhow!("{cmd:?} printed {text}"))
}

/// The database engine under test.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Postgres,
    Sqlite,
}

/// One fresh database: its URLs for qtask, kombu and Celery's backend.
struct Database {
    qtask: String,
    kombu: String,
    celery_backend: String,
}

struct Bench<'a> {
    root: &'a Path,
    python: &'a Path,
    engine: Engine,
    /// PostgreSQL server URL without a database.
    pg_server: String,
    /// Where the SQLite files go.
    dir: PathBuf,
    n: usize,
    calls: usize,
    poll: f64,
    created: Mutex<Vec<String>>,
    counter: Mutex<u32>,
}

impl Bench<'_> {
    fn tool(&self) -> Command {
        Command::new(crate::bench::release_bin(self.root, "qtask-sql-bench"))
    }

    fn fresh(&self) -> Result<Database> {
        let n = {
            let mut c = self.counter.lock().unwrap_or_else(|p| p.into_inner());
            *c += 1;
            *c
        };
        match self.engine {
            Engine::Postgres => {
                let name = format!("qbench_{}_{n}", std::process::id());
                output_line(self.tool().args([
                    "createdb",
                    "--db",
                    &format!("{}/postgres", self.pg_server),
                    "--name",
                    &name,
                ]))?;
                self.created.lock().unwrap_or_else(|p| p.into_inner()).push(name.clone());
                let rest = self.pg_server.trim_start_matches("postgres://");
                Ok(Database {
                    qtask: format!("{}/{name}", self.pg_server),
                    kombu: format!("sqla+postgresql+psycopg2://{rest}/{name}"),
                    celery_backend: format!("db+postgresql+psycopg2://{rest}/{name}"),
                })
            }
            Engine::Sqlite => {
                let path = self.dir.join(format!("bench{n}.db"));
                let p = path.display();
                Ok(Database {
                    qtask: format!("sqlite://{p}"),
                    kombu: format!("sqla+sqlite:///{p}"),
                    celery_backend: format!("db+sqlite:///{p}"),
                })
            }
        }
    }

    fn cleanup(&self) {
        for name in self.created.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = output_line(self.tool().args([
                "dropdb",
                "--db",
                &format!("{}/postgres", self.pg_server),
                "--name",
                &name,
            ]));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn py(&self, db: &Database, queue: &str, results: bool) -> Command {
        let mut cmd = Command::new(self.python);
        cmd.current_dir(self.root.join("integration-tests/python"))
            .env("SQLBENCH_BROKER", &db.kombu)
            .env("SQLBENCH_QUEUE", queue)
            .env("SQLBENCH_POLL", self.poll.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if results {
            cmd.env("SQLBENCH_BACKEND", &db.celery_backend);
        } else {
            cmd.env_remove("SQLBENCH_BACKEND");
        }
        cmd
    }

    fn qtask_worker(&self, db: &Database, queue: &str, results: bool) -> Result<Proc> {
        let mut cmd = Command::new(crate::bench::release_bin(self.root, "interop-worker"));
        cmd.args(["--broker", &db.qtask, "--queues", queue, "--concurrency", "2", "--prefetch-multiplier", "4"]);
        if results {
            cmd.args(["--backend", &db.qtask]);
        }
        cmd.env("QTASK_LOG", "info").env("QTASK_TASK_DEFAULT_QUEUE", queue);
        let mut p = Proc::spawn("interop-worker", cmd)?;
        p.wait_log("worker online")?;
        Ok(p)
    }

    fn celery_worker(&self, db: &Database, queue: &str, results: bool) -> Result<Proc> {
        let mut cmd = self.py(db, queue, results);
        cmd.args(["-m", "celery", "-A", "sqlbench", "worker", "-P", "prefork", "-c", "2", "-Q", queue]).args([
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

    fn enqueue(&self, celery: bool) -> Result<f64> {
        let db = self.fresh()?;
        let n = self.n.to_string();
        let line = if celery {
            output_line(self.py(&db, "bench_enqueue", false).args(["sqlbench.py", "enqueue", &n]))?
        } else {
            output_line(self.tool().args(["enqueue", "--broker", &db.qtask, "--queue", "bench_enqueue", "--n", &n]))?
        };
        number(&line, "rate")
    }

    fn drain(&self, results: bool, celery: bool) -> Result<f64> {
        let db = self.fresh()?;
        let n = self.n.to_string();
        // The staging queue is filled while no worker runs (by a producer
        // configured like the worker: Celery's messages say ignore_result
        // when the producer has no backend).
        if celery {
            output_line(self.py(&db, "bench_stage", results).args(["sqlbench.py", "enqueue", &n]))?;
        } else {
            output_line(self.tool().args(["prefill", "--broker", &db.qtask, "--queue", "bench_stage", "--n", &n]))?;
        }
        let worker = if celery {
            self.celery_worker(&db, "bench_drain", results)?
        } else {
            self.qtask_worker(&db, "bench_drain", results)?
        };
        // Celery's producer sent one more (outside its timing) to create the
        // tables; for qtask, qtask-sql-bench publishes one more right after
        // the move, whose NOTIFY wakes the idle worker as a real publish does.
        let staged = (self.n + 1).to_string();
        let layout = if celery { "kombu" } else { "qtask" };
        // qtask's URL of the database is also what qtask-sql-bench reads kombu's tables with.
        let mut args = vec![
            "drain-wait",
            "--db",
            &db.qtask,
            "--layout",
            layout,
            "--from",
            "bench_stage",
            "--queue",
            "bench_drain",
        ];
        args.extend(["--n", &staged]);
        if results {
            args.push("--results");
        }
        if !celery {
            args.extend(["--broker", &db.qtask]);
        }
        let line = output_line(self.tool().args(&args))?;
        worker.stop()?;
        number(&line, "rate")
    }

    fn roundtrip(&self, celery: bool) -> Result<(f64, f64)> {
        let db = self.fresh()?;
        let calls = self.calls.to_string();
        let line = if celery {
            let worker = self.celery_worker(&db, "bench_rt", true)?;
            let out = output_line(self.py(&db, "bench_rt", true).args(["sqlbench.py", "roundtrip", &calls]));
            worker.stop()?;
            out?
        } else {
            let worker = self.qtask_worker(&db, "bench_rt", true)?;
            let out = output_line(self.tool().args([
                "roundtrip",
                "--broker",
                &db.qtask,
                "--queue",
                "bench_rt",
                "--calls",
                &calls,
            ]));
            worker.stop()?;
            out?
        };
        Ok((number(&line, "p50_ms")?, number(&line, "p99_ms")?))
    }
}

fn machine(engine: Engine) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let db = match engine {
        Engine::Postgres => Command::new("psql")
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                format!("PostgreSQL {}", String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("?"))
            })
            .unwrap_or_else(|| "PostgreSQL".into()),
        Engine::Sqlite => {
            "SQLite (qtask: bundled with sqlx, WAL; Celery: Python's sqlite3 through SQLAlchemy, rollback journal)"
                .into()
        }
    };
    format!("{cores} cores ({cpu}), {db}")
}

/// `cargo xtask bench postgres|sqlite [--n N] [--calls M] [--poll SECS]`.
pub(crate) fn sql(root: &Path, python: &Path, engine_name: &str, args: &[String]) -> Result<()> {
    let engine = match engine_name {
        "postgres" => Engine::Postgres,
        "sqlite" => Engine::Sqlite,
        other => bail!("unknown engine {other}"),
    };
    let (mut n, mut calls, mut poll) = (2000, 200, 0.01);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--n" => n = value()?.parse()?,
            "--calls" => calls = value()?.parse()?,
            "--poll" => poll = value()?.parse()?,
            other => bail!(
                "unknown option {other} (usage: cargo xtask bench {engine_name} [--n N] [--calls M] [--poll SECS])"
            ),
        }
    }
    crate::run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "--bin",
        "interop-worker",
        "--bin",
        "qtask-sql-bench",
    ]))?;
    let pg_server =
        std::env::var("QTASK_BENCH_PG_SERVER").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let dir = std::env::temp_dir().join(format!("qtask-bench-{engine_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let b = Bench {
        root,
        python,
        engine,
        pg_server: pg_server.trim_end_matches('/').to_string(),
        dir,
        n,
        calls,
        poll,
        created: Mutex::new(Vec::new()),
        counter: Mutex::new(0),
    };
    let result = (|| -> Result<()> {
        eprintln!("xtask: bench {engine_name}: enqueue ({n} tasks)");
        let (enq_q, enq_c) = (b.enqueue(false)?, b.enqueue(true)?);
        eprintln!("xtask: enqueue: qtask {enq_q:.0}/s, Celery {enq_c:.0}/s");
        eprintln!("xtask: bench {engine_name}: drain with results ({n} tasks)");
        let (dr_q, dr_c) = (b.drain(true, false)?, b.drain(true, true)?);
        eprintln!("xtask: drain with results: qtask {dr_q:.0}/s, Celery {dr_c:.0}/s");
        eprintln!("xtask: bench {engine_name}: drain without results ({n} tasks)");
        let (dn_q, dn_c) = (b.drain(false, false)?, b.drain(false, true)?);
        eprintln!("xtask: drain without results: qtask {dn_q:.0}/s, Celery {dn_c:.0}/s");
        eprintln!("xtask: bench {engine_name}: round trips ({calls} calls)");
        let ((p50_q, p99_q), (p50_c, p99_c)) = (b.roundtrip(false)?, b.roundtrip(true)?);

        let label = if engine == Engine::Postgres { "PostgreSQL" } else { "SQLite" };
        println!("{label} benchmark: {}; N = {n}, round trips = {calls}", machine(engine));
        println!("command: cargo xtask bench {engine_name} --n {n} --calls {calls} --poll {poll}");
        println!(
            "qtask: interop-worker --concurrency 2 (prefetch 8), release; Celery 5.7 + kombu SQLAlchemy transport: \
             -P prefork -c 2 (prefetch 8), polling every {poll} s"
        );
        println!();
        println!("| measure | qtask | Celery (kombu sqla) | qtask/Celery |");
        println!("|---|---:|---:|---:|");
        let row = |name: &str, q: f64, c: f64| println!("| {name} | {q:.0} tasks/s | {c:.0} tasks/s | {:.1}× |", q / c);
        row("enqueue, one producer", enq_q, enq_c);
        row("end to end, results stored", dr_q, dr_c);
        row("end to end, no results", dn_q, dn_c);
        println!("| round trip `delay().get()` p50 | {p50_q:.2} ms | {p50_c:.2} ms | {:.3} |", p50_q / p50_c);
        println!("| round trip `delay().get()` p99 | {p99_q:.2} ms | {p99_c:.2} ms | {:.3} |", p99_q / p99_c);
        Ok(())
    })();
    b.cleanup();
    result
}
