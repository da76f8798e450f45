//! qmonitor on a real Redis, watching a qtask worker and a Python Celery
//! worker (`-E`) run tasks: Flower's API lists both workers and their
//! tasks with their states, a restart on the same history keeps every
//! task, and in headless chromium the pages show it all, search by an
//! argument, revoke a running task on the worker, and update live.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use fantoccini::Locator;
use integration_tests::browser::Browser;
use integration_tests::control::http_get;
use integration_tests::interop::rust_app;
use integration_tests::{
    interop_worker_bin, redis_url, spawn_interop_worker, spawn_python_worker_with, unique, wait_for, Proc, PyEnv,
    WorkerOpts,
};
use qtask::monitor::{Monitor, Retention, WebConfig};
use qtask::{App, ContentType, SendOptions};
use serde_json::{json, Value};

/// A monitor on its own SQLite file, ingesting from `app`'s broker, served
/// on a free port.
struct Running {
    monitor: Arc<Monitor>,
    port: u16,
    ingest: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(app: &App, db: &str) -> Running {
        let monitor = Monitor::open(db, Retention::default()).await.unwrap();
        let m = monitor.clone();
        let broker = app.broker().clone();
        let ingest = tokio::spawn(async move {
            if let Err(e) = m.ingest(broker).await {
                panic!("ingest failed: {e}");
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = WebConfig { broker: app.broker().describe(), ..WebConfig::default() };
        let router = qtask::monitor::router(monitor.clone(), Some(app.clone()), cfg);
        let server = tokio::spawn(async move {
            let _ = qtask::monitor::serve(listener, router, std::future::pending()).await;
        });
        Running { monitor, port, ingest, server }
    }

    fn stop(self) {
        self.ingest.abort();
        self.server.abort();
    }
}

struct Setup {
    app: App,
    rs_queue: String,
    py_queue: String,
    rs_node: String,
    py_node: String,
    _rs: Proc,
    _py: Proc,
    db: PathBuf,
}

async fn setup(tag: &str) -> (Setup, Running) {
    let url = redis_url();
    let rs_queue = unique(&format!("mon_rs_{tag}"));
    let py_queue = unique(&format!("mon_py_{tag}"));
    let app = rust_app(&url, &url, &rs_queue, ContentType::Json, None).await.unwrap();
    let db = std::env::temp_dir().join(format!("{}.db", unique("qmonitor")));
    let running = Running::start(&app, &db.to_string_lossy()).await;
    let rs_node = format!("{}@qtask-test", unique("rsmon"));
    let py_node = format!("{}@py-test", unique("pymon"));
    let mut opts = WorkerOpts { backend: Some(url.clone()), concurrency: Some(2), ..Default::default() };
    opts.env.push(("QTASK_WORKER_HOSTNAME".into(), rs_node.clone()));
    opts.env.push(("QTASK_WORKER_SEND_TASK_EVENTS".into(), "true".into()));
    let rs = spawn_interop_worker(interop_worker_bin!(), &url, &[&rs_queue], &opts).unwrap();
    let py = spawn_python_worker_with(
        &PyEnv::new(&url, &py_queue).var("PYAPP_REMOTE_CONTROL", "1"),
        &[&py_queue],
        None,
        &["-E", "-n", &py_node],
    )
    .unwrap();
    // Online in the monitor = it heard their heartbeats, so it hears the
    // task events that follow.
    let m = running.monitor.clone();
    let (a, b) = (rs_node.clone(), py_node.clone());
    wait_for("both workers online in the monitor", Duration::from_secs(60), || {
        let m = m.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let now = qtask::time::now_epoch();
            Ok(m.worker(&a).is_some_and(|w| w.alive(now)) && m.worker(&b).is_some_and(|w| w.alive(now)))
        }
    })
    .await
    .unwrap();
    (Setup { app, rs_queue, py_queue, rs_node, py_node, _rs: rs, _py: py, db }, running)
}

async fn send(app: &App, name: &str, args: Vec<Value>, queue: &str) -> String {
    app.send_task(name, args, Default::default(), SendOptions::new().queue(queue)).await.unwrap().id().to_string()
}

async fn wait_state(port: u16, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(t) = http_get(port, &format!("/api/task/info/{id}")) {
            if t["state"] == state {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never became {state} in the monitor; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_lists_both_workers_and_their_tasks_and_keeps_them_across_a_restart() -> Result<()> {
    let (s, running) = setup("api").await;
    let port = running.port;
    let rs_ok = send(&s.app, "tasks.add", vec![json!(2), json!(3)], &s.rs_queue).await;
    let py_ok = send(&s.app, "tasks.add", vec![json!(20), json!(22)], &s.py_queue).await;
    let py_fail = send(&s.app, "tasks.fail", vec![json!("kaboom")], &s.py_queue).await;

    let t = wait_state(port, &rs_ok, "SUCCESS").await;
    ensure!(t["worker"] == s.rs_node.as_str() && t["result"] == "5" && t["args"] == "(2, 3)", "{t}");
    let t = wait_state(port, &py_ok, "SUCCESS").await;
    ensure!(t["worker"] == s.py_node.as_str() && t["result"] == "42" && t["name"] == "tasks.add", "{t}");
    let t = wait_state(port, &py_fail, "FAILURE").await;
    ensure!(t["exception"].as_str().is_some_and(|e| e.contains("kaboom")), "{t}");
    ensure!(t["traceback"].as_str().is_some_and(|tb| tb.contains("Traceback")), "{t}");

    // Flower's /api/workers, after asking them (refresh): both, with
    // their inspect answers (asked again until both answered in time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let workers = loop {
        let w = http_get(port, "/api/workers?refresh=1")?;
        if [&s.rs_node, &s.py_node].iter().all(|n| w[n.as_str()]["stats"].get("pool").is_some()) {
            break w;
        }
        ensure!(std::time::Instant::now() < deadline, "inspect never answered for both: {w}");
    };
    for node in [&s.rs_node, &s.py_node] {
        let w = &workers[node.as_str()];
        ensure!(w["stats"].is_object() && w["stats"]["pool"].is_object(), "{node}: {w}");
        ensure!(w["registered"].as_array().is_some_and(|r| r.contains(&json!("tasks.add"))), "{node}: {w}");
        ensure!(w["timestamp"].is_f64(), "{node}: {w}");
    }
    let status = http_get(port, "/api/workers?status=true")?;
    ensure!(status[s.rs_node.as_str()] == true && status[s.py_node.as_str()] == true, "{status}");
    let tasks = http_get(port, &format!("/api/tasks?workername={}", s.py_node))?;
    let ids: Vec<&String> = tasks.as_object().unwrap().keys().collect();
    ensure!(ids == [&py_fail, &py_ok], "newest first: {ids:?}");
    let failed = http_get(port, &format!("/api/tasks?state=FAILURE&workername={}", s.py_node))?;
    ensure!(failed.as_object().unwrap().keys().collect::<Vec<_>>() == [&py_fail], "{failed}");
    let search = http_get(port, "/api/tasks?search=kaboom")?;
    ensure!(search.as_object().unwrap().contains_key(&py_fail), "{search}");
    let result = http_get(port, &format!("/api/task/result/{rs_ok}"))?;
    ensure!(result["state"] == "SUCCESS" && result["result"] == 5, "{result}");

    // Stop the monitor; start another on the same history.
    running.stop();
    let again = Running::start(&s.app, &s.db.to_string_lossy()).await;
    for (id, state) in [(&rs_ok, "SUCCESS"), (&py_ok, "SUCCESS"), (&py_fail, "FAILURE")] {
        let t = http_get(again.port, &format!("/api/task/info/{id}"))?;
        ensure!(t["state"] == state, "after a restart: {t}");
    }
    let workers = http_get(again.port, "/api/workers")?;
    ensure!(workers.get(s.rs_node.as_str()).is_some() && workers.get(s.py_node.as_str()).is_some(), "{workers}");
    again.stop();
    let _ = std::fs::remove_file(&s.db);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_pages_in_a_browser() -> Result<()> {
    let (s, running) = setup("pages").await;
    let port = running.port;
    let base = format!("http://127.0.0.1:{port}");
    let rs_ok = send(&s.app, "tasks.add", vec![json!(7), json!(8)], &s.rs_queue).await;
    let py_ok = send(&s.app, "tasks.add", vec![json!(31337), json!(1)], &s.py_queue).await;
    wait_state(port, &rs_ok, "SUCCESS").await;
    wait_state(port, &py_ok, "SUCCESS").await;

    let b = Browser::start().await;
    let c = b.client();
    // The dashboard lists both workers, online.
    c.goto(&format!("{base}/")).await?;
    let table = b.wait_text("table.workers", |t| t.contains("online")).await;
    ensure!(table.contains(&s.rs_node) && table.contains(&s.py_node), "{table}");
    b.screenshot("monitor-dashboard").await;

    // The task list shows the tasks with their states.
    c.goto(&format!("{base}/tasks")).await?;
    // (wait_text: a live refresh may swap the table between two reads)
    let list = b.wait_text("#tasks", |t| t.contains(&rs_ok) && t.contains(&py_ok)).await;
    ensure!(list.contains(&rs_ok) && list.contains(&py_ok) && list.contains("SUCCESS"), "{list}");
    b.screenshot("monitor-tasks").await;

    // The search box finds one by an argument.
    let q = c.find(Locator::Css("input[name=q]")).await?;
    q.send_keys("31337").await?;
    c.find(Locator::Css("form.filters button")).await?.click().await?;
    // (the list before the search shows both: wait for the filtered one)
    let found = b.wait_text("#tasks", |t| t.contains(&py_ok) && !t.contains(&rs_ok)).await;
    ensure!(c.current_url().await?.query() == Some("state=&name=&worker=&q=31337"), "{found}");
    b.screenshot("monitor-search").await;

    // The list updates live when a new task runs (no reload: a marker set
    // on the window survives).
    c.goto(&format!("{base}/tasks")).await?;
    c.execute("window.__same_page = true", vec![]).await?;
    wait_for("the live stream to connect", Duration::from_secs(30), || async move {
        Ok(c.execute("return document.getElementById('live').className", vec![]).await? == json!("live on"))
    })
    .await?;
    let new = send(&s.app, "tasks.add", vec![json!(1000), json!(1)], &s.rs_queue).await;
    let live = b.wait_text("#tasks", |t| t.contains(&new) && t.contains("SUCCESS")).await;
    ensure!(live.contains(&new), "{live}");
    ensure!(c.execute("return window.__same_page === true", vec![]).await? == json!(true), "the page was reloaded");
    b.screenshot("monitor-live").await;

    // A revoke from the task page reaches the worker: a running task is
    // terminated and ends REVOKED.
    let slow = send(&s.app, "tasks.sleep", vec![json!(60)], &s.rs_queue).await;
    wait_state(port, &slow, "STARTED").await;
    c.goto(&format!("{base}/task/{slow}")).await?;
    // Past the refresh a page does when its stream connects.
    wait_for("the first live refresh", Duration::from_secs(30), || async move {
        Ok(c.execute("return document.body.getAttribute('data-refreshed')", vec![]).await? != Value::Null)
    })
    .await?;
    let terminate = c.find(Locator::Css("input[name=terminate]")).await?;
    terminate.click().await?;
    ensure!(terminate.prop("checked").await?.as_deref() == Some("true"), "the box stays ticked");
    c.find(Locator::Id("revoke")).await?.click().await?;
    let flash = b.wait_text(".flash", |t| !t.is_empty()).await;
    ensure!(flash == "Revoked", "{flash}");
    let t = wait_state(port, &slow, "REVOKED").await;
    ensure!(t["worker"] == s.rs_node.as_str(), "{t}");
    // The page (live) shows it.
    let title = b.wait_text("h1", |t| t.contains("REVOKED")).await;
    ensure!(title.contains("tasks.sleep"), "{title}");
    b.screenshot("monitor-revoked").await;

    // The worker page answers inspect.
    c.goto(&format!("{base}/worker/{}", s.py_node)).await?;
    // (asked as the page renders; a late answer shows at the next live refresh)
    let registered = b.wait_text("main", |t| t.contains("Grow pool") && t.contains("tasks.add")).await;
    ensure!(registered.contains("tasks.add") && registered.contains("Grow pool"), "{registered}");
    b.screenshot("monitor-worker").await;
    b.close().await;
    running.stop();
    let _ = std::fs::remove_file(&s.db);
    Ok(())
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

/// Same JSON type, `null` matching anything (a field one side has not
/// heard yet).
fn same_type(a: &Value, b: &Value) -> bool {
    a.is_null() || b.is_null() || std::mem::discriminant(a) == std::mem::discriminant(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_and_the_monitor_answer_with_the_same_json_shapes() -> Result<()> {
    let (s, running) = setup("flower").await;
    let port = integration_tests::free_port()?;
    let mut cmd = std::process::Command::new(integration_tests::python());
    cmd.current_dir(integration_tests::python_dir())
        .env("FLOWER_UNAUTHENTICATED_API", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "celery", "-b", &redis_url(), "flower", "--address=127.0.0.1"])
        .arg(format!("--port={port}"));
    let mut flower = Proc::spawn("flower", cmd)?;
    flower.wait_log("Visit me at", Duration::from_secs(60))?;
    // Flower hears events once it sees the workers' heartbeats.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = http_get(port, "/api/workers?status=1")?;
        if status[s.rs_node.as_str()] == true && status[s.py_node.as_str()] == true {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "Flower never saw both workers: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = [
        send(&s.app, "tasks.add", vec![json!(2), json!(3)], &s.rs_queue).await,
        send(&s.app, "tasks.add", vec![json!(4), json!(5)], &s.py_queue).await,
        send(&s.app, "tasks.fail", vec![json!("shape")], &s.py_queue).await,
    ];
    for (id, state) in ids.iter().zip(["SUCCESS", "SUCCESS", "FAILURE"]) {
        let ours = wait_state(running.port, id, state).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let theirs = loop {
            let t = http_get(port, &format!("/api/task/info/{id}")).unwrap_or(Value::Null);
            if t["state"] == state {
                break t;
            }
            ensure!(std::time::Instant::now() < deadline, "Flower never showed {id} as {state}: {t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(
            keys(&ours) == keys(&theirs),
            "task keys differ:\nqmonitor {:?}\nflower   {:?}",
            keys(&ours),
            keys(&theirs)
        );
        for k in keys(&theirs) {
            ensure!(same_type(&ours[&k], &theirs[&k]), "{k}: qmonitor {} vs Flower {}", ours[&k], theirs[&k]);
        }
        for k in ["uuid", "name", "state", "args", "kwargs", "result", "exception", "worker", "retries", "root_id"] {
            ensure!(ours[k] == theirs[k], "{k}: qmonitor {} vs Flower {}", ours[k], theirs[k]);
        }
    }
    let ours = http_get(running.port, "/api/tasks")?;
    let theirs = http_get(port, "/api/tasks")?;
    for id in &ids {
        ensure!(keys(&ours[id.as_str()]) == keys(&theirs[id.as_str()]), "/api/tasks entries differ for {id}");
    }
    // Workers, once both asked them (refresh).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (ours, theirs) = loop {
        let o = http_get(running.port, "/api/workers?refresh=1")?;
        let t = http_get(port, "/api/workers?refresh=1")?;
        let full = |w: &Value| [&s.rs_node, &s.py_node].iter().all(|n| w[n.as_str()]["stats"].get("pool").is_some());
        if full(&o) && full(&t) {
            break (o, t);
        }
        ensure!(std::time::Instant::now() < deadline, "inspect never answered both sides:\n{o}\n{t}");
    };
    for node in [&s.rs_node, &s.py_node] {
        let (o, t) = (&ours[node.as_str()], &theirs[node.as_str()]);
        ensure!(keys(o) == keys(t), "{node}: qmonitor {:?} vs Flower {:?}", keys(o), keys(t));
        for k in keys(t) {
            ensure!(same_type(&o[&k], &t[&k]), "{node} {k}: qmonitor {} vs Flower {}", o[&k], t[&k]);
        }
        ensure!(o["registered"] == t["registered"], "{node}: registered differ");
    }
    running.stop();
    let _ = std::fs::remove_file(&s.db);
    Ok(())
}
