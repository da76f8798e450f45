//! Schedules: when an entry's slots fall, as UTC instants.
//!
//! * [`Interval`]: every `n` seconds, counted from the last slot (not from
//!   the send time, so it does not drift by the beat's latency as Celery's
//!   does); `relative` rounds each slot down to the interval's resolution
//!   (days, hours, minutes), as Celery's `schedule(relative=True)`.
//! * [`Crontab`]: Celery's `crontab(minute, hour, day_of_week,
//!   day_of_month, month_of_year)` (Sunday = 0, a day must match day of
//!   month **and** day of week), or a standard five-field cron string with
//!   POSIX semantics ([`Crontab::posix`]: a day matches day of month **or**
//!   day of week when both are restricted, 7 = Sunday too).
//! * [`Clocked`]: one instant, once.
//! * [`Solar`]: sunrise, sunset, solar noon, dawn and dusk at a place.
//!
//! Crontab slots are wall-clock times in the entry's zone, turned into
//! instants by the policy of [`crate::tz`]: a slot in a spring-forward gap
//! runs at the end of the gap, a slot in a fall-back overlap runs once, at
//! its first occurrence.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::solar::Solar;
use crate::tz::resolve;

/// When an entry runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every fixed duration.
    Interval(Interval),
    /// At wall-clock times in a zone.
    Crontab(Crontab),
    /// Once, at one instant (then the entry is disabled).
    Clocked(Clocked),
    /// A daily solar event at a place (Celery's `solar`).
    Solar(Solar),
}

impl Schedule {
    /// The first slot of an entry that has never run, for a beat started
    /// at `start`: an interval's first slot is one interval after `start`
    /// (as Celery counts a new entry's `last_run_at` from its creation), a
    /// crontab's the first matching time after `start`, a clocked one its
    /// instant (even when it is past: it has not run).
    pub fn first(&self, start: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Clocked(c) => Some(c.at),
            _ => self.after(start, tz),
        }
    }

    /// The slot after `slot` (the last one that ran), or `None` when the
    /// schedule has no more (a clocked entry after its run, a crontab whose
    /// days never come again).
    pub fn after(&self, slot: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Interval(i) => i.after(slot, tz),
            Schedule::Crontab(c) => c.after(slot, tz),
            Schedule::Clocked(_) => None,
            Schedule::Solar(s) => s.after(slot),
        }
    }

    /// Whether the entry runs once only (clocked).
    pub fn is_one_off(&self) -> bool {
        matches!(self, Schedule::Clocked(_))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Interval(i) => write!(f, "<freq: {:?}>", i.every),
            Schedule::Crontab(c) => write!(f, "{c}"),
            Schedule::Clocked(c) => write!(f, "<clocked: {}>", c.at.to_rfc3339()),
            Schedule::Solar(s) => write!(f, "{s}"),
        }
    }
}

/// Celery's `schedule(run_every, relative=False)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Time between slots (positive).
    pub every: Duration,
    /// Round each slot down to the interval's resolution (whole days, hours
    /// or minutes of the entry's zone), as Celery's `relative=True`.
    pub relative: bool,
}

impl Interval {
    /// Every `every`; an error when it is zero.
    pub fn new(every: Duration) -> Result<Interval, String> {
        if every.is_zero() {
            return Err("an interval must be longer than zero".into());
        }
        if every > Duration::from_secs(100 * 366 * 86_400) {
            return Err(format!("an interval of {} s is longer than a century", every.as_secs()));
        }
        Ok(Interval { every, relative: false })
    }

    /// Every `secs` seconds (Celery's float seconds).
    pub fn from_secs_f64(secs: f64) -> Result<Interval, String> {
        if !secs.is_finite() || secs <= 0.0 {
            return Err(format!("an interval must be a positive number of seconds, got {secs}"));
        }
        if secs > 100.0 * 366.0 * 86_400.0 {
            return Err(format!("an interval of {secs} s is longer than a century"));
        }
        Interval::new(Duration::from_secs_f64(secs))
    }

    /// With Celery's `relative` rounding.
    pub fn relative(mut self, relative: bool) -> Interval {
        self.relative = relative;
        self
    }

    fn after(&self, slot: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let every = TimeDelta::from_std(self.every).ok()?;
        let next = slot.checked_add_signed(every)?;
        if !self.relative {
            return Some(next);
        }
        // celery.utils.time.delta_resolution: keep the fields down to the
        // interval's unit, in the zone's wall clock.
        let secs = self.every.as_secs_f64();
        let local = next.with_timezone(&tz).naive_local();
        let rounded = if secs >= 86_400.0 {
            local.date().and_hms_opt(0, 0, 0)?
        } else if secs >= 3600.0 {
            local.date().and_hms_opt(local.hour(), 0, 0)?
        } else if secs >= 60.0 {
            local.date().and_hms_opt(local.hour(), local.minute(), 0)?
        } else {
            return Some(next);
        };
        let at = resolve(tz, rounded);
        // Rounding may land on or before the slot that ran (a slot that
        // was not on the grid): the next grid point then.
        Some(if at <= slot { next } else { at })
    }
}

/// One instant, once (django-celery-beat's `clocked`).
#[derive(Debug, Clone, PartialEq)]
pub struct Clocked {
    /// When it runs.
    pub at: DateTime<Utc>,
}

/// Which rule a crontab's days follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayRule {
    /// Celery's: a day must be in day of month **and** day of week (and
    /// month of year).
    Celery,
    /// POSIX cron's: when both day of month and day of week are restricted
    /// (neither is `*`), a day in **either** matches.
    Posix,
}

/// A crontab: Celery's fields, or a POSIX cron string.
#[derive(Clone)]
pub struct Crontab {
    /// The fields as written: minute, hour, day of week, day of month,
    /// month of year (Celery's order).
    fields: [String; 5],
    rule: DayRule,
    cron: Box<Cron>,
}

impl fmt::Debug for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crontab").field("fields", &self.fields).field("rule", &self.rule).finish()
    }
}

impl PartialEq for Crontab {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields && self.rule == other.rule
    }
}

impl fmt::Display for Crontab {
    /// Celery's repr: `<crontab: m h dM MY d (m/h/dM/MY/d)>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [m, h, dw, dm, my] = &self.fields;
        match self.rule {
            DayRule::Celery => write!(f, "<crontab: {m} {h} {dm} {my} {dw} (m/h/dM/MY/d)>"),
            DayRule::Posix => write!(f, "<cron: {m} {h} {dm} {my} {dw}>"),
        }
    }
}

/// A crontab field as Python gives it: a number, a string spec, or a set.
#[derive(Debug, Clone, PartialEq)]
pub enum CronField {
    /// `crontab(hour=2)`.
    Int(i64),
    /// `crontab(minute="*/15")`.
    Spec(String),
    /// `crontab(day_of_week={1, 3})`.
    Set(Vec<i64>),
}

impl From<i64> for CronField {
    fn from(i: i64) -> Self {
        CronField::Int(i)
    }
}

impl From<&str> for CronField {
    fn from(s: &str) -> Self {
        CronField::Spec(s.to_string())
    }
}

impl CronField {
    fn text(&self) -> String {
        match self {
            CronField::Int(i) => i.to_string(),
            CronField::Spec(s) => s.clone(),
            CronField::Set(v) => v.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        }
    }
}

/// The five fields of Celery's `crontab()`, `*` where not given.
#[derive(Debug, Clone, PartialEq)]
pub struct CrontabSpec {
    /// `minute` (0–59).
    pub minute: CronField,
    /// `hour` (0–23).
    pub hour: CronField,
    /// `day_of_week` (0–6, Sunday = 0, or names `mon`…).
    pub day_of_week: CronField,
    /// `day_of_month` (1–31).
    pub day_of_month: CronField,
    /// `month_of_year` (1–12, or names `jan`…).
    pub month_of_year: CronField,
}

impl Default for CrontabSpec {
    fn default() -> Self {
        let star = || CronField::Spec("*".into());
        CrontabSpec { minute: star(), hour: star(), day_of_week: star(), day_of_month: star(), month_of_year: star() }
    }
}

/// Celery's `CRON_DAYS_IN_MONTH` (the longest February).
const DAYS_IN_MONTH: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTH_NAMES: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// `crontab_parser(max_, min_)` of `celery/schedules.py`: the set a field
/// spec stands for, with Celery's error messages.
fn celery_field(spec: &CronField, max: i64, min: i64) -> Result<Vec<i64>, String> {
    let values = match spec {
        CronField::Int(i) => vec![*i],
        CronField::Set(v) => v.clone(),
        CronField::Spec(s) => parse_spec(s, max, min)?,
    };
    for &n in &values {
        if n >= max + min || n < min {
            return Err(format!("Invalid crontab pattern.  Valid range is {min}-{}. '{n}' was found.", max - 1 + min));
        }
    }
    let mut values = values;
    values.sort_unstable();
    values.dedup();
    if values.is_empty() {
        return Err("empty set: the field would never match".into());
    }
    Ok(values)
}

/// The end of the run of word characters (Python's `\w`) from `i`.
fn word_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    j
}

/// Python's `int()` of a step, with its error text.
fn py_int(s: &str) -> Result<i64, String> {
    s.trim().parse::<i64>().map_err(|_| format!("invalid literal for int() with base 10: '{s}'"))
}

/// `values[::step]`.
fn stepped(values: Vec<i64>, step: &str) -> Result<Vec<i64>, String> {
    match py_int(step)? {
        0 => Err("slice step cannot be zero".into()),
        n if n > 0 => Ok(values.into_iter().step_by(n as usize).collect()),
        // `\w` has no `-`: a negative step cannot be written.
        _ => Err("empty filter".into()),
    }
}

/// `crontab_parser.parse`: the patterns tried in Celery's order, each
/// anchored at the start of the part as Python's `re.match` is (`a-b/n`,
/// `a-b`, `*/n`, `*`, then a single number or name).
fn parse_spec(spec: &str, max: i64, min: i64) -> Result<Vec<i64>, String> {
    let mut acc = Vec::new();
    for part in spec.split(',') {
        if part.is_empty() {
            return Err("empty part".into());
        }
        let b = part.as_bytes();
        let w1 = word_end(b, 0);
        let range =
            (w1 > 0 && b.get(w1) == Some(&b'-')).then(|| (w1, word_end(b, w1 + 1))).filter(|(_, w2)| *w2 > w1 + 1);
        let values = if let Some((w1, w2)) = range {
            let fr = expand_number(&part[..w1], max, min)?;
            let to = expand_number(&part[w1 + 1..w2], max, min)?;
            let values: Vec<i64> = if to < fr {
                // Celery wraps around the maximum: `fri-mon`.
                (fr..min + max).chain(min..=to).collect()
            } else {
                (fr..=to).collect()
            };
            if b.get(w2) == Some(&b'/') {
                let w3 = word_end(b, w2 + 1);
                if w3 == w2 + 1 {
                    return Err("empty filter".into());
                }
                stepped(values, &part[w2 + 1..w3])?
            } else {
                values
            }
        } else if let Some(rest) = part.strip_prefix("*/") {
            let w = word_end(rest.as_bytes(), 0);
            if w == 0 {
                return Err("empty filter".into());
            }
            stepped((min..max + min).collect(), &rest[..w])?
        } else if part == "*" {
            (min..max + min).collect()
        } else {
            vec![expand_number(part, max, min)?]
        };
        acc.extend(values);
    }
    Ok(acc)
}

fn expand_number(s: &str, max: i64, min: i64) -> Result<i64, String> {
    if s.starts_with('-') {
        return Err("negative numbers not supported".into());
    }
    let i = match s.trim().parse::<i64>() {
        Ok(i) => i,
        Err(_) => {
            let abbr = s.get(..3).unwrap_or(s).to_ascii_lowercase();
            if let Some(m) = MONTH_NAMES.iter().position(|n| *n == abbr) {
                m as i64 + 1
            } else if let Some(d) = DAY_NAMES.iter().position(|n| *n == abbr) {
                d as i64
            } else {
                return Err(format!("Invalid weekday literal '{s}'."));
            }
        }
    };
    let max_val = min + max - 1;
    if i > max_val {
        return Err(format!("Invalid end range: {i} > {max_val}."));
    }
    if i < min {
        return Err(format!("Invalid beginning range: {i} < {min}."));
    }
    Ok(i)
}

fn join(v: &[i64]) -> String {
    v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// A crontab error names the field it is in.
fn field_err(field: &str, e: impl fmt::Display) -> String {
    format!("{field}: {e}")
}

impl Crontab {
    /// Celery's `crontab(minute, hour, day_of_week, day_of_month,
    /// month_of_year)` with Celery's semantics and errors.
    ///
    /// ```
    /// use qbeat::{Crontab, CrontabSpec};
    /// let nightly = Crontab::celery(&CrontabSpec { hour: 2.into(), minute: 0.into(), ..Default::default() })?;
    /// assert_eq!(nightly.to_string(), "<crontab: 0 2 * * * (m/h/dM/MY/d)>");
    /// let err = Crontab::celery(&CrontabSpec { day_of_week: 7.into(), ..Default::default() }).unwrap_err();
    /// assert_eq!(err, "day_of_week: Invalid crontab pattern.  Valid range is 0-6. '7' was found.");
    /// # Ok::<(), String>(())
    /// ```
    pub fn celery(spec: &CrontabSpec) -> Result<Crontab, String> {
        let minute = celery_field(&spec.minute, 60, 0).map_err(|e| field_err("minute", e))?;
        let hour = celery_field(&spec.hour, 24, 0).map_err(|e| field_err("hour", e))?;
        let dow = celery_field(&spec.day_of_week, 7, 0).map_err(|e| field_err("day_of_week", e))?;
        let dom = celery_field(&spec.day_of_month, 31, 1).map_err(|e| field_err("day_of_month", e))?;
        let moy = celery_field(&spec.month_of_year, 12, 1).map_err(|e| field_err("month_of_year", e))?;
        let fields = [
            spec.minute.text(),
            spec.hour.text(),
            spec.day_of_week.text(),
            spec.day_of_month.text(),
            spec.month_of_year.text(),
        ];
        if !moy.iter().any(|&m| dom.iter().any(|&d| d as u32 <= DAYS_IN_MONTH[m as usize])) {
            return Err(format!(
                "Invalid crontab: day_of_month '{}' never occurs in month_of_year '{}'.",
                fields[3], fields[4]
            ));
        }
        // croner walks the calendar; with `dom_and_dow` it ANDs the day
        // fields as Celery does (its 0 is Sunday, as Celery's).
        let pattern = format!("{} {} {} {} {}", join(&minute), join(&hour), join(&dom), join(&moy), join(&dow));
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            .build()
            .parse(&pattern)
            .map_err(|e| format!("{pattern}: {e}"))?;
        Ok(Crontab { fields, rule: DayRule::Celery, cron: Box::new(cron) })
    }

    /// Celery's `crontab.from_string("m h dom mon dow")`: standard field
    /// order, Celery's semantics (day of month AND day of week, 0–6).
    pub fn from_celery_string(s: &str) -> Result<Crontab, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts[..] else {
            return Err(format!("expected 5 fields \"minute hour day_of_month month_of_year day_of_week\", got {s:?}"));
        };
        Crontab::celery(&CrontabSpec {
            minute: m.into(),
            hour: h.into(),
            day_of_week: dow.into(),
            day_of_month: dom.into(),
            month_of_year: mon.into(),
        })
    }

    /// A standard five-field cron string (`"30 2 * * 1-5"`) with **POSIX**
    /// semantics, not Celery's: when both day of month and day of week are
    /// restricted, a day matching either runs (cron(8)); day of week is
    /// 0–7 with both 0 and 7 Sunday; names (`mon`, `jan`), `L`, `#` and
    /// `W` as croner reads them. No seconds or year field.
    pub fn posix(s: &str) -> Result<Crontab, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts[..] else {
            return Err(format!("expected 5 fields \"minute hour day_of_month month day_of_week\", got {s:?}"));
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&parts.join(" "))
            .map_err(|e| format!("{s:?}: {e}"))?;
        // A pattern that never matches (31 February) has no next time.
        let probe = NaiveDateTime::default();
        cron.find_next_occurrence(&probe, false).map_err(|e| format!("{s:?} never matches: {e}"))?;
        Ok(Crontab { fields: [m, h, dow, dom, mon].map(str::to_string), rule: DayRule::Posix, cron: Box::new(cron) })
    }

    /// Which day rule this crontab follows.
    pub fn day_rule(&self) -> DayRule {
        self.rule
    }

    /// Whether the wall-clock minute `local` is one of this crontab's.
    pub fn matches(&self, local: NaiveDateTime) -> bool {
        let minute = local.with_second(0).and_then(|t| t.with_nanosecond(0));
        minute == Some(local) && self.cron.is_time_matching(&local).unwrap_or(false)
    }

    /// The first slot strictly after the instant `t`, in `tz`.
    fn after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Local-to-UTC resolution is non-decreasing in local time (see
        // `tz`), so walk local slots from `t`'s own wall-clock time: slots
        // before it resolve at or before `t`. A handful of steps are needed
        // only inside a fall-back overlap, where slots of the second pass
        // resolve to their first occurrence, before `t`.
        let mut local = t.with_timezone(&tz).naive_local();
        for _ in 0..10_000 {
            local = self.cron.find_next_occurrence(&local, false).ok()?;
            let at = resolve(tz, local);
            if at > t {
                return Some(at);
            }
        }
        None
    }

    /// The next slot as a local date, for tests and displays: the first
    /// matching wall-clock minute after `local`.
    pub fn next_local(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&local, false).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field spec of the fixture expands, or fails with the text,
    /// exactly as Celery 5.7's `crontab._expand_cronspec` did.
    #[test]
    fn field_specs_as_celery_expands_them() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/celery_crontab_fields.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() > 200);
        for case in cases {
            let field = case["field"].as_str().unwrap();
            let spec = case["spec"].as_str().unwrap();
            let (max, min) = match field {
                "minute" => (60, 0),
                "hour" => (24, 0),
                "day_of_week" => (7, 0),
                "day_of_month" => (31, 1),
                _ => (12, 1),
            };
            let got = celery_field(&CronField::Spec(spec.into()), max, min);
            match (&got, case.get("values"), case.get("error")) {
                (Ok(v), Some(want), _) => {
                    let want: Vec<i64> = serde_json::from_value(want.clone()).unwrap();
                    assert_eq!(v, &want, "{field} {spec:?}");
                }
                (Err(e), _, Some(want)) => assert_eq!(e, want.as_str().unwrap(), "{field} {spec:?}"),
                _ => panic!("{field} {spec:?}: got {got:?}, Celery: {case}"),
            }
        }
    }
}
