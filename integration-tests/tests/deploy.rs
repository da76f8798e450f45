//! The deploy files (`deploy/`) are what is tested: the compose file and the
//! Kubernetes manifests parse and have the structure their tools need, every
//! command line of every deploy file (compose, manifests, systemd units,
//! Procfile) is accepted by the binary's command line, and the compose
//! services' commands run as written against the local servers (their
//! service URLs and listen addresses replaced by local ones) until they
//! report ready, then stop on SIGTERM with exit code 0.
//!
//! No container engine runs here: images, health checks of the third-party
//! services and the autoscaler's metric pipeline are checked for structure
//! only. The `monitor` service is run and its command checked only when the
//! `qtask` binary has a `monitor` command.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::CommandFactory;
use integration_tests::{
    amqp_url, free_port, qtask_cli, redis_url, unique, wait_for, workspace_bin, workspace_root, Proc,
};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(rel: &str) -> Result<String> {
    let p = deploy_dir().join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
}

fn yaml(rel: &str) -> Result<Vec<Yaml>> {
    YamlLoader::load_from_str(&read(rel)?).map_err(|e| anyhow!("deploy/{rel}: {e}"))
}

fn compose() -> Result<Yaml> {
    yaml("compose.yaml")?.into_iter().next().ok_or_else(|| anyhow!("compose.yaml is empty"))
}

/// Every document of every manifest in `deploy/k8s`, with its file name.
fn manifests() -> Result<Vec<(String, Yaml)>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir().join("k8s"))?.collect::<Result<_, _>>()?;
    files.sort_by_key(|e| e.file_name());
    for e in files {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            for doc in yaml(&format!("k8s/{name}"))? {
                out.push((name.clone(), doc));
            }
        }
    }
    Ok(out)
}

fn str_list(y: &Yaml) -> Option<Vec<String>> {
    y.as_vec()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

fn s<'a>(y: &'a Yaml, what: &str) -> Result<&'a str> {
    y.as_str().ok_or_else(|| anyhow!("{what}: expected a string, got {y:?}"))
}

/// A duration as compose writes it (`90s`, `2m`, `1m30s`).
fn compose_seconds(v: &str) -> Result<u64> {
    let (mut total, mut n) = (0u64, String::new());
    for c in v.chars() {
        match c {
            '0'..='9' => n.push(c),
            'h' | 'm' | 's' => {
                let k = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total += n.parse::<u64>().with_context(|| format!("duration {v:?}"))? * k;
                n.clear();
            }
            _ => bail!("duration {v:?}"),
        }
    }
    ensure!(n.is_empty(), "duration {v:?} without a unit");
    Ok(total)
}

/// A command line some deploy file runs.
#[derive(Debug)]
struct CommandLine {
    source: String,
    argv: Vec<String>,
}

/// Every command line of the deploy files.
fn command_lines() -> Result<Vec<CommandLine>> {
    let mut out = Vec::new();
    let compose = compose()?;
    for (name, svc) in compose["services"].as_hash().ok_or_else(|| anyhow!("compose: no services"))? {
        if let Some(argv) = str_list(&svc["command"]) {
            out.push(CommandLine { source: format!("compose.yaml {}", s(name, "service name")?), argv });
        }
    }
    for (file, doc) in manifests()? {
        if let Some(containers) = doc["spec"]["template"]["spec"]["containers"].as_vec() {
            for c in containers {
                let mut argv = str_list(&c["command"]).unwrap_or_default();
                argv.extend(str_list(&c["args"]).unwrap_or_default());
                out.push(CommandLine { source: format!("k8s/{file} {}", s(&c["name"], "container name")?), argv });
            }
        }
    }
    for unit in ["qtask-worker.service", "qtask-beat.service", "qtask-monitor.service"] {
        let text = read(&format!("systemd/{unit}"))?;
        let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
        ensure!(lines.len() == 1, "systemd/{unit}: expected one ExecStart=, got {lines:?}");
        out.push(CommandLine {
            source: format!("systemd/{unit}"),
            argv: lines[0].split_whitespace().map(str::to_string).collect(),
        });
    }
    for line in read("Procfile")?.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (name, cmd) = line.split_once(':').ok_or_else(|| anyhow!("Procfile: no `name:` in {line:?}"))?;
        // Leading VAR=value assignments are the shell's, not the command's.
        let argv = cmd.split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('-')).map(str::to_string);
        out.push(CommandLine { source: format!("Procfile {name}"), argv: argv.collect() });
    }
    Ok(out)
}

fn has_monitor() -> bool {
    qtask::cli::Args::command().find_subcommand("monitor").is_some()
}

fn program(argv: &[String]) -> Result<&str> {
    let first = argv.first().ok_or_else(|| anyhow!("an empty command"))?;
    Ok(Path::new(first).file_name().and_then(|n| n.to_str()).unwrap_or(first))
}

/// `qtask::cli` of the binary `prog` (the feedback example's tasks do not
/// matter to parsing).
fn cli(prog: &str) -> Result<qtask::cli::Cli> {
    match prog {
        "feedback" => Ok(qtask::cli::Cli::new("feedback").tasks(|_| {})),
        "qtask" => Ok(qtask::cli::Cli::new("qtask")),
        other => bail!("a deploy file runs {other:?}, which is neither `feedback` nor `qtask`"),
    }
}

/// Every flag and value of every deploy command line is accepted by the
/// binary's command line (`feedback web` takes none).
#[test]
fn every_deploy_command_line_parses() -> Result<()> {
    let lines = command_lines()?;
    // compose 4, manifests 4, systemd 3, Procfile 4.
    assert_eq!(lines.len(), 15, "{lines:#?}");
    let mut checked = 0;
    for CommandLine { source, argv } in &lines {
        let prog = program(argv)?;
        if prog == "feedback" && argv.get(1).map(String::as_str) == Some("web") {
            assert_eq!(argv.len(), 2, "{source}: `feedback web` takes no arguments: {argv:?}");
            checked += 1;
            continue;
        }
        if prog == "qtask" && argv.get(1).map(String::as_str) == Some("monitor") && !has_monitor() {
            eprintln!("{source}: not checked, this qtask has no `monitor` command yet: {argv:?}");
            continue;
        }
        let mut full = vec![prog.to_string()];
        full.extend(argv[1..].iter().cloned());
        if let Err(e) = cli(prog)?.parse(&full) {
            bail!("{source}: {argv:?} is refused by the command line:\n{e}");
        }
        checked += 1;
    }
    assert!(checked >= 11, "{checked} command lines checked");
    // The check can fail: a flag that does not exist is refused.
    assert!(cli("feedback")?.parse(["feedback", "worker", "--metrics-adress", "0.0.0.0:1"]).is_err());
    Ok(())
}

#[test]
fn compose_file_has_its_services() -> Result<()> {
    let compose = compose()?;
    let services = &compose["services"];
    for name in ["web", "worker", "beat", "monitor", "redis", "postgres", "rabbitmq"] {
        ensure!(!services[name].is_badvalue(), "compose.yaml: no service {name}");
    }
    for name in ["redis", "postgres", "rabbitmq"] {
        s(&services[name]["image"], &format!("{name}.image"))?;
        ensure!(str_list(&services[name]["healthcheck"]["test"]).is_some(), "{name}: no healthcheck test list");
    }
    let web_build = &services["web"]["build"];
    let context = deploy_dir().join(s(&web_build["context"], "web.build.context")?);
    let dockerfile = context.join(s(&web_build["dockerfile"], "web.build.dockerfile")?);
    ensure!(dockerfile.exists(), "{} does not exist", dockerfile.display());
    let image = s(&services["web"]["image"], "web.image")?;
    for name in ["web", "worker", "beat", "monitor"] {
        let svc = &services[name];
        assert_eq!(s(&svc["image"], &format!("{name}.image"))?, image, "{name} runs the image web builds");
        ensure!(str_list(&svc["command"]).is_some_and(|c| !c.is_empty()), "{name}: no command list");
        ensure!(svc["environment"]["QTASK_BROKER_URL"].as_str().is_some(), "{name}: no QTASK_BROKER_URL");
        for dep in svc["depends_on"].as_hash().map(|h| h.keys().collect::<Vec<_>>()).unwrap_or_default() {
            let dep = s(dep, "depends_on")?;
            ensure!(!services[dep].is_badvalue(), "{name} depends on a missing service {dep}");
        }
        for p in svc["ports"].as_vec().into_iter().flatten() {
            let p = s(p, "port")?;
            let (a, b) = p.split_once(':').ok_or_else(|| anyhow!("{name}: port {p:?} is not HOST:CONTAINER"))?;
            ensure!(a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok(), "{name}: port {p:?}");
        }
    }
    // The warm shutdown has time: the stop grace period is longer than the
    // worker's shutdown timeout.
    let worker = &services["worker"];
    let grace = compose_seconds(s(&worker["stop_grace_period"], "worker.stop_grace_period")?)?;
    let timeout: u64 =
        s(&worker["environment"]["QTASK_WORKER_SHUTDOWN_TIMEOUT"], "worker shutdown timeout")?.parse()?;
    ensure!(grace > timeout, "worker: stop_grace_period {grace}s ≤ worker_shutdown_timeout {timeout}s");
    let cmd = str_list(&worker["command"]).unwrap_or_default();
    ensure!(cmd.iter().any(|a| a == "--metrics-addr"), "worker: no --metrics-addr: {cmd:?}");
    Ok(())
}

/// The value after `flag` in `argv`.
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).map(String::as_str)
}

#[test]
fn kubernetes_manifests_have_the_required_structure() -> Result<()> {
    let docs = manifests()?;
    let mut by_kind: HashMap<String, Vec<(String, &Yaml)>> = HashMap::new();
    for (file, doc) in &docs {
        let kind = s(&doc["kind"], &format!("{file}: kind"))?;
        s(&doc["apiVersion"], &format!("{file}: apiVersion"))?;
        let name = s(&doc["metadata"]["name"], &format!("{file}: metadata.name"))?;
        by_kind.entry(kind.to_string()).or_default().push((name.to_string(), doc));
    }
    let config = &by_kind.get("ConfigMap").and_then(|c| c.first()).ok_or_else(|| anyhow!("no ConfigMap"))?;
    let data = &config.1["data"];
    let deployments = by_kind.get("Deployment").cloned().unwrap_or_default();
    for name in ["feedback-web", "feedback-worker", "feedback-beat", "qtask-monitor"] {
        ensure!(deployments.iter().any(|(n, _)| n == name), "no Deployment {name}");
    }
    let labels_of = |d: &Yaml| d["spec"]["template"]["metadata"]["labels"].as_hash().cloned().unwrap_or_default();
    for (name, d) in &deployments {
        let labels = labels_of(d);
        let selector = d["spec"]["selector"]["matchLabels"].as_hash().ok_or_else(|| anyhow!("{name}: no selector"))?;
        for (k, v) in selector {
            ensure!(labels.get(k) == Some(v), "{name}: selector {k:?} not in the pod labels");
        }
        let containers = d["spec"]["template"]["spec"]["containers"].as_vec().cloned().unwrap_or_default();
        ensure!(!containers.is_empty(), "{name}: no containers");
        for c in &containers {
            s(&c["name"], "container name")?;
            s(&c["image"], "container image")?;
            ensure!(str_list(&c["command"]).is_some(), "{name}: a container without a command list");
            for from in c["envFrom"].as_vec().into_iter().flatten() {
                let cm = s(&from["configMapRef"]["name"], "configMapRef")?;
                ensure!(cm == config.0, "{name}: envFrom names a missing ConfigMap {cm}");
            }
        }
    }
    // The worker: grace period longer than the shutdown timeout (and so the
    // longest task it lets finish), preStop warm shutdown, probes on the
    // metrics port.
    let worker = deployments.iter().find(|(n, _)| n == "feedback-worker").map(|(_, d)| *d).unwrap_or(&Yaml::Null);
    let pod = &worker["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_i64().ok_or_else(|| anyhow!("worker: no grace period"))?;
    let timeout: i64 = s(&data["QTASK_WORKER_SHUTDOWN_TIMEOUT"], "ConfigMap QTASK_WORKER_SHUTDOWN_TIMEOUT")?.parse()?;
    ensure!(grace > timeout, "worker: terminationGracePeriodSeconds {grace} ≤ shutdown timeout {timeout}");
    let c = &pod["containers"][0];
    let pre_stop = str_list(&c["lifecycle"]["preStop"]["exec"]["command"]).unwrap_or_default().join(" ");
    ensure!(pre_stop.contains("kill -TERM 1"), "worker: the preStop hook sends no SIGTERM: {pre_stop:?}");
    let argv = str_list(&c["command"]).unwrap_or_default();
    let addr = flag_value(&argv, "--metrics-addr").ok_or_else(|| anyhow!("worker: no --metrics-addr"))?;
    let port: i64 = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or("").parse()?;
    let port_name = c["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|p| p["containerPort"].as_i64() == Some(port))
        .and_then(|p| p["name"].as_str())
        .ok_or_else(|| anyhow!("worker: no container port {port} (its --metrics-addr)"))?;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "worker {probe}");
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some(port_name), "worker {probe} port");
    }
    // Beat: one at a time.
    let beat = deployments.iter().find(|(n, _)| n == "feedback-beat").map(|(_, d)| *d).unwrap_or(&Yaml::Null);
    assert_eq!(beat["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(beat["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    // The autoscaler: on the worker Deployment, on the queue depth the
    // worker reports for the queue it consumes.
    let hpas = by_kind.get("HorizontalPodAutoscaler").cloned().unwrap_or_default();
    ensure!(hpas.len() == 1, "expected one HorizontalPodAutoscaler");
    let hpa = hpas[0].1;
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"].as_str(), Some("Deployment"));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"].as_str(), Some("feedback-worker"));
    let metric = &hpa["spec"]["metrics"][0]["external"]["metric"];
    assert_eq!(metric["name"].as_str(), Some("qtask_queue_messages"));
    assert_eq!(metric["selector"]["matchLabels"]["queue"].as_str(), data["QTASK_TASK_DEFAULT_QUEUE"].as_str());
    // Services select a Deployment's pods and name one of its ports.
    for (name, svc) in by_kind.get("Service").cloned().unwrap_or_default() {
        let selector = svc["spec"]["selector"].as_hash().ok_or_else(|| anyhow!("Service {name}: no selector"))?;
        let target = deployments
            .iter()
            .find(|(_, d)| {
                let labels = labels_of(d);
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .ok_or_else(|| anyhow!("Service {name} selects no Deployment"))?;
        let ports: Vec<&str> = target.1["spec"]["template"]["spec"]["containers"]
            .as_vec()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_vec().into_iter().flatten().filter_map(|p| p["name"].as_str()))
            .collect();
        for p in svc["spec"]["ports"].as_vec().into_iter().flatten() {
            let t = s(&p["targetPort"], "targetPort")?;
            ensure!(ports.contains(&t), "Service {name}: targetPort {t} is not a port of {}", target.0);
        }
    }
    Ok(())
}

#[test]
fn dockerfile_builds_what_the_deploy_files_run() -> Result<()> {
    let text = read("Dockerfile")?;
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    ensure!(froms >= 2, "not multi-stage: {froms} FROM");
    ensure!(text.contains(" AS build"), "no build stage");
    ensure!(text.contains("COPY --from=build"), "the runtime stage copies nothing from the build stage");
    for bin in ["--bin feedback", "--bin qtask"] {
        ensure!(text.contains(bin), "the image does not build {bin}");
    }
    ensure!(text.contains("COPY deploy/beat.toml /etc/qtask/beat.toml"), "beat.toml not in the image");
    ensure!(text.contains("STOPSIGNAL SIGTERM"), "no STOPSIGNAL SIGTERM");
    for c in command_lines()? {
        let prog = program(&c.argv)?;
        ensure!(prog == "feedback" || prog == "qtask", "{}: runs {prog}, which the image lacks", c.source);
    }
    Ok(())
}

/// The local PostgreSQL: `QTASK_TEST_PG_URL`, else the usual local port (trust auth).
fn pg_url() -> String {
    std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The compose URLs and listen addresses, made local.
struct Local {
    queue: String,
    ports: HashMap<String, u16>,
}

impl Local {
    fn url(&self, v: &str) -> String {
        v.replace("amqp://guest:guest@rabbitmq:5672//", &amqp_url())
            .replace("redis://redis:6379/0", &redis_url())
            .replace("postgres://qtask:qtask@postgres:5432/qtask", &pg_url())
    }

    fn port(&mut self, service: &str) -> Result<u16> {
        if let Some(p) = self.ports.get(service) {
            return Ok(*p);
        }
        let p = free_port()?;
        self.ports.insert(service.to_string(), p);
        Ok(p)
    }

    /// The service's command line and environment, local.
    fn command(&mut self, service: &str, svc: &Yaml) -> Result<Command> {
        let argv = str_list(&svc["command"]).ok_or_else(|| anyhow!("{service}: no command"))?;
        let bin = match argv[0].as_str() {
            "feedback" => workspace_bin("qtask-feedback", "feedback")?,
            "qtask" => qtask_cli()?,
            other => bail!("{service} runs {other:?}"),
        };
        let mut args = Vec::new();
        let mut after_port = false;
        for a in &argv[1..] {
            args.push(match a.as_str() {
                _ if after_port => self.port(service)?.to_string(),
                "0.0.0.0:9808" => format!("127.0.0.1:{}", self.port(service)?),
                "/etc/qtask/beat.toml" => deploy_dir().join("beat.toml").to_string_lossy().into_owned(),
                // The monitor's volume: a file in the service's own directory.
                "/data/qtask-monitor.db" => "qtask-monitor.db".to_string(),
                "0.0.0.0" => "127.0.0.1".to_string(),
                other => self.url(other),
            });
            after_port = a == "--port";
        }
        let mut cmd = Command::new(bin);
        cmd.args(&args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in svc["environment"].as_hash().into_iter().flatten() {
            let (k, v) = (s(k, "env name")?, s(v, "env value")?);
            let v = match k {
                "QTASK_TASK_DEFAULT_QUEUE" => self.queue.clone(),
                "FEEDBACK_ADDR" => format!("127.0.0.1:{}", self.port(service)?),
                _ => self.url(v),
            };
            cmd.env(k, v);
        }
        let dir = std::env::temp_dir().join(unique("qtask-deploy"));
        std::fs::create_dir_all(&dir)?;
        cmd.current_dir(dir);
        Ok(cmd)
    }
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect :{port}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        sock,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    sock.read_to_string(&mut raw)?;
    let (head, rest) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header end in {raw:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("{head:?}"))?;
    Ok((status, rest.to_string()))
}

async fn wait_http(port: u16, path: &str, want: u16, what: &str) -> Result<()> {
    wait_for(what, Duration::from_secs(30), || async move {
        Ok(http(port, "GET", path, None).map(|(s, _)| s == want).unwrap_or(false))
    })
    .await
}

/// The compose services' commands, as written, against the local RabbitMQ,
/// Redis and PostgreSQL: the worker reports ready on /readyz, the web app
/// answers, a feedback posted to the web app is sent by the worker
/// (SUCCESS), beat starts; each stops on SIGTERM with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_run_as_written() -> Result<()> {
    let compose = compose()?;
    let services = &compose["services"];
    let mut local = Local { queue: unique("deploy"), ports: HashMap::new() };

    let mut worker = Proc::spawn("compose worker", local.command("worker", &services["worker"])?)?;
    let wport = local.port("worker")?;
    wait_http(wport, "/readyz", 200, "the worker's /readyz").await.with_context(|| worker.log())?;
    let (_, metrics) = http(wport, "GET", "/metrics", None)?;
    ensure!(metrics.contains(&format!("qtask_queue_messages{{queue=\"{}\"}}", local.queue)), "{metrics}");

    let mut web = Proc::spawn("compose web", local.command("web", &services["web"])?)?;
    let port = local.port("web")?;
    web.wait_log("feedback: http://", Duration::from_secs(30))?;
    wait_http(port, "/", 200, "the web app's form").await?;
    let form = serde_json::json!({"email": "someone@example.com", "message": "The deploy files run as written."});
    let (status, body) = http(port, "POST", "/feedback", Some(&form))?;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body)?["task_id"].as_str().map(str::to_string).context("task_id")?;
    let mut last = String::new();
    let done = wait_for("the feedback task's SUCCESS", Duration::from_secs(60), || {
        let r = http(port, "GET", &format!("/tasks/{id}"), None).map(|(_, b)| {
            let ok = serde_json::from_str::<Value>(&b).is_ok_and(|v| v["state"] == "SUCCESS");
            last = b;
            ok
        });
        std::future::ready(r)
    })
    .await;
    done.with_context(|| format!("last status: {last}\nworker log:\n{}", worker.log()))?;

    let mut beat = Proc::spawn("compose beat", local.command("beat", &services["beat"])?)?;
    beat.wait_log("beat: starting", Duration::from_secs(30))?;

    let monitor = if has_monitor() {
        let mut m = Proc::spawn("compose monitor", local.command("monitor", &services["monitor"])?)?;
        let mport = local.port("monitor")?;
        wait_for("the monitor's port", Duration::from_secs(30), || async move {
            Ok(std::net::TcpStream::connect(("127.0.0.1", mport)).is_ok())
        })
        .await
        .with_context(|| m.log())?;
        assert!(m.is_running());
        let (code, body) = http(mport, "GET", "/healthcheck", None)?;
        assert_eq!((code, body.trim()), (200, "OK"), "monitor /healthcheck");
        let (code, _) = http(mport, "GET", "/api/workers", None)?;
        assert_eq!(code, 401, "the monitor's API without the users of QMONITOR_BASIC_AUTH");
        Some(m)
    } else {
        eprintln!("compose monitor: not run, this qtask has no `monitor` command yet");
        None
    };

    for (name, p) in [("worker", &mut worker), ("web", &mut web), ("beat", &mut beat)] {
        let st = p.terminate(Duration::from_secs(60))?;
        assert_eq!(st.code(), Some(0), "{name} on SIGTERM; log:\n{}", p.log());
    }
    if let Some(mut m) = monitor {
        let st = m.terminate(Duration::from_secs(30))?;
        assert!(st.success(), "monitor on SIGTERM: {st}; log:\n{}", m.log());
    }
    Ok(())
}
