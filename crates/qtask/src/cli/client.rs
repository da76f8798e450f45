//! `call`, `result`, `purge`, `report`: the commands that need no worker.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{Map, Value};

use qcore::{App, Error, SendOptions};

use super::args::{CallArgs, PurgeArgs, ResultArgs};

/// `call NAME`: print the id, then the result with `--wait`.
pub(super) async fn call(app: &App, c: &CallArgs) -> anyhow::Result<ExitCode> {
    let args: Vec<Value> = match &c.args {
        Some(s) => serde_json::from_str(s).with_context(|| format!("--args must be a JSON list, got {s:?}"))?,
        None => Vec::new(),
    };
    let kwargs: Map<String, Value> = match &c.kwargs {
        Some(s) => serde_json::from_str(s).with_context(|| format!("--kwargs must be a JSON object, got {s:?}"))?,
        None => Map::new(),
    };
    let mut opts = SendOptions::new();
    if let Some(q) = &c.queue {
        opts = opts.queue(q.clone());
    }
    if let Some(d) = c.countdown {
        opts = opts.countdown(d);
    }
    if let Some(d) = c.expires {
        opts = opts.expires_in(d);
    }
    let res = app.send_task(&c.name, args, kwargs, opts).await?;
    // Confirmed by the broker before the id is printed and the process ends.
    app.flush().await?;
    println!("{}", res.id());
    if let Some(w) = c.wait {
        return print_result(res.get(w).await);
    }
    Ok(ExitCode::SUCCESS)
}

/// `result ID`: the result when ready, else `{"status", "result"}`.
pub(super) async fn result(app: &App, r: &ResultArgs) -> anyhow::Result<ExitCode> {
    let res = app.result::<Value>(r.id.clone());
    let meta = res.meta().await?;
    if meta.status.is_ready() {
        // Ready: `get` returns at once (a zero timeout could expire before the read).
        print_result(res.get(Duration::from_secs(10)).await)
    } else {
        println!("{}", serde_json::json!({"status": meta.status, "result": meta.result}));
        Ok(ExitCode::SUCCESS)
    }
}

fn print_result(r: Result<Value, Error>) -> anyhow::Result<ExitCode> {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::TaskFailed { task_id, state, exc }) => {
            eprintln!("task {task_id} {state}: {}", serde_json::to_string(&exc.to_value())?);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// The queues the app knows: the default queue, then the routes' queues.
pub(super) fn known_queues(app: &App) -> Vec<String> {
    let cfg = app.config();
    let mut queues = vec![cfg.task_default_queue.clone()];
    for r in &cfg.task_routes {
        if !queues.contains(&r.queue) {
            queues.push(r.queue.clone());
        }
    }
    queues
}

/// `purge`: the named queues at once; every queue the app knows after a
/// confirmation (unless `-f`).
pub(super) async fn purge(app: &App, p: &PurgeArgs) -> anyhow::Result<ExitCode> {
    let named = !p.queues.is_empty();
    let queues: Vec<String> = if named { p.queues.clone() } else { known_queues(app) }
        .into_iter()
        .filter(|q| !q.is_empty() && !p.exclude_queues.contains(q))
        .collect();
    if queues.is_empty() {
        bail!("no queue left to purge");
    }
    if !named && !p.force {
        let mut waiting = 0;
        for q in &queues {
            waiting += app.broker().queue_len(q).await?;
        }
        if waiting == 0 {
            // Nothing to confirm (and nothing deleted that arrives meanwhile).
            for q in &queues {
                println!("purged 0 message(s) from {q}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let question = format!(
            "You are about to delete {waiting} message(s) from {} queue(s): {}. Are you sure you want to \
             delete all of these messages? [y/N] ",
            queues.len(),
            queues.join(", ")
        );
        if !std::io::stdin().is_terminal() {
            bail!("{question}\nno terminal to answer on: add -f to purge without asking");
        }
        eprint!("{question}");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("Aborted.");
            return Ok(ExitCode::from(1));
        }
    }
    for q in &queues {
        let n = app.broker().purge(q).await?;
        println!("purged {n} message(s) from {q}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `report`: versions and settings of this client, passwords hidden.
pub(super) fn report(app: &App) -> anyhow::Result<ExitCode> {
    let cfg = app.config();
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_string()).unwrap_or_else(|| u.to_string());
    let broker = cfg.broker_url.as_deref().unwrap_or(crate::DEFAULT_URL);
    println!(
        "software -> qtask:{} (Celery protocol 2) rustc:{}",
        env!("CARGO_PKG_VERSION"),
        option_env!("CARGO_PKG_RUST_VERSION").unwrap_or("?")
    );
    println!("            platform -> system:{} arch:{}", std::env::consts::OS, std::env::consts::ARCH);
    println!(
        "            transport:{} results:{}",
        scheme(broker),
        cfg.result_backend.as_deref().map(qcore::url::redact).unwrap_or_else(|| "disabled".into())
    );
    println!();
    println!("broker_url: {}", qcore::url::redact(broker));
    println!("task_default_queue: {}", cfg.task_default_queue);
    println!("registered tasks: {}", app.registered().join(", "));
    let unsupported = cfg.unsupported();
    if !unsupported.is_empty() {
        println!("not supported (ignored): {}", unsupported.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
