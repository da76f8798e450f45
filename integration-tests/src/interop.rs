//! The Python Celery interop checks that are the same on Redis
//! (`tests/redis_interop.rs`) and on RabbitMQ (`tests/amqp_interop.rs`),
//! parameterised by an [`Interop`]: the broker, where results go, and how
//! the `interop-worker` runs. Every check owns its queue names (random
//! suffix) and reads results from the other side.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use chrono::Utc;
use qtask::{
    chain, chord, group, App, Config, ContentType, Error, ExceptionInfo, SendOptions, Signature, State, Worker,
};
use serde_json::{json, Map, Value};

use crate::tasks::{add, fail, mul, progress, retry_until, xsum};
use crate::{py_producer, redis_cmd, spawn_interop_worker, spawn_python_worker, unique, PyEnv, WorkerOpts};

/// How long a check waits for one result.
pub const T: Duration = Duration::from_secs(30);

/// A qtask app on `broker` with results in `results`, default queue
/// `queue`; with `max_priority`, its queues are declared with that
/// `x-max-priority` (Celery's `task_queue_max_priority`).
pub async fn rust_app(
    broker: &str,
    results: &str,
    queue: &str,
    serializer: ContentType,
    max_priority: Option<u8>,
) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(broker.to_string());
    cfg.result_backend = Some(results.to_string());
    cfg.task_default_queue = queue.to_string();
    cfg.task_serializer = serializer;
    if let Some(p) = max_priority {
        cfg.merge_vars([("QTASK_TASK_QUEUE_MAX_PRIORITY".to_string(), p.to_string())])?;
    }
    Ok(qtask::app_from_config(cfg).await?)
}

/// The state and exception of a task that failed (an error if it did not).
pub fn failed(r: Result<Value, Error>) -> Result<(String, ExceptionInfo)> {
    match r {
        Err(Error::TaskFailed { state, exc, .. }) => Ok((state, exc)),
        other => anyhow::bail!("expected a failed task, got {other:?}"),
    }
}

/// The keyword arguments in the JSON object `v`.
pub fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Sort task ids by the `date_done` of their results.
pub async fn run_order(app: &App, ids: &[String]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for id in ids {
        let r = app.result::<Value>(id.clone());
        r.get(T).await?;
        let meta = r.meta().await?;
        done.push((meta.date_done.ok_or_else(|| anyhow::anyhow!("no date_done for {id}"))?, id.clone()));
    }
    done.sort();
    Ok(done.into_iter().map(|(_, id)| id).collect())
}

fn serializer_name(ct: ContentType) -> &'static str {
    match ct {
        ContentType::Json => "json",
        _ => "msgpack",
    }
}

/// One broker set-up of the interop tests.
#[derive(Debug, Clone)]
pub struct Interop {
    /// The broker URL of both sides.
    pub broker: String,
    /// The result backend URL of both sides.
    pub results: String,
    /// The start of every queue name and Redis key the checks make.
    pub prefix: &'static str,
    /// The `interop-worker` binary (from [`crate::interop_worker_bin!`]).
    pub worker_bin: PathBuf,
    /// How the checks start the `interop-worker` (its `backend` is `results`).
    pub worker: WorkerOpts,
    /// More `PYAPP_*` variables of every Python process the checks start.
    pub py_vars: Vec<(String, String)>,
    /// The qtask side's spelling of `results` when it differs (Celery's
    /// SQLAlchemy URL against qsql's `postgres://…?schema=`); `None`: `results`.
    pub qtask_results: Option<String>,
}

impl Interop {
    /// A unique name starting with the prefix and `name`.
    pub fn unique(&self, name: &str) -> String {
        unique(&format!("{}{name}", self.prefix))
    }

    /// The Python app's environment: JSON, default queue `queue`.
    pub fn py_env(&self, queue: &str) -> PyEnv {
        let mut env = PyEnv::with_backend(&self.broker, &self.results, queue);
        env.vars.extend(self.py_vars.iter().cloned());
        env
    }

    /// The result backend URL of the qtask side.
    pub fn qtask_results(&self) -> &str {
        self.qtask_results.as_deref().unwrap_or(&self.results)
    }

    /// Python stores its results with `serializer` (`result_serializer`).
    pub fn python_results(mut self, serializer: &str) -> Interop {
        self.py_vars.push(("PYAPP_RESULT_SERIALIZER".into(), serializer.into()));
        self
    }

    /// The `interop-worker` stores its results with `serializer`.
    pub fn qtask_worker_results(mut self, serializer: &str) -> Interop {
        self.worker.env.push(("QTASK_RESULT_SERIALIZER".into(), serializer.into()));
        self
    }

    /// A qtask app on the broker, results in `results`, default queue `queue`.
    pub async fn app(&self, queue: &str, serializer: ContentType) -> Result<App> {
        rust_app(&self.broker, self.qtask_results(), queue, serializer, None).await
    }

    /// The Redis where `pyapp.py`'s `tasks.count_sum` counts its runs: the
    /// broker's, or the results' when the broker is not Redis.
    pub fn counter_url(&self) -> &str {
        if self.broker.starts_with("redis") {
            &self.broker
        } else {
            &self.results
        }
    }

    // -----------------------------------------------------------------------
    // Python producer → qtask worker

    /// `producer.py messages` with `serializer` against an `interop-worker`:
    /// arguments, failures, countdown, eta, expiry and PROGRESS as Python
    /// sees them.
    pub fn python_to_qtask_messages(&self, serializer: &str) -> Result<()> {
        let queue = self.unique("py2rs_msg");
        let other = format!("{queue}_other");
        let _worker = spawn_interop_worker(&self.worker_bin, &self.broker, &[&queue, &other], &self.worker)?;
        let out = py_producer(&self.py_env(&queue).serializer(serializer), "messages", &[])?;

        assert_eq!(out["args"], json!(5));
        assert_eq!(out["kwargs"], json!(9));
        assert_eq!(out["mixed"], json!(3));
        assert_eq!(out["list_arg"], json!(10));
        assert_eq!(out["big_int"], json!(1_099_511_627_777_i64));
        assert_eq!(out["send_task"], json!(42));
        assert_eq!(out["other_queue"], json!(30));
        assert_eq!(out["failure"], json!({"type": "ValueError", "args": ["boom \u{fc}"]}));
        assert_eq!(out["failure_state"], json!({"state": "FAILURE", "type": "ValueError", "args": ["again"]}));
        assert_eq!(out["countdown"], json!(2));
        assert!(out["countdown_delay"].as_f64().unwrap_or(0.0) >= 0.5, "ran before its countdown: {out}");
        assert_eq!(out["eta"], json!(4));
        assert!(out["eta_delay"].as_f64().unwrap_or(-1.0) >= 0.0, "ran before its eta: {out}");
        assert_eq!(out["naive_eta"], json!(6));
        assert!(out["naive_eta_delay"].as_f64().unwrap_or(-1.0) >= 0.0, "ran before its naive eta: {out}");
        assert_eq!(out["expired"], json!({"state": "REVOKED", "type": "TaskRevokedError", "args": ["expired"]}));
        assert_eq!(out["not_expired"], json!(3));
        let p = &out["progress_meta"];
        assert_eq!(p["total"], json!(40), "PROGRESS meta seen by Python: {p}");
        assert!((1..=40).contains(&p["current"].as_i64().unwrap_or(0)), "PROGRESS meta seen by Python: {p}");
        assert_eq!(out["progress"], json!(40));
        Ok(())
    }

    /// `producer.py canvas` with `serializer` against an `interop-worker`:
    /// chain, group, chord, link and link_error.
    pub fn python_canvas_on_qtask(&self, serializer: &str) -> Result<()> {
        let queue = self.unique("py2rs_canvas");
        let _worker = spawn_interop_worker(&self.worker_bin, &self.broker, &[&queue], &self.worker)?;
        let out = py_producer(&self.py_env(&queue).serializer(serializer), "canvas", &[])?;

        assert_eq!(out["chain"], json!(60));
        assert_eq!(out["group"], json!([0, 2, 4, 6, 8]));
        assert_eq!(out["chord"], json!(90));
        if serializer == "json" {
            // With msgpack, Celery 5.7 itself writes this message's body with a
            // wrong map length (a Python worker rejects it too: "Can't decode
            // message body: ExtraData"), so producer.py skips it.
            assert_eq!(out["chain_group_chain"], json!(7));
        }
        assert_eq!(out["chain_immutable"], json!(10));
        assert_eq!(out["link_parent"], json!(4));
        assert_eq!(out["link"], json!(40));
        assert_eq!(out["link_error_parent"], json!({"state": "FAILURE", "type": "ValueError", "args": ["first"]}));
        let parent = out["link_error_parent_id"].clone();
        assert_eq!(out["link_error"], json!({"state": "FAILURE", "type": "ValueError", "args": [parent]}));
        Ok(())
    }

    /// A retrying task on a qtask worker (in this process: the interop
    /// worker's task set has none), sent and read by Python with
    /// `serializer`.
    pub async fn python_sees_qtask_retries(&self, serializer: &str) -> Result<()> {
        let queue = self.unique("py2rs_retry");
        let app = self.app(&queue, ContentType::Json).await?;
        app.register(retry_until).register(fail);
        let worker = Worker::builder(app.clone()).queues([queue.clone()]).concurrency(2).build();
        let stop = worker.handle();
        let running = tokio::spawn(worker.run());
        let env = self.py_env(&queue).serializer(serializer);
        let out = tokio::task::spawn_blocking(move || py_producer(&env, "retry", &[])).await??;
        assert_eq!(out["result"], json!(2), "{serializer}: {out}");
        assert_eq!(out["exhausted"], json!({"type": "RuntimeError", "args": ["not yet"]}), "{serializer}: {out}");
        stop.shutdown();
        running.await??;
        Ok(())
    }

    /// Python queues `tasks.add` with the priorities `last_to_first` (in
    /// that order, no worker running); an `interop-worker` (concurrency 1,
    /// prefetch 1) then runs them in the reverse order. With
    /// `max_priority`, both sides declare the queue with that
    /// `x-max-priority`.
    pub async fn python_priorities_on_qtask(&self, last_to_first: [u8; 4], max_priority: Option<u8>) -> Result<()> {
        let queue = self.unique("py2rs_prio");
        let mut env = self.py_env(&queue);
        let mut opts = WorkerOpts { concurrency: Some(1), prefetch_multiplier: Some(1), ..self.worker.clone() };
        if let Some(m) = max_priority {
            env = env.var("PYAPP_MAX_PRIORITY", &m.to_string());
            opts.env.push(("QTASK_TASK_QUEUE_MAX_PRIORITY".into(), m.to_string()));
        }
        let mut ids = Vec::new();
        for p in last_to_first {
            let opts = json!({"args": [p, 0], "options": {"priority": p}}).to_string();
            let out = py_producer(&env, "send", &["tasks.add", &opts])?;
            ids.push(out["id"].as_str().unwrap_or_default().to_string());
        }
        let _worker = spawn_interop_worker(&self.worker_bin, &self.broker, &[&queue], &opts)?;
        let app = rust_app(&self.broker, self.qtask_results(), &queue, ContentType::Json, max_priority).await?;
        check_run_order(&app, &ids, last_to_first).await
    }

    // -----------------------------------------------------------------------
    // qtask producer → Python worker

    /// A qtask producer with `ct` against a Python worker: arguments,
    /// failures, countdown, eta, expiry, PROGRESS and retries as qtask sees
    /// them.
    pub async fn qtask_to_python_messages(&self, ct: ContentType) -> Result<()> {
        let queue = self.unique("rs2py_msg");
        let other = format!("{queue}_other");
        let env = self.py_env(&queue).serializer(serializer_name(ct));
        let _worker = spawn_python_worker(&env, &[&queue, &other], None)?;
        let app = self.app(&queue, ct).await?;

        assert_eq!(app.delay(add::s(2, 3)).await?.get(T).await?, 5);
        let r = app.send_task("tasks.add", vec![], kwargs(json!({"x": 4, "y": 5})), SendOptions::new()).await?;
        assert_eq!(r.get(T).await?, json!(9));
        let r = app.send_task("tasks.add", vec![json!(1)], kwargs(json!({"y": 2})), SendOptions::new()).await?;
        assert_eq!(r.get(T).await?, json!(3));
        assert_eq!(app.delay(xsum::s(vec![1, 2, 3, 4])).await?.get(T).await?, 10);
        assert_eq!(app.delay(add::s(1_099_511_627_776, 1)).await?.get(T).await?, 1_099_511_627_777);
        let r = app.apply_async(add::s(10, 20), SendOptions::new().queue(other.clone())).await?;
        assert_eq!(r.get(T).await?, 30);
        let meta = r.meta().await?;
        assert_eq!(meta.queue.as_deref(), Some(other.as_str()), "Python's extended result names the queue");

        // Failure: Error::TaskFailed with the Python exception.
        let (state, exc) = failed(app.delay(fail::s("boom \u{fc}".to_string())).await?.get(T).await)?;
        assert_eq!(state, "FAILURE");
        assert_eq!(exc.exc_type, "ValueError");
        assert_eq!(exc.exc_message, vec![json!("boom \u{fc}")]);
        assert_eq!(exc.exc_module, "builtins");

        // Countdown and eta: not run before the due time.
        let sent = Utc::now();
        let r = app.apply_async(add::s(1, 1), SendOptions::new().countdown(Duration::from_millis(500))).await?;
        assert_eq!(r.get(T).await?, 2);
        let done = r.meta().await?.date_done.unwrap_or(sent);
        assert!(
            done >= sent + chrono::Duration::milliseconds(500),
            "ran at {done}, sent at {sent} with countdown 0.5 s"
        );
        let eta = Utc::now() + chrono::Duration::milliseconds(400);
        let r = app.apply_async(add::s(2, 2), SendOptions::new().eta(eta)).await?;
        assert_eq!(r.get(T).await?, 4);
        let done = r.meta().await?.date_done.unwrap_or(eta);
        assert!(done >= eta, "ran at {done} before its eta {eta}");

        // Expiry: already expired → REVOKED; not yet expired → runs.
        let past = Utc::now() - chrono::Duration::seconds(30);
        let r = app
            .send_task("tasks.add", vec![json!(1), json!(2)], Map::new(), SendOptions::new().expires_at(past))
            .await?;
        let (state, exc) = failed(r.get(T).await)?;
        assert_eq!(state, "REVOKED");
        assert_eq!(exc.exc_type, "TaskRevokedError");
        assert_eq!(exc.exc_message, vec![json!("expired")]);
        let r = app.apply_async(add::s(1, 2), SendOptions::new().expires_in(Duration::from_secs(60))).await?;
        assert_eq!(r.get(T).await?, 3);

        // PROGRESS meta written by update_state, read from Rust.
        let r = app.delay(progress::s(40)).await?;
        let deadline = std::time::Instant::now() + T;
        let mut seen = None;
        while std::time::Instant::now() < deadline {
            let meta = r.meta().await?;
            if meta.status == State::progress() {
                seen = Some(meta.result);
                break;
            }
            if meta.status.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seen = seen.ok_or_else(|| anyhow::anyhow!("task finished before a PROGRESS state was seen"))?;
        assert_eq!(seen["total"], json!(40), "{seen}");
        assert!((1..=40).contains(&seen["current"].as_i64().unwrap_or(0)), "{seen}");
        assert_eq!(r.get(T).await?, 40);

        // A Python task that retries, seen from Rust.
        let r = app.send_task("tasks.retry_until", vec![json!(2)], Map::new(), SendOptions::new()).await?;
        assert_eq!(r.get(T).await?, json!(2));
        assert_eq!(r.meta().await?.retries, Some(2));
        let r = app.send_task("tasks.retry_until", vec![json!(20)], Map::new(), SendOptions::new()).await?;
        let (state, exc) = failed(r.get(T).await)?;
        assert_eq!((state.as_str(), exc.exc_type.as_str()), ("FAILURE", "RuntimeError"), "{exc:?}");
        Ok(())
    }

    /// A qtask producer with `ct` sends a canvas to a Python worker: chain,
    /// group, chord, immutable signatures, link and link_error.
    pub async fn qtask_canvas_on_python(&self, ct: ContentType) -> Result<()> {
        let queue = self.unique("rs2py_canvas");
        let env = self.py_env(&queue).serializer(serializer_name(ct));
        let _worker = spawn_python_worker(&env, &[&queue], None)?;
        let app = self.app(&queue, ct).await?;

        let r = app.delay(chain([add::s(1, 2).into(), add::sig().arg(3), mul::sig().arg(10)])).await?;
        assert_eq!(r.get(T).await?, json!(60));
        let r = app.delay(group((0..5).map(|i| add::s(i, i).into()))).await?;
        assert_eq!(r.get(T).await?, json!([0, 2, 4, 6, 8]));
        let r = app.delay(chord((0..10).map(|i| add::s(i, i).into()), xsum::sig())).await?;
        assert_eq!(r.get(T).await?, json!(90));
        let r =
            app.delay(chain([add::s(1, 1).into(), group([add::sig().arg(1), add::sig().arg(2)]), xsum::sig()])).await?;
        assert_eq!(r.get(T).await?, json!(7));
        let r = app.delay(chain([add::s(1, 1).into(), Signature::from(add::s(5, 5)).immutable()])).await?;
        assert_eq!(r.get(T).await?, json!(10));

        let cb = unique("cb");
        let r = app.apply_async(add::s(2, 2), SendOptions::new().link(mul::sig().arg(10).task_id(cb.clone()))).await?;
        assert_eq!(r.get(T).await?, 4);
        assert_eq!(app.result::<i64>(cb).get(T).await?, 40);

        // link_error: the errback (tasks.fail, one argument: an old-style
        // errback for Celery) is called with the failed task's id.
        let eb = unique("eb");
        let r = app
            .apply_async(fail::s("first".to_string()), SendOptions::new().link_error(fail::sig().task_id(eb.clone())))
            .await?;
        let (_, exc) = failed(r.get(T).await)?;
        assert_eq!(exc.exc_message, vec![json!("first")]);
        let (state, exc) = failed(app.result::<Value>(eb).get(T).await)?;
        assert_eq!(state, "FAILURE");
        assert_eq!(exc.exc_type, "ValueError");
        assert_eq!(exc.exc_message, vec![json!(r.id())]);
        Ok(())
    }

    /// qtask queues `tasks.add` with the priorities `last_to_first` (in that
    /// order, no worker running); a Python worker then runs them in the
    /// reverse order. With `max_priority`, both sides declare the queue with
    /// that `x-max-priority`.
    pub async fn qtask_priorities_on_python(&self, last_to_first: [u8; 4], max_priority: Option<u8>) -> Result<()> {
        let queue = self.unique("rs2py_prio");
        let app = rust_app(&self.broker, self.qtask_results(), &queue, ContentType::Json, max_priority).await?;
        let mut ids = Vec::new();
        for p in last_to_first {
            let r = app.apply_async(add::s(i64::from(p), 0), SendOptions::new().priority(p)).await?;
            ids.push(r.id().to_string());
        }
        let mut env = self.py_env(&queue);
        if let Some(m) = max_priority {
            env = env.var("PYAPP_MAX_PRIORITY", &m.to_string());
        }
        let _worker = spawn_python_worker(&env, &[&queue], None)?;
        check_run_order(&app, &ids, last_to_first).await
    }

    // -----------------------------------------------------------------------
    // Both workers on one queue

    /// A chord whose header runs partly on a Python worker and partly on the
    /// `interop-worker` (some header tasks pinned to each, the rest on a
    /// queue both consume) completes exactly once — twice over: once where a
    /// Python task finishes the header last (Celery's join dispatches the
    /// body) and once where a qtask task does (qtask's join dispatches it).
    /// The body (`tasks.count_sum`, Python) counts its runs in a Redis key.
    pub async fn chord_split_between_python_and_qtask_completes_once(&self) -> Result<()> {
        let shared = self.unique("mixed");
        let (q_py, q_rs) = (format!("{shared}_py"), format!("{shared}_rs"));
        let _py = spawn_python_worker(&self.py_env(&shared), &[&shared, &q_py], None)?;
        let opts = WorkerOpts { concurrency: Some(1), prefetch_multiplier: Some(1), ..self.worker.clone() };
        let _rs = spawn_interop_worker(&self.worker_bin, &self.broker, &[&shared, &q_rs], &opts)?;
        let app = self.app(&shared, ContentType::Json).await?;
        let redis = self.counter_url();

        for python_last in [true, false] {
            let counter = self.unique("chord_body_runs");
            let slow = |q: &str| Signature::new("tasks.sleep").arg(0.25).queue(q);
            let quick = |q: &str, i: i64| Signature::from(add::s(i, i)).queue(q);
            let mut header = Vec::new();
            let mut expected = 0.0;
            for i in 0..3 {
                if python_last {
                    header.push(slow(&q_py));
                    header.push(quick(&q_rs, i));
                } else {
                    header.push(quick(&q_py, i));
                    header.push(slow(&q_rs));
                }
                expected += 0.25 + 2.0 * i as f64;
            }
            for i in 0..4 {
                header.push(quick(&shared, i));
                expected += 2.0 * i as f64;
            }
            let header_ids: Vec<String> = (0..header.len()).map(|_| unique("h")).collect();
            let header: Vec<Signature> =
                header.into_iter().zip(&header_ids).map(|(s, id)| s.task_id(id.clone())).collect();
            let body = Signature::new("tasks.count_sum").kwarg("counter", counter.clone()).queue(&q_py);
            let r = app.delay(chord(header, body)).await?;
            let sum = r.get(T).await?.as_f64().unwrap_or(f64::NAN);
            assert!((sum - expected).abs() < 1e-9, "chord result {sum}, expected {expected}");

            // Both workers ran header tasks.
            let mut workers = Vec::new();
            for id in &header_ids {
                let meta = app.result::<Value>(id.clone()).meta().await?;
                assert_eq!(meta.status, State::Success, "{id}");
                workers.push(meta.worker.unwrap_or_default());
            }
            ensure!(workers.iter().any(|w| w.starts_with("py_")), "no header task ran on Python: {workers:?}");
            ensure!(workers.iter().any(|w| w.starts_with("qtask")), "no header task ran on qtask: {workers:?}");

            // Exactly once: every header result is stored (so any second
            // dispatch would already be queued ahead), then a marker task on
            // the body's queue has run (the Python worker is solo with
            // prefetch 1: it takes that queue in order).
            let marker = app.apply_async(add::s(0, 0), SendOptions::new().queue(q_py.clone())).await?;
            marker.get(T).await?;
            assert_eq!(redis_cmd(redis, &["GET", &counter])?.int(), 1, "chord body runs (python_last={python_last})");
            redis_cmd(redis, &["DEL", &counter])?;
        }
        Ok(())
    }
}

/// The ids (sent with the priorities `last_to_first`) ran in the reverse
/// order.
async fn check_run_order(app: &App, ids: &[String], last_to_first: [u8; 4]) -> Result<()> {
    let order = run_order(app, ids).await?;
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    let sent = last_to_first.map(|p| p.to_string()).join(", ");
    assert_eq!(order, expected, "ids by priority {sent}: {ids:?}");
    Ok(())
}
