//! `monitor`: serve qmonitor (Flower's API and pages, with stored history)
//! until SIGINT (Ctrl-C) or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use qcore::control::Client;
use qcore::App;
use qmonitor::{Monitor, Retention, User, WebConfig};

use super::args::MonitorArgs;

pub(super) async fn run(app: App, m: &MonitorArgs) -> anyhow::Result<ExitCode> {
    let mut users = Vec::new();
    for spec in &m.basic_auth {
        users.extend(User::parse_list(spec).map_err(anyhow::Error::msg)?);
    }
    // As Flower's FLOWER_BASIC_AUTH: users from the environment, so that
    // passwords stay out of command lines (process lists, manifests).
    if let Ok(spec) = std::env::var("QMONITOR_BASIC_AUTH") {
        if !spec.is_empty() {
            users.extend(User::parse_list(&spec).map_err(|e| anyhow::anyhow!("QMONITOR_BASIC_AUTH: {e}"))?);
        }
    }
    let mut tokens = m.api_token.clone();
    if let Ok(t) = std::env::var("QMONITOR_API_TOKEN") {
        if !t.is_empty() {
            tokens.push(t);
        }
    }
    let cfg = WebConfig {
        users,
        tokens,
        read_only: m.read_only,
        url_prefix: m.url_prefix.clone(),
        inspect_timeout: m.inspect_timeout,
        broker: app.broker().describe(),
    };
    let addr = SocketAddr::new(m.address, m.port);
    cfg.check_listen(&addr, m.unsafe_no_auth).map_err(anyhow::Error::msg)?;
    let retention = Retention { max_age: m.max_age, max_tasks: m.max_tasks };
    let monitor = Monitor::open(&m.db, retention).await?;
    let ingest = {
        let monitor = monitor.clone();
        let broker = app.broker().clone();
        tokio::spawn(async move {
            loop {
                match monitor.clone().ingest(broker.clone()).await {
                    Ok(()) => tracing::warn!("the event subscription closed; subscribing again"),
                    Err(e) => tracing::error!(error = %e, "reading events failed; retrying in 1 s"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let inspect = tokio::spawn(qmonitor::keep_inspecting(
        monitor.clone(),
        Client::new(app.broker().clone()),
        m.inspect_timeout,
        Duration::from_secs(30),
    ));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let prefix = m.url_prefix.trim_matches('/');
    let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
    eprintln!(
        "-> monitor: http://{local}{prefix}/ watching {} (history in {}{})",
        app.broker().describe(),
        m.db,
        if m.read_only { ", read-only" } else { "" }
    );
    let router = qmonitor::router(monitor, Some(app), cfg);
    qmonitor::serve(listener, router, stop_signal()).await?;
    ingest.abort();
    inspect.abort();
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or SIGTERM (how containers and systemd stop a service).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
