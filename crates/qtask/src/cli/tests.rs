//! Parsing: Celery's flags, the `interop-worker` flags, the default command.

use std::time::Duration;

use super::*;

fn with_tasks() -> Cli {
    Cli::new("proj").tasks(|_| {})
}

fn parse(cli: &Cli, argv: &[&str]) -> Result<Args, String> {
    cli.parse(std::iter::once("proj").chain(argv.iter().copied())).map_err(|e| e.to_string())
}

fn worker(args: Args) -> WorkerArgs {
    match args.command {
        Command::Worker(w) => w,
        other => panic!("not a worker command: {other:?}"),
    }
}

#[test]
fn celery_worker_flags() {
    let a = parse(
        &with_tasks(),
        &[
            "-b",
            "redis://h",
            "worker",
            "-Q",
            "a,b",
            "-c",
            "8",
            "-n",
            "w1@%h",
            "--prefetch-multiplier",
            "2",
            "--acks-late",
            "-l",
            "INFO",
            "-P",
            "threads",
            "--without-mingle",
            "--without-gossip",
        ],
    )
    .unwrap();
    assert_eq!(a.global.broker.as_deref(), Some("redis://h"));
    let w = worker(a);
    assert_eq!(w.queues, ["a", "b"]);
    assert_eq!((w.concurrency, w.slots()), (Some(8), Some(8)));
    assert_eq!(w.hostname.as_deref(), Some("w1@%h"));
    assert_eq!(w.prefetch_multiplier, Some(2));
    assert!(w.acks_late && !w.task_events && !w.without_heartbeat);
    assert_eq!(w.loglevel, Some(LogLevel::Info));
    assert_eq!(w.pool, Some(Pool::Threads));

    let w = worker(parse(&with_tasks(), &["worker", "-E", "--without-heartbeat", "-l", "warning"]).unwrap());
    assert!(w.task_events && w.without_heartbeat);
    assert_eq!(w.loglevel.map(LogLevel::filter), Some("warn"));
}

#[test]
fn pool_and_autoscale_decide_the_slots() {
    let w = worker(parse(&with_tasks(), &["worker", "--pool", "solo"]).unwrap());
    assert_eq!(w.slots(), Some(1));
    let w = worker(parse(&with_tasks(), &["worker", "--autoscale", "10,3", "-c", "2"]).unwrap());
    assert_eq!((w.autoscale, w.slots()), (Some((10, 3)), Some(10)));
    let w = worker(parse(&with_tasks(), &["worker", "--autoscale=6"]).unwrap());
    assert_eq!(w.autoscale, Some((6, 0)));
    for bad in
        [&["worker", "--autoscale", "3,10"][..], &["worker", "--autoscale", "x"], &["worker", "--autoscale", "0"]]
    {
        let e = parse(&with_tasks(), bad).unwrap_err();
        assert!(e.contains("--autoscale"), "{e}");
    }
    let e = parse(&with_tasks(), &["worker", "-P", "solo", "-c", "4"]).unwrap_err();
    assert!(e.contains("--pool solo runs one task at a time"), "{e}");
    let e = parse(&with_tasks(), &["worker", "-P", "prefork"]).unwrap_err();
    assert!(e.contains("prefork") && e.contains("solo"), "{e}");
}

/// `interop-worker`'s command line is a stable interface: every flag keeps
/// its spelling and meaning, and no command name is needed.
#[test]
fn interop_worker_flags_run_the_default_worker() {
    let cli = Cli::new("interop-worker").tasks(|_| {}).default_command("worker").urls_from_flags_only(true);
    let a = parse(
        &cli,
        &[
            "--broker",
            "amqp://h",
            "--backend",
            "redis://r",
            "--queues",
            "q1,q2",
            "--concurrency",
            "16",
            "--prefetch-multiplier",
            "4",
            "--acks-late",
            "--threads",
            "1",
        ],
    )
    .unwrap();
    assert_eq!((a.global.broker.as_deref(), a.global.backend.as_deref()), (Some("amqp://h"), Some("redis://r")));
    let w = worker(a);
    assert_eq!(w.queues, ["q1", "q2"]);
    assert_eq!((w.concurrency, w.prefetch_multiplier, w.acks_late, w.threads), (Some(16), Some(4), true, Some(1)));

    // `=` forms and short flags, as before.
    let w = worker(parse(&cli, &["--broker=amqp://h", "-Q", "a", "-c", "2", "--threads=4"]).unwrap());
    assert_eq!((w.queues, w.concurrency, w.threads), (vec!["a".to_string()], Some(2), Some(4)));
    // The worker command named explicitly, and Celery's worker flags too.
    let w = worker(parse(&cli, &["worker", "--broker", "amqp://h", "-E", "-n", "x@%h"]).unwrap());
    assert!(w.task_events);
    assert_eq!(w.threads, None);

    let e = parse(&cli, &["--broker", "amqp://h", "--threads", "0"]).unwrap_err();
    assert!(e.contains("--threads") && e.contains("must be at least 1"), "{e}");
    let e = parse(&cli, &["--broker", "amqp://h", "--threads", "two"]).unwrap_err();
    assert!(e.contains("--threads") && e.contains("must be a whole number"), "{e}");
    let e = parse(&cli, &["--broker", "amqp://h", "--concurrency", "0"]).unwrap_err();
    assert!(e.contains("--concurrency") && e.contains("must be at least 1"), "{e}");
    let e = parse(&cli, &["--queues", "a"]).unwrap_err();
    assert!(e.contains("--broker URL is required"), "{e}");
    let e = parse(&cli, &["--broker", "amqp://h", "--bogus"]).unwrap_err();
    assert!(e.contains("--bogus"), "{e}");
}

#[test]
fn urls_from_flags_only_ignore_the_environment_settings() {
    let cli = Cli::new("interop-worker").tasks(|_| {}).default_command("worker").urls_from_flags_only(true);
    let args = parse(&cli, &["--broker", "memory://"]).unwrap();
    // Whatever QTASK_RESULT_BACKEND says, no --backend means no results.
    let cfg = cli.config(&args).unwrap();
    assert_eq!((cfg.broker_url.as_deref(), cfg.result_backend.as_deref()), (Some("memory://"), None));
}

#[test]
fn client_commands_keep_their_flags() {
    let cli = Cli::new("qtask");
    let a = parse(
        &cli,
        &["--broker", "redis://h", "--backend", "redis://r", "call", "tasks.add", "--args", "[2, 3]", "--queue", "q"],
    )
    .unwrap();
    let Command::Call(c) = a.command else { panic!("not call") };
    assert_eq!((c.name.as_str(), c.args.as_deref(), c.queue.as_deref()), ("tasks.add", Some("[2, 3]"), Some("q")));
    let a = parse(&cli, &["call", "t", "-k", "{}", "--countdown", "0.2", "--wait", "30", "-b", "redis://h"]).unwrap();
    assert_eq!(a.global.broker.as_deref(), Some("redis://h"), "a global flag after the command");
    let Command::Call(c) = a.command else { panic!("not call") };
    assert_eq!((c.countdown, c.wait), (Some(Duration::from_millis(200)), Some(Duration::from_secs(30))));
    let e = parse(&cli, &["call", "t", "--countdown=-1"]).unwrap_err();
    assert!(e.contains("non-negative number of seconds"), "{e}");

    let Command::Purge(p) = parse(&cli, &["purge", "--queue", "q"]).unwrap().command else { panic!("not purge") };
    assert_eq!((p.queues, p.force), (vec!["q".to_string()], false));
    let Command::Purge(p) = parse(&cli, &["purge", "-f", "-X", "a,b"]).unwrap().command else { panic!("not purge") };
    assert!(p.force && p.queues.is_empty());
    assert_eq!(p.exclude_queues, ["a", "b"]);
    let Command::Result(r) = parse(&cli, &["result", "abc"]).unwrap().command else { panic!("not result") };
    assert_eq!(r.id, "abc");
    let Command::Events(e) = parse(&cli, &["events", "--dump"]).unwrap().command else { panic!("not events") };
    assert!(e.dump);
}

#[test]
fn without_tasks_there_is_no_worker_command_to_see() {
    let help = Cli::new("qtask").command().render_help().to_string();
    assert!(!help.contains("\n  worker "), "{help}");
    assert!(help.contains("call") && help.contains("events"), "{help}");
    let help = with_tasks().command().render_help().to_string();
    assert!(help.contains("\n  worker "), "{help}");
    // Without a default command, a missing command is a usage error.
    assert!(parse(&Cli::new("qtask"), &["--broker", "memory://"]).is_err());
}

#[test]
fn beat_flags_and_the_beat_command() {
    let cli = Cli::new("interop-worker").tasks(|_| {}).default_command("worker").urls_from_flags_only(true);
    let w = worker(parse(&cli, &["--broker", "redis://h", "-B", "--schedule", "beat.toml"]).unwrap());
    assert!(w.beat);
    assert_eq!(w.schedule.as_deref(), Some(std::path::Path::new("beat.toml")));
    let w = worker(parse(&cli, &["--broker", "redis://h", "--beat"]).unwrap());
    assert!(w.beat && w.schedule.is_none());
    let e = parse(&cli, &["--broker", "redis://h", "--schedule", "beat.toml"]).unwrap_err();
    assert!(e.contains("--beat"), "--schedule without -B: {e}");
    let a = parse(
        &Cli::new("qtask"),
        &["--broker", "redis://h", "beat", "--schedule", "s.toml", "-n", "b@h", "-l", "debug"],
    )
    .unwrap();
    match a.command {
        Command::Beat(b) => {
            assert_eq!(b.schedule.as_deref(), Some(std::path::Path::new("s.toml")));
            assert_eq!((b.hostname.as_deref(), b.loglevel), (Some("b@h"), Some(LogLevel::Debug)));
            assert!(b.scheduler.is_none() && b.db.is_none() && b.lock.is_none());
        }
        other => panic!("{other:?}"),
    }
    let a = parse(
        &Cli::new("qtask"),
        &["beat", "--scheduler", "django", "--db", "sqlite://dj.sqlite3", "--lock", "redis://h/0?prefix=p"],
    )
    .unwrap();
    match a.command {
        Command::Beat(b) => {
            assert_eq!(b.scheduler.as_deref(), Some("django"));
            assert_eq!(b.db.as_deref(), Some("sqlite://dj.sqlite3"));
            assert_eq!(b.lock.as_deref(), Some("redis://h/0?prefix=p"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn operations_flags() {
    let a = parse(&with_tasks(), &["worker", "--metrics-addr", "0.0.0.0:9808", "--log-format", "json"]).unwrap();
    assert_eq!(a.global.log_format, LogFormat::Json);
    assert_eq!(worker(a).metrics_addr.as_deref(), Some("0.0.0.0:9808"));
    // Off by default, text logs.
    let a = parse(&with_tasks(), &["worker"]).unwrap();
    assert_eq!(a.global.log_format, LogFormat::Text);
    assert_eq!(worker(a).metrics_addr, None);
    // A global flag: before the command too, and for beat.
    let a = parse(&with_tasks(), &["--log-format", "json", "beat"]).unwrap();
    assert_eq!(a.global.log_format, LogFormat::Json);
    let e = parse(&with_tasks(), &["worker", "--log-format", "yaml"]).unwrap_err();
    assert!(e.contains("yaml"), "{e}");
}

/// A port already taken is a start-up error naming the flag, not a worker
/// running without its endpoints.
#[test]
fn metrics_addr_taken_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("qtask-cli-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broker = format!("sqlite://{}", dir.join("q.db").display());
    let code = with_tasks().urls_from_flags_only(true).run_from([
        "proj",
        "worker",
        "--broker",
        &broker,
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(code, std::process::ExitCode::from(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "monitor")]
#[test]
fn monitor_flags() {
    let a = parse(
        &Cli::new("qtask"),
        &[
            "monitor",
            "--broker",
            "redis://h",
            "--backend",
            "redis://h/1",
            "--address",
            "0.0.0.0",
            "--port",
            "6000",
            "--basic-auth",
            "a:b,c:d",
            "--basic-auth",
            "e:f",
            "--db",
            "/tmp/h.db",
            "--url-prefix",
            "/mon",
            "--read-only",
        ],
    )
    .unwrap();
    assert_eq!(a.global.broker.as_deref(), Some("redis://h"));
    assert_eq!(a.global.backend.as_deref(), Some("redis://h/1"));
    let Command::Monitor(m) = a.command else { panic!("not monitor") };
    assert_eq!((m.address.to_string().as_str(), m.port), ("0.0.0.0", 6000));
    assert_eq!(m.basic_auth, ["a:b,c:d", "e:f"]);
    assert_eq!((m.db.as_str(), m.url_prefix.as_str(), m.read_only), ("/tmp/h.db", "/mon", true));
    let d = parse(&Cli::new("qtask"), &["monitor"]).unwrap();
    let Command::Monitor(d) = d.command else { panic!("not monitor") };
    assert_eq!((d.address.to_string().as_str(), d.port, d.db.as_str()), ("127.0.0.1", 5555, "qtask-monitor.db"));
    assert!(!d.read_only && !d.unsafe_no_auth && d.basic_auth.is_empty());
}
