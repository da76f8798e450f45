//! The `beat_schedule` setting in Celery's names, and the zone settings.
//!
//! ```toml
//! timezone = "Europe/Paris"
//!
//! [beat_schedule.daily-report]
//! task = "reports.daily"
//! schedule = 86400.0                         # seconds, as Celery's float
//!
//! [beat_schedule.cleanup]
//! task = "maintenance.cleanup"
//! schedule = "crontab(hour=2, minute=0)"     # as Python users write it
//! args = [30]
//! options = { queue = "maintenance", expires = 3600 }
//!
//! [beat_schedule.subscriptions]
//! task = "billing.check_subscriptions"
//! schedule = { minute = 0 }                  # a crontab as a table
//! timezone = "America/New_York"              # this entry's zone
//! catch_up = "skip"                          # skip | latest (default) | all
//! misfire_grace = 300                        # seconds
//!
//! [beat_schedule.weekdays]
//! task = "reports.weekday"
//! schedule = { cron = "30 6 * * 1-5" }       # POSIX cron semantics
//!
//! [beat_schedule.launch]
//! task = "marketing.launch"
//! schedule = { clocked_time = "2026-12-24T18:00:00+01:00" }   # once
//! ```
//!
//! `schedule` is a number of seconds, the string `"crontab(...)"` or
//! `"timedelta(...)"` or `"solar('sunset', 48.85, 2.35)"` with Python's
//! arguments, `{ event = "sunrise", latitude = 48.85, longitude = 2.35 }`
//! (django-celery-beat's solar names), a table of crontab fields
//! (`minute hour day_of_week day_of_month month_of_year`, Celery's
//! semantics), `{ cron = "m h dom mon dow" }` (POSIX semantics), `{ every =
//! 10, period = "minutes" }` (django-celery-beat's interval) or `{
//! clocked_time = ... }`. Every error names the entry and the field.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use qcore::config::Value;
use qcore::{App, Config, Error};
use serde_json::{Map, Value as Json};

use crate::entry::{CatchUp, Entry, EntryOptions, Expires};
use crate::schedule::{Clocked, CronField, Crontab, CrontabSpec, Interval, Schedule};
use crate::solar::Solar;
use crate::tz::{parse_zone, resolve};

/// The zone of entries that name none: `timezone`, else UTC (with
/// `enable_utc = false` and no `timezone`, Celery uses the system's zone:
/// the beat reads it from `TZ`, else UTC).
pub fn default_zone(config: &Config) -> Result<Tz, Error> {
    if let Some(name) = &config.timezone {
        return parse_zone(name).map_err(|e| Error::Config(format!("timezone: {e}")));
    }
    if !config.enable_utc {
        if let Ok(tz) = std::env::var("TZ") {
            let name = tz.trim_start_matches(':');
            if let Ok(zone) = parse_zone(name) {
                return Ok(zone);
            }
        }
    }
    Ok(Tz::UTC)
}

/// The entries of a `beat_schedule` table. `default_tz` is the zone naive
/// clocked times are read in.
pub fn parse_schedule(table: &Value, default_tz: Tz) -> Result<Vec<Entry>, Error> {
    let Value::Table(items) = table else {
        return Err(Error::Config(format!("beat_schedule: expected a table of entries, got {}", table.kind())));
    };
    items.iter().map(|(name, v)| parse_entry(name, v, default_tz)).collect()
}

/// The entries of the app's `beat_schedule` setting, then of the
/// `beat_schedule` table of the settings file `schedule_file` (an entry of
/// the same name in the file wins). Crontab entries without a
/// `misfire_grace` take `beat_cron_starting_deadline` as theirs.
pub fn entries_from_config(config: &Config, schedule_file: Option<&Path>) -> Result<Vec<Entry>, Error> {
    let tz = default_zone(config)?;
    let mut entries = match &config.beat_schedule {
        Some(t) => parse_schedule(t, tz)?,
        None => Vec::new(),
    };
    let deadline = config.beat_cron_starting_deadline;
    if let Some(path) = schedule_file {
        let file = Config::from_file(path)?;
        let tz = if file.timezone.is_some() { default_zone(&file)? } else { tz };
        let Some(table) = &file.beat_schedule else {
            return Err(Error::Config(format!("{}: no beat_schedule table", path.display())));
        };
        let parsed = parse_schedule(table, tz).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        for e in parsed {
            entries.retain(|x| x.name != e.name);
            entries.push(e);
        }
    }
    // Celery's `beat_cron_starting_deadline`: the grace of crontab entries
    // that set none.
    for e in &mut entries {
        if let (Schedule::Crontab(_), None, Some(d)) = (&e.schedule, e.misfire_grace, deadline) {
            e.misfire_grace = Some(d);
        }
    }
    Ok(entries)
}

/// Run a beat with the app's `beat_schedule` (and `schedule_file`'s) until
/// Ctrl-C or SIGTERM: what `qtask beat` does.
pub async fn run_from_config(app: App, schedule_file: Option<&Path>) -> Result<(), Error> {
    let entries = entries_from_config(app.config(), schedule_file)?;
    if entries.is_empty() {
        tracing::warn!("beat: the schedule is empty (no beat_schedule entries)");
    }
    run_until_signal(crate::Beat::builder(app).schedule(entries)).await
}

/// Start `beat` and run it until Ctrl-C or SIGTERM, then stop it (what
/// `qtask beat` does with a store or a lease of its flags).
pub async fn run_until_signal(beat: crate::BeatBuilder) -> Result<(), Error> {
    let beat = beat.spawn().await?;
    shutdown_signal().await;
    tracing::info!("beat: shutting down");
    beat.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn err(name: &str, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("beat_schedule.{name}.{field}: {msg}"))
}

const ENTRY_KEYS: &[&str] =
    &["task", "schedule", "args", "kwargs", "options", "relative", "timezone", "catch_up", "misfire_grace", "enabled"];

fn parse_entry(name: &str, v: &Value, default_tz: Tz) -> Result<Entry, Error> {
    let Value::Table(fields) = v else {
        return Err(Error::Config(format!("beat_schedule.{name}: expected a table, got {}", v.kind())));
    };
    for (k, _) in fields {
        if !ENTRY_KEYS.contains(&k.as_str()) {
            return Err(err(name, k, format!("unknown field (known: {})", ENTRY_KEYS.join(", "))));
        }
    }
    let task = match v.get("task") {
        Some(Value::Str(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(other) => return Err(err(name, "task", format!("expected a task name, got {other:?}"))),
        None => return Err(err(name, "task", "missing")),
    };
    let timezone = match v.get("timezone") {
        Some(Value::Str(s)) => Some(parse_zone(s).map_err(|e| err(name, "timezone", e))?),
        Some(other) => return Err(err(name, "timezone", format!("expected a zone name, got {}", other.kind()))),
        None => None,
    };
    let relative = match v.get("relative") {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(err(name, "relative", format!("expected true or false, got {}", other.kind()))),
        None => false,
    };
    let schedule = match v.get("schedule") {
        Some(s) => {
            parse_schedule_value(s, timezone.unwrap_or(default_tz), relative).map_err(|e| err(name, "schedule", e))?
        }
        None => return Err(err(name, "schedule", "missing")),
    };
    let args = match v.get("args") {
        Some(Value::List(items)) => items.iter().map(to_json).collect(),
        Some(other) => return Err(err(name, "args", format!("expected an array, got {}", other.kind()))),
        None => Vec::new(),
    };
    let kwargs = match v.get("kwargs") {
        Some(Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
        Some(other) => return Err(err(name, "kwargs", format!("expected a table, got {}", other.kind()))),
        None => Map::new(),
    };
    let options = match v.get("options") {
        Some(o) => parse_options(name, o)?,
        None => EntryOptions::default(),
    };
    let catch_up = match v.get("catch_up") {
        Some(Value::Str(s)) => CatchUp::parse(s).map_err(|e| err(name, "catch_up", e))?,
        Some(other) => return Err(err(name, "catch_up", format!("expected a string, got {}", other.kind()))),
        None => CatchUp::default(),
    };
    let misfire_grace = match v.get("misfire_grace") {
        Some(g) => Some(secs(g).map_err(|e| err(name, "misfire_grace", e))?),
        None => None,
    };
    let enabled = match v.get("enabled") {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(err(name, "enabled", format!("expected true or false, got {}", other.kind()))),
        None => true,
    };
    let mut entry = Entry::new(name, task, schedule)
        .args(args)
        .kwargs(kwargs)
        .options(options)
        .catch_up(catch_up, misfire_grace)
        .enabled(enabled);
    entry.timezone = timezone;
    Ok(entry)
}

fn secs(v: &Value) -> Result<Duration, String> {
    let f = match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s.trim().parse().map_err(|_| format!("expected seconds, got {s:?}"))?,
        other => return Err(format!("expected seconds, got {}", other.kind())),
    };
    if !f.is_finite() || !(0.0..=1e10).contains(&f) {
        return Err(format!("expected a non-negative number of seconds, got {f}"));
    }
    Ok(Duration::from_secs_f64(f))
}

fn parse_options(name: &str, v: &Value) -> Result<EntryOptions, Error> {
    let Value::Table(items) = v else {
        return Err(err(name, "options", format!("expected a table, got {}", v.kind())));
    };
    let mut o = EntryOptions::default();
    for (k, v) in items {
        let field = format!("options.{k}");
        let string = || match v {
            Value::Str(s) => Ok(s.clone()),
            other => Err(err(name, &field, format!("expected a string, got {}", other.kind()))),
        };
        match k.as_str() {
            "queue" => o.queue = Some(string()?),
            "exchange" => o.exchange = Some(string()?),
            "routing_key" => o.routing_key = Some(string()?),
            "priority" => match v {
                Value::Int(p) if (0..=255).contains(p) => o.priority = Some(*p as u8),
                other => return Err(err(name, &field, format!("expected 0 to 255, got {other:?}"))),
            },
            "expires" => {
                o.expires = Some(match v {
                    Value::Str(s) if s.parse::<f64>().is_err() => {
                        Expires::At(parse_instant(s, Tz::UTC).map_err(|e| err(name, &field, e))?)
                    }
                    other => Expires::In(secs(other).map_err(|e| err(name, &field, e))?),
                })
            }
            "headers" => match v {
                Value::Table(t) => o.headers = t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
                other => return Err(err(name, &field, format!("expected a table, got {}", other.kind()))),
            },
            _ => {
                return Err(err(
                    name,
                    &field,
                    "unknown option (known: queue, exchange, routing_key, priority, expires, headers)",
                ))
            }
        }
    }
    Ok(o)
}

/// An instant written with an offset (RFC 3339), or a naive date-time read
/// in `tz`.
fn parse_instant(s: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(resolve(tz, naive));
        }
    }
    Err(format!("expected a date and time like \"2026-12-24T18:00:00+01:00\", got {s:?}"))
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Value::Str(s) => Json::String(s.clone()),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Table(t) => Json::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// One `schedule` value.
fn parse_schedule_value(v: &Value, tz: Tz, relative: bool) -> Result<Schedule, String> {
    match v {
        Value::Int(_) | Value::Float(_) => {
            let secs = match v {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                _ => 0.0,
            };
            Ok(Schedule::Interval(Interval::from_secs_f64(secs)?.relative(relative)))
        }
        Value::Str(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return Ok(Schedule::Interval(Interval::from_secs_f64(secs)?.relative(relative)));
            }
            let call = parse_call(s)?;
            match call.name.as_str() {
                "crontab" => Ok(Schedule::Crontab(crontab_from_call(&call)?)),
                "timedelta" => Ok(Schedule::Interval(Interval::new(timedelta_from_call(&call)?)?.relative(relative))),
                "solar" => Ok(Schedule::Solar(solar_from_call(&call)?)),
                other => {
                    Err(format!("expected seconds, \"crontab(...)\" or \"timedelta(...)\", got a call of {other:?}"))
                }
            }
        }
        Value::Table(t) => {
            let has = |k: &str| t.iter().any(|(n, _)| n == k);
            if has("cron") {
                if t.len() != 1 {
                    return Err("a `cron` table takes no other key".into());
                }
                let Some(Value::Str(s)) = v.get("cron") else {
                    return Err("cron: expected a five-field cron string".into());
                };
                return Ok(Schedule::Crontab(Crontab::posix(s)?));
            }
            if has("every") || has("period") {
                return interval_table(v).map(|i| Schedule::Interval(i.relative(relative)));
            }
            if has("event") {
                let event = v.get("event").and_then(Value::as_str).ok_or("event: expected a solar event name")?;
                let coord = |k: &str| match v.get(k) {
                    Some(Value::Int(i)) => Ok(*i as f64),
                    Some(Value::Float(f)) => Ok(*f),
                    other => Err(format!("{k}: expected a number, got {other:?}")),
                };
                for (k, _) in t {
                    if !["event", "latitude", "longitude"].contains(&k.as_str()) {
                        return Err(format!(
                            "unknown key `{k}` of a solar schedule (known: event, latitude, longitude)"
                        ));
                    }
                }
                return Ok(Schedule::Solar(Solar::new(event, coord("latitude")?, coord("longitude")?)?));
            }
            if has("clocked_time") {
                let Some(Value::Str(s)) = v.get("clocked_time") else {
                    return Err("clocked_time: expected a date and time".into());
                };
                return Ok(Schedule::Clocked(Clocked { at: parse_instant(s, tz)? }));
            }
            let mut spec = CrontabSpec::default();
            for (k, fv) in t {
                let field = match fv {
                    Value::Int(i) => CronField::Int(*i),
                    Value::Str(s) => CronField::Spec(s.clone()),
                    Value::List(items) => CronField::Set(
                        items
                            .iter()
                            .map(|i| match i {
                                Value::Int(n) => Ok(*n),
                                other => Err(format!("{k}: expected whole numbers, got {other:?}")),
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    other => return Err(format!("{k}: expected a number, a string or an array, got {}", other.kind())),
                };
                set_field(&mut spec, k, field)?;
            }
            Ok(Schedule::Crontab(Crontab::celery(&spec)?))
        }
        other => Err(format!("expected seconds, a crontab or a table, got {}", other.kind())),
    }
}

fn interval_table(v: &Value) -> Result<Interval, String> {
    let every = match v.get("every") {
        Some(Value::Int(i)) if *i >= 1 => *i as f64,
        Some(Value::Float(f)) if *f > 0.0 => *f,
        other => return Err(format!("every: expected a positive number, got {other:?}")),
    };
    let unit = match v.get("period").and_then(Value::as_str).unwrap_or("seconds") {
        "days" => 86_400.0,
        "hours" => 3600.0,
        "minutes" => 60.0,
        "seconds" => 1.0,
        "microseconds" => 1e-6,
        other => return Err(format!("period: expected days, hours, minutes, seconds or microseconds, got {other:?}")),
    };
    Interval::from_secs_f64(every * unit)
}

const CRONTAB_FIELDS: [&str; 5] = ["minute", "hour", "day_of_week", "day_of_month", "month_of_year"];

fn set_field(spec: &mut CrontabSpec, name: &str, field: CronField) -> Result<(), String> {
    match name {
        "minute" => spec.minute = field,
        "hour" => spec.hour = field,
        "day_of_week" => spec.day_of_week = field,
        "day_of_month" => spec.day_of_month = field,
        "month_of_year" => spec.month_of_year = field,
        other => {
            return Err(format!(
                "crontab() got an unexpected keyword argument '{other}' (known: {})",
                CRONTAB_FIELDS.join(", ")
            ))
        }
    }
    Ok(())
}

/// `name(arg, key=value, ...)` as Python writes it, with literal values.
#[derive(Debug)]
struct Call {
    name: String,
    args: Vec<(Option<String>, CronField)>,
}

fn crontab_from_call(call: &Call) -> Result<Crontab, String> {
    let mut spec = CrontabSpec::default();
    let mut seen = Vec::new();
    let mut keywords = false;
    for (i, (key, value)) in call.args.iter().enumerate() {
        let name = match key {
            Some(k) => {
                keywords = true;
                k.as_str()
            }
            None if keywords => return Err("positional argument follows keyword argument".into()),
            None => *CRONTAB_FIELDS.get(i).ok_or("crontab() takes at most 5 positional arguments")?,
        };
        if seen.contains(&name) {
            return Err(format!("crontab() got multiple values for argument '{name}'"));
        }
        seen.push(name);
        set_field(&mut spec, name, value.clone())?;
    }
    Crontab::celery(&spec)
}

fn solar_from_call(call: &Call) -> Result<Solar, String> {
    const ARGS: [&str; 3] = ["event", "lat", "lon"];
    let mut event = None;
    let mut coords = [None, None];
    for (i, (key, value)) in call.args.iter().enumerate() {
        let name = match key {
            Some(k) => ARGS
                .iter()
                .find(|a| *a == k)
                .ok_or_else(|| format!("solar() got an unexpected keyword argument '{k}'"))?,
            None => ARGS.get(i).ok_or("solar() takes 3 arguments: event, lat, lon")?,
        };
        match (*name, value) {
            ("event", CronField::Spec(s)) => event = Some(s.clone()),
            ("lat" | "lon", CronField::Int(n)) => coords[usize::from(*name == "lon")] = Some(*n as f64),
            ("lat" | "lon", CronField::Spec(s)) => {
                coords[usize::from(*name == "lon")] =
                    Some(s.parse::<f64>().map_err(|_| format!("solar(): {name} must be a number, got {s:?}"))?)
            }
            _ => return Err(format!("solar(): unexpected value for {name}")),
        }
    }
    match (event, coords) {
        (Some(e), [Some(lat), Some(lon)]) => Solar::new(&e, lat, lon),
        _ => Err("solar() needs event, lat and lon".into()),
    }
}

fn timedelta_from_call(call: &Call) -> Result<Duration, String> {
    const UNITS: [(&str, f64); 7] = [
        ("days", 86_400.0),
        ("seconds", 1.0),
        ("microseconds", 1e-6),
        ("milliseconds", 1e-3),
        ("minutes", 60.0),
        ("hours", 3600.0),
        ("weeks", 604_800.0),
    ];
    let mut total = 0.0;
    for (i, (key, value)) in call.args.iter().enumerate() {
        let unit = match key {
            Some(k) => UNITS
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, u)| *u)
                .ok_or_else(|| format!("timedelta() got an unexpected keyword argument '{k}'"))?,
            None => UNITS.get(i).map(|(_, u)| *u).ok_or("timedelta() takes at most 7 arguments")?,
        };
        let n = match value {
            CronField::Int(n) => *n as f64,
            CronField::Spec(s) => s.parse::<f64>().map_err(|_| format!("timedelta(): expected a number, got {s:?}"))?,
            CronField::Set(_) => return Err("timedelta(): expected a number".into()),
        };
        total += n * unit;
    }
    if !total.is_finite() || total <= 0.0 || total > 1e10 {
        return Err(format!("timedelta must be positive, got {total} s"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// A small reader of Python call syntax with literal arguments: numbers,
/// quoted strings, `{…}`/`[…]`/`(…)` of whole numbers.
fn parse_call(s: &str) -> Result<Call, String> {
    let bad = || format!("cannot read {s:?}: expected e.g. \"crontab(hour=2, minute=0)\"");
    let open = s.find('(').ok_or_else(bad)?;
    let name = s[..open].trim();
    let name = name.strip_prefix("celery.schedules.").unwrap_or(name);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || !s.ends_with(')') {
        return Err(bad());
    }
    let inner = &s[open + 1..s.len() - 1];
    let mut args = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        // key=?
        let mut token = String::new();
        let mut key = None;
        let value = loop {
            match chars.peek().copied() {
                Some(q @ ('\'' | '"')) if token.trim().is_empty() => {
                    chars.next();
                    let mut text = String::new();
                    loop {
                        match chars.next() {
                            Some(c) if c == q => break,
                            Some(c) => text.push(c),
                            None => return Err(format!("unterminated string in {s:?}")),
                        }
                    }
                    break CronField::Spec(text);
                }
                Some(open @ ('{' | '[' | '(')) if token.trim().is_empty() => {
                    chars.next();
                    let close = match open {
                        '{' => '}',
                        '[' => ']',
                        _ => ')',
                    };
                    let mut text = String::new();
                    loop {
                        match chars.next() {
                            Some(c) if c == close => break,
                            Some(c) => text.push(c),
                            None => return Err(format!("unclosed {open:?} in {s:?}")),
                        }
                    }
                    let set = text
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            p.parse::<i64>().map_err(|_| format!("expected whole numbers in {open}…{close}, got {p:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    break CronField::Set(set);
                }
                Some('=') if key.is_none() => {
                    chars.next();
                    let k = token.trim().to_string();
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(bad());
                    }
                    key = Some(k);
                    token.clear();
                }
                Some(',') | None => {
                    let t = token.trim();
                    if t.is_empty() {
                        return Err(bad());
                    }
                    break match t.parse::<i64>() {
                        Ok(i) => CronField::Int(i),
                        Err(_) if t.parse::<f64>().is_ok() => CronField::Spec(t.to_string()),
                        Err(_) => return Err(format!("expected a literal, got {t:?} in {s:?}")),
                    };
                }
                Some(c) => {
                    chars.next();
                    token.push(c);
                }
            }
        };
        args.push((key, value));
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} in {s:?}")),
        }
    }
    Ok(Call { name: name.to_string(), args })
}

#[cfg(test)]
mod tests;
