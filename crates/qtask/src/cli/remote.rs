//! `inspect`, `control`, `status`: remote control (pidbox) from the command
//! line, with Celery's text output (`celery/bin/control.py`) or `--json`.
//!
//! The arguments after the command name are compiled as Celery compiles
//! them (its `Panel.meta` table: named arguments with a type, then a
//! variadic list), so `control rate_limit tasks.add 10/s` sends
//! `{"task_name": "tasks.add", "rate_limit": "10/s"}` and `control revoke
//! ID1 ID2` sends `{"task_id": ["ID1", "ID2"]}`.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::{Map, Value};

use qcore::control::{Client, ControlRequest};
use qcore::App;

use super::args::{ControlArgs, InspectArgs, RemoteArgs};

/// Celery's `EX_UNAVAILABLE`: no node replied in time.
const EX_UNAVAILABLE: u8 = 69;

/// The type of a named argument.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Float,
    Bool,
}

/// A command Celery's command line knows: its named arguments, its
/// variadic argument, its usage.
struct Meta {
    name: &'static str,
    inspect: bool,
    args: &'static [(&'static str, Ty)],
    variadic: Option<&'static str>,
    signature: &'static str,
}

const fn cmd(name: &'static str, inspect: bool) -> Meta {
    Meta { name, inspect, args: &[], variadic: None, signature: "" }
}

/// Celery 5.7's visible commands (`celery/worker/control.py`), sorted by name.
const COMMANDS: &[Meta] = &[
    cmd("active", true),
    cmd("active_queues", true),
    Meta {
        args: &[("queue", Ty::Str), ("exchange", Ty::Str), ("exchange_type", Ty::Str), ("routing_key", Ty::Str)],
        signature: "<queue> [exchange [type [routing_key]]]",
        ..cmd("add_consumer", false)
    },
    Meta { args: &[("max", Ty::Int), ("min", Ty::Int)], signature: "[max [min]]", ..cmd("autoscale", false) },
    Meta { args: &[("queue", Ty::Str)], signature: "<queue>", ..cmd("cancel_consumer", false) },
    cmd("clock", true),
    Meta { args: &[("with_defaults", Ty::Bool)], signature: "[include_defaults=False]", ..cmd("conf", true) },
    cmd("disable_events", false),
    cmd("election", false),
    cmd("enable_events", false),
    cmd("heartbeat", false),
    Meta { args: &[("samples", Ty::Int)], signature: "[n_samples=10]", ..cmd("memdump", true) },
    cmd("memsample", true),
    Meta {
        args: &[("type", Ty::Str), ("num", Ty::Int), ("max_depth", Ty::Int)],
        signature: "[object_type=Request] [num=200 [max_depth=10]]",
        ..cmd("objgraph", true)
    },
    cmd("ping", true),
    Meta { args: &[("n", Ty::Int)], signature: "[N=1]", ..cmd("pool_grow", false) },
    cmd("pool_restart", false),
    Meta { args: &[("n", Ty::Int)], signature: "[N=1]", ..cmd("pool_shrink", false) },
    Meta { variadic: Some("ids"), signature: "[id1 [id2 [... [idN]]]]", ..cmd("query_task", true) },
    Meta {
        args: &[("task_name", Ty::Str), ("rate_limit", Ty::Str)],
        signature: "<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
        ..cmd("rate_limit", false)
    },
    Meta { variadic: Some("taskinfoitems"), signature: "[attr1 [attr2 [... [attrN]]]]", ..cmd("registered", true) },
    cmd("report", true),
    cmd("reserved", true),
    Meta { variadic: Some("task_id"), signature: "[id1 [id2 [... [idN]]]]", ..cmd("revoke", false) },
    Meta {
        variadic: Some("headers"),
        signature: "[key1=value1 [key2=value2 [... [keyN=valueN]]]]",
        ..cmd("revoke_by_stamped_headers", false)
    },
    cmd("revoked", true),
    cmd("scheduled", true),
    cmd("shutdown", false),
    cmd("stats", true),
    Meta {
        args: &[("signal", Ty::Str)],
        variadic: Some("task_id"),
        signature: "<signal> [id1 [id2 [... [idN]]]]",
        ..cmd("terminate", false)
    },
    Meta {
        args: &[("task_name", Ty::Str), ("soft", Ty::Float), ("hard", Ty::Float)],
        signature: "<task_name> <soft_secs> [hard_secs]",
        ..cmd("time_limit", false)
    },
];

/// The arguments of `method` (an inspect command when `inspect`) from the
/// words after it, as Celery's `_compile_arguments` builds them.
pub(super) fn compile_arguments(inspect: bool, method: &str, words: &[String]) -> Result<Map<String, Value>, String> {
    let kind = if inspect { "inspect" } else { "control" };
    let Some(meta) = COMMANDS.iter().find(|m| m.name == method && m.inspect == inspect) else {
        let names: Vec<&str> = COMMANDS.iter().filter(|m| m.inspect == inspect).map(|m| m.name).collect();
        return Err(format!("Command {method} not recognized. Available {kind} commands: {}", names.join(", ")));
    };
    let mut arguments = Map::new();
    let mut rest = words;
    for (i, word) in words.iter().enumerate() {
        let Some((name, ty)) = meta.args.get(i) else {
            if meta.variadic.is_some() {
                rest = &words[i..];
                break;
            }
            return Err(format!("Command {method:?} takes arguments: {}", meta.signature));
        };
        let bad = |what: &str| format!("{method}: {name} must be {what}, got {word:?}");
        let value = match ty {
            Ty::Str => Value::from(word.as_str()),
            Ty::Int => Value::from(word.parse::<i64>().map_err(|_| bad("a whole number"))?),
            Ty::Float => {
                let v = word.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad("a number"))?;
                Value::from(v)
            }
            Ty::Bool => Value::from(strtobool(word).ok_or_else(|| bad("true/false, yes/no, on/off or 1/0"))?),
        };
        arguments.insert((*name).to_string(), value);
        rest = &words[i + 1..];
    }
    if let Some(v) = meta.variadic {
        arguments.insert(v.to_string(), Value::from(rest.to_vec()));
    }
    Ok(arguments)
}

/// Celery's `strtobool`.
fn strtobool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Celery's `text.indent`: every line (also an empty text) gets `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.split('\n').map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
}

/// Python's `str()` of a reply value inside a list: strings as they are,
/// the rest as `repr()`.
fn item_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => qcore::repr::repr(other),
    }
}

/// Keys sorted at every level (Python's `json.dumps(sort_keys=True)`).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// `json.dumps(v, indent=4)`.
fn json_indent4(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    match serde::Serialize::serialize(v, &mut ser) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => v.to_string(),
    }
}

/// Celery's `pretty()`: the status (`OK`/`ERROR`) and the text of a reply.
pub(super) fn pretty(v: &Value) -> (&'static str, String) {
    match v {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".into()),
        Value::Array(items) => {
            ("OK", items.iter().map(|i| format!("* {}", item_str(i))).collect::<Vec<_>>().join("\n"))
        }
        Value::Object(m) if m.contains_key("ok") => ("OK", indent(&pretty(&m["ok"]).1, 4)),
        Value::Object(m) if m.contains_key("error") => ("ERROR", indent(&pretty(&m["error"]).1, 4)),
        Value::Object(_) => ("OK", json_indent4(&sorted(v))),
        Value::String(s) => ("OK", s.clone()),
        other => ("OK", qcore::repr::repr(other)),
    }
}

/// One reply as Celery prints it: `->  node: OK`, then (with `body`) the
/// reply indented.
pub(super) fn say_reply(node: &str, reply: &Value, body: bool) -> String {
    let (status, text) = pretty(reply);
    let mut s = format!("->  {node}: {status}\n");
    if body {
        let _ = writeln!(s, "{}", indent(&text, 4));
    }
    s
}

/// `1 node online.` / `2 nodes online.`
fn online(n: usize) -> String {
    format!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" })
}

fn no_reply() -> ExitCode {
    eprintln!("Error: No nodes replied within time constraint");
    ExitCode::from(EX_UNAVAILABLE)
}

/// `{node: reply, ...}` in the order the replies came (Celery's `inspect --json`).
fn by_node(replies: &[(String, Value)]) -> Value {
    Value::Object(replies.iter().cloned().collect())
}

fn json_line(v: &Value) -> anyhow::Result<String> {
    Ok(String::from_utf8(qcore::json::to_vec(v)?)?)
}

/// Broadcast `method` and collect the replies until the timeout (or one per
/// node of `-d`), printing each as it comes when `print` (Celery's callback).
async fn ask(
    app: &App,
    method: &str,
    arguments: Map<String, Value>,
    r: &RemoteArgs,
    print: bool,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut request = ControlRequest::new(method);
    request.arguments = arguments;
    if !r.destination.is_empty() {
        request = request.to(r.destination.iter().map(|d| d.trim()).filter(|d| !d.is_empty()));
    }
    let client = Client::new(app.broker().clone());
    let mut replies = Vec::new();
    client
        .call_with(request, r.timeout, None, |reply| {
            if print {
                print!("{}", say_reply(&reply.node, &reply.value, true));
            }
            replies.push((reply.node, reply.value));
        })
        .await?;
    Ok(replies)
}

/// [`ask`] without printing.
async fn ask_quiet(
    app: &App,
    method: &str,
    arguments: Map<String, Value>,
    r: &RemoteArgs,
) -> anyhow::Result<Vec<(String, Value)>> {
    ask(app, method, arguments, r, false).await
}

/// `inspect METHOD [ARGS...]`.
pub(super) async fn inspect(app: &App, i: &InspectArgs) -> anyhow::Result<ExitCode> {
    let arguments = compile_arguments(true, &i.method, &i.arguments).map_err(anyhow::Error::msg)?;
    let replies = ask(app, &i.method, arguments, &i.remote, !i.remote.json).await?;
    if replies.is_empty() {
        return Ok(no_reply());
    }
    if i.remote.json {
        println!("{}", json_line(&by_node(&replies))?);
    } else {
        println!("{}", online(replies.len()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `control METHOD [ARGS...]`.
pub(super) async fn control(app: &App, c: &ControlArgs) -> anyhow::Result<ExitCode> {
    let arguments = compile_arguments(false, &c.method, &c.arguments).map_err(anyhow::Error::msg)?;
    let replies = ask(app, &c.method, arguments, &c.remote, !c.remote.json).await?;
    if replies.is_empty() {
        return Ok(no_reply());
    }
    if c.remote.json {
        // Celery's broadcast returns a list of one-entry maps.
        let list: Vec<Value> = replies.iter().map(|(n, v)| by_node(&[(n.clone(), v.clone())])).collect();
        println!("{}", json_line(&Value::Array(list))?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `status`: a ping, one line per node, then the count.
pub(super) async fn status(app: &App, r: &RemoteArgs) -> anyhow::Result<ExitCode> {
    let replies = ask_quiet(app, "ping", Map::new(), r).await?;
    if replies.is_empty() {
        return Ok(no_reply());
    }
    if r.json {
        println!("{}", json_line(&by_node(&replies))?);
    } else {
        for (node, reply) in &replies {
            print!("{}", say_reply(node, reply, false));
        }
    }
    println!("{}", online(replies.len()));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_are_compiled_as_celery_compiles_them() {
        let a = compile_arguments(false, "rate_limit", &words(&["tasks.add", "10/s"])).unwrap();
        assert_eq!(Value::Object(a), json!({"task_name": "tasks.add", "rate_limit": "10/s"}));
        let a = compile_arguments(false, "revoke", &words(&["a", "b"])).unwrap();
        assert_eq!(Value::Object(a), json!({"task_id": ["a", "b"]}));
        let a = compile_arguments(false, "terminate", &words(&["SIGKILL", "a"])).unwrap();
        assert_eq!(Value::Object(a), json!({"signal": "SIGKILL", "task_id": ["a"]}));
        let a = compile_arguments(false, "time_limit", &words(&["t", "1.5"])).unwrap();
        assert_eq!(Value::Object(a), json!({"task_name": "t", "soft": 1.5}));
        let a = compile_arguments(true, "registered", &[]).unwrap();
        assert_eq!(Value::Object(a), json!({"taskinfoitems": []}));
        let a = compile_arguments(true, "conf", &words(&["yes"])).unwrap();
        assert_eq!(Value::Object(a), json!({"with_defaults": true}));
        assert!(compile_arguments(true, "ping", &[]).unwrap().is_empty());

        let e = compile_arguments(false, "rate_limit", &words(&["a", "b", "c"])).unwrap_err();
        assert!(e.contains("takes arguments: <task_name> <rate_limit"), "{e}");
        let e = compile_arguments(false, "pool_grow", &words(&["many"])).unwrap_err();
        assert!(e.contains("n must be a whole number"), "{e}");
        let e = compile_arguments(true, "rate_limit", &[]).unwrap_err();
        assert!(e.starts_with("Command rate_limit not recognized. Available inspect commands: active,"), "{e}");
    }

    #[test]
    fn replies_print_as_celery_prints_them() {
        assert_eq!(say_reply("w1@h", &json!({"ok": "pong"}), true), "->  w1@h: OK\n        pong\n");
        assert_eq!(
            say_reply("w1@h", &json!({"ok": "new rate limit set successfully"}), true),
            "->  w1@h: OK\n        new rate limit set successfully\n"
        );
        assert_eq!(
            say_reply("w1@h", &json!({"error": "unknown task"}), true),
            "->  w1@h: ERROR\n        unknown task\n"
        );
        assert_eq!(say_reply("w1@h", &json!([]), true), "->  w1@h: OK\n    - empty -\n");
        assert_eq!(
            say_reply("w1@h", &json!(["tasks.add", "tasks.mul"]), true),
            "->  w1@h: OK\n    * tasks.add\n    * tasks.mul\n"
        );
        assert_eq!(
            say_reply("w1@h", &json!([{"id": "x", "acknowledged": true}]), true),
            "->  w1@h: OK\n    * {'id': 'x', 'acknowledged': True}\n"
        );
        assert_eq!(
            say_reply("w1@h", &json!({"b": 1, "a": {"d": [1, 2], "c": null}}), true),
            "->  w1@h: OK\n    {\n        \"a\": {\n            \"c\": null,\n            \"d\": [\n                1,\n                2\n            ]\n        },\n        \"b\": 1\n    }\n"
        );
        assert_eq!(say_reply("w1@h", &json!({"ok": "pong"}), false), "->  w1@h: OK\n");
        assert_eq!(online(1), "\n1 node online.");
        assert_eq!(online(2), "\n2 nodes online.");
    }
}
