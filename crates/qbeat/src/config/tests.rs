use super::*;
use chrono::{NaiveDate, TimeZone};

fn entries(toml: &str) -> Result<Vec<Entry>, Error> {
    let cfg = Config::from_toml_str(toml)?;
    entries_from_config(&cfg, None)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn the_seed_schedule_in_celery_names() {
    let e = entries(
        r#"
        timezone = "Europe/Paris"
        [beat_schedule.daily-report]
        task = "reports.daily"
        schedule = 86400.0
        [beat_schedule.cleanup]
        task = "maintenance.cleanup"
        schedule = "crontab(hour=2, minute=0)"
        args = [30, "days"]
        kwargs = { dry_run = false }
        options = { queue = "maintenance", priority = 5, expires = 3600, headers = { team = "ops" } }
        [beat_schedule.subscriptions]
        task = "billing.check"
        schedule = { minute = 0 }
        timezone = "America/New_York"
        catch_up = "skip"
        misfire_grace = 300
        "#,
    )
    .unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].name, "daily-report");
    assert_eq!(e[0].schedule, Schedule::Interval(Interval::new(Duration::from_secs(86_400)).unwrap()));
    let cleanup = &e[1];
    assert_eq!(cleanup.schedule.to_string(), "<crontab: 0 2 * * * (m/h/dM/MY/d)>");
    assert_eq!(cleanup.args, vec![serde_json::json!(30), serde_json::json!("days")]);
    assert_eq!(cleanup.kwargs["dry_run"], serde_json::json!(false));
    assert_eq!(cleanup.options.queue.as_deref(), Some("maintenance"));
    assert_eq!(cleanup.options.priority, Some(5));
    assert_eq!(cleanup.options.expires, Some(Expires::In(Duration::from_secs(3600))));
    assert_eq!(cleanup.options.headers["team"], serde_json::json!("ops"));
    assert_eq!(cleanup.catch_up, CatchUp::Latest);
    // 02:00 Paris: 01:00 UTC in winter.
    let paris = default_zone(&Config::from_toml_str("timezone = \"Europe/Paris\"").unwrap()).unwrap();
    assert_eq!(cleanup.schedule.after(utc("2026-01-10T12:00:00Z"), paris), Some(utc("2026-01-11T01:00:00Z")));
    let subs = &e[2];
    assert_eq!(subs.timezone, Some(chrono_tz::America::New_York));
    assert_eq!(subs.catch_up, CatchUp::Skip);
    assert_eq!(subs.misfire_grace, Some(Duration::from_secs(300)));
}

#[test]
fn schedule_forms() {
    let one = |s: &str| -> Result<Schedule, Error> {
        let e = entries(&format!("[beat_schedule.x]\ntask = \"t\"\nschedule = {s}\n"))?;
        Ok(e[0].schedule.clone())
    };
    assert_eq!(one("10").unwrap(), Schedule::Interval(Interval::new(Duration::from_secs(10)).unwrap()));
    assert_eq!(one("\"timedelta(hours=1, minutes=30)\"").unwrap().to_string(), "<freq: 5400s>");
    assert_eq!(one("{ every = 2, period = \"minutes\" }").unwrap().to_string(), "<freq: 120s>");
    assert_eq!(one("\"crontab('0', '4', '*')\"").unwrap().to_string(), "<crontab: 0 4 * * * (m/h/dM/MY/d)>");
    assert_eq!(
        one("\"crontab(minute='*/15', day_of_week={1, 3})\"").unwrap().to_string(),
        "<crontab: */15 * * * 1,3 (m/h/dM/MY/d)>"
    );
    assert_eq!(
        one("{ day_of_week = \"mon-fri\", hour = [8, 17] }").unwrap().to_string(),
        "<crontab: * 8,17 * * mon-fri (m/h/dM/MY/d)>"
    );
    let posix = one("{ cron = \"30 6 * * 1-5\" }").unwrap();
    let Schedule::Crontab(c) = &posix else { panic!("{posix:?}") };
    assert_eq!(c.day_rule(), crate::DayRule::Posix);
    assert_eq!(
        one("\"solar('sunset', 48.8566, 2.3522)\"").unwrap().to_string(),
        "<solar: sunset at latitude 48.8566, longitude: 2.3522>"
    );
    assert_eq!(
        one("{ event = \"dawn_civil\", latitude = -33.87, longitude = 151 }").unwrap().to_string(),
        "<solar: dawn_civil at latitude -33.87, longitude: 151>"
    );
    assert!(one("\"solar('sunup', 0, 0)\"").unwrap_err().to_string().contains("Argument event \"sunup\" is invalid"));
    let clocked = one("{ clocked_time = \"2026-12-24T18:00:00+01:00\" }").unwrap();
    assert_eq!(clocked, Schedule::Clocked(Clocked { at: utc("2026-12-24T17:00:00Z") }));
}

#[test]
fn errors_name_the_entry_and_field() {
    let err = |toml: &str| entries(toml).unwrap_err().to_string();
    let e = err("[beat_schedule.nightly]\ntask = \"t\"\nschedule = \"crontab(hour=25)\"");
    assert!(
        e.contains(
            "beat_schedule.nightly.schedule: hour: Invalid crontab pattern.  Valid range is 0-23. '25' was found."
        ),
        "{e}"
    );
    let e = err("[beat_schedule.nightly]\ntask = \"t\"\nschedule = \"crontab(day_of_week='7')\"");
    assert!(e.contains("day_of_week: Invalid end range: 7 > 6."), "{e}");
    let e = err("[beat_schedule.feb]\ntask = \"t\"\nschedule = { day_of_month = 30, month_of_year = 2 }");
    assert!(
        e.contains("beat_schedule.feb.schedule: Invalid crontab: day_of_month '30' never occurs in month_of_year '2'."),
        "{e}"
    );
    let e = err("[beat_schedule.x]\nschedule = 10");
    assert!(e.contains("beat_schedule.x.task: missing"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"");
    assert!(e.contains("beat_schedule.x.schedule: missing"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = 0");
    assert!(e.contains("beat_schedule.x.schedule: an interval must be a positive number of seconds, got 0"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\noptions = { prio = 1 }");
    assert!(e.contains("beat_schedule.x.options.prio: unknown option"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\ntimezone = \"Mars/Olympus\"");
    assert!(e.contains("beat_schedule.x.timezone: unknown time zone \"Mars/Olympus\""), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\ncatch_up = \"some\"");
    assert!(e.contains("beat_schedule.x.catch_up: expected \"skip\", \"latest\" or \"all\""), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = \"crontab(hour=2, minute=0\"");
    assert!(e.contains("beat_schedule.x.schedule: cannot read"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = \"crontab(hours=2)\"");
    assert!(e.contains("crontab() got an unexpected keyword argument 'hours'"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = \"crontab(minute='*/')\"");
    assert!(e.contains("minute: empty filter"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = { cron = \"0 2 * *\" }");
    assert!(e.contains("expected 5 fields"), "{e}");
    let e = err("[beat_schedule.x]\ntask = \"t\"\nschedule = 5\nqueue = \"q\"");
    assert!(e.contains("beat_schedule.x.queue: unknown field"), "{e}");
}

#[test]
fn celery_crontab_semantics() {
    let spec = |f: &dyn Fn(&mut CrontabSpec)| {
        let mut s = CrontabSpec::default();
        f(&mut s);
        Crontab::celery(&s).unwrap()
    };
    let at = |y, m, d, h, min| NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap();
    // Sunday = 0. 2026-12-06 is a Sunday.
    let sunday = spec(&|s| {
        s.day_of_week = 0.into();
        s.hour = 9.into();
        s.minute = 0.into();
    });
    assert_eq!(sunday.next_local(at(2026, 12, 1, 0, 0)), Some(at(2026, 12, 6, 9, 0)));
    // Day of month AND day of week (POSIX would take either): the 13th that is a Friday.
    let friday13 = spec(&|s| {
        s.day_of_week = "fri".into();
        s.day_of_month = 13.into();
        s.hour = 0.into();
        s.minute = 0.into();
    });
    assert_eq!(friday13.next_local(at(2026, 1, 1, 0, 0)), Some(at(2026, 2, 13, 0, 0)));
    let posix = Crontab::posix("0 0 13 * 5").unwrap();
    assert_eq!(posix.next_local(at(2026, 1, 1, 0, 0)), Some(at(2026, 1, 2, 0, 0)), "POSIX: the 13th or a Friday");
    assert_eq!(Crontab::posix("0 0 * * 7").unwrap().next_local(at(2026, 12, 1, 0, 0)), Some(at(2026, 12, 6, 0, 0)));
    // `*/2` of day of week: Sun, Tue, Thu, Sat.
    let even = spec(&|s| {
        s.day_of_week = "*/2".into();
        s.hour = 0.into();
        s.minute = 0.into();
    });
    assert_eq!(even.next_local(at(2026, 12, 6, 0, 0)), Some(at(2026, 12, 8, 0, 0)));
    // Ranges wrap around: fri-mon.
    let weekend = spec(&|s| {
        s.day_of_week = "fri-mon".into();
        s.hour = 0.into();
        s.minute = 0.into();
    });
    assert_eq!(weekend.next_local(at(2026, 12, 8, 0, 0)), Some(at(2026, 12, 11, 0, 0)));
    assert_eq!(weekend.next_local(at(2026, 12, 13, 0, 0)), Some(at(2026, 12, 14, 0, 0)));
    assert!(weekend.matches(at(2026, 12, 12, 0, 0)));
    // Steps over a range, Celery's `[::n]`.
    let quarter = spec(&|s| s.minute = "10-50/20".into());
    assert_eq!(quarter.next_local(at(2026, 1, 1, 0, 10)), Some(at(2026, 1, 1, 0, 30)));
    assert_eq!(quarter.next_local(at(2026, 1, 1, 0, 50)), Some(at(2026, 1, 1, 1, 10)));
    let utc_tz = chrono_tz::UTC;
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(Schedule::Crontab(quarter).after(t, utc_tz), Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 10, 0).unwrap()));
}

#[test]
fn relative_intervals_round_to_their_unit() {
    let hourly = Schedule::Interval(Interval::new(Duration::from_secs(3600)).unwrap().relative(true));
    let plain = Schedule::Interval(Interval::new(Duration::from_secs(3600)).unwrap());
    let start = utc("2026-12-06T10:17:23Z");
    assert_eq!(hourly.first(start, Tz::UTC), Some(utc("2026-12-06T11:00:00Z")));
    assert_eq!(hourly.after(utc("2026-12-06T11:00:00Z"), Tz::UTC), Some(utc("2026-12-06T12:00:00Z")));
    assert_eq!(plain.first(start, Tz::UTC), Some(utc("2026-12-06T11:17:23Z")));
    // Days round to local midnight.
    let daily = Schedule::Interval(Interval::new(Duration::from_secs(86_400)).unwrap().relative(true));
    assert_eq!(daily.first(start, chrono_tz::Europe::Paris), Some(utc("2026-12-06T23:00:00Z")));
}

#[test]
fn a_schedule_file_adds_and_overrides_entries() {
    let dir = std::env::temp_dir().join(format!(
        "qbeat-schedule-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("schedule.toml");
    std::fs::write(
        &file,
        r#"
        [beat_schedule.cleanup]
        task = "maintenance.cleanup_v2"
        schedule = "crontab(hour=3, minute=15)"
        [beat_schedule.ping]
        task = "tasks.ping"
        schedule = 30
        "#,
    )
    .unwrap();
    let cfg = Config::from_toml_str(
        r#"
        [beat_schedule.cleanup]
        task = "maintenance.cleanup"
        schedule = "crontab(hour=2, minute=0)"
        [beat_schedule.report]
        task = "reports.daily"
        schedule = 86400
        "#,
    )
    .unwrap();
    let entries = entries_from_config(&cfg, Some(&file)).unwrap();
    let names: Vec<(&str, &str)> = entries.iter().map(|e| (e.name.as_str(), e.task.as_str())).collect();
    assert_eq!(names, [("report", "reports.daily"), ("cleanup", "maintenance.cleanup_v2"), ("ping", "tasks.ping")]);
    std::fs::write(&file, "[beat_schedule.bad]\ntask = \"t\"\nschedule = \"crontab(minute=60)\"\n").unwrap();
    let e = entries_from_config(&cfg, Some(&file)).unwrap_err().to_string();
    assert!(e.contains("schedule.toml: beat_schedule.bad.schedule: minute: Invalid crontab pattern"), "{e}");
    std::fs::write(&file, "timezone = \"UTC\"\n").unwrap();
    let e = entries_from_config(&cfg, Some(&file)).unwrap_err().to_string();
    assert!(e.contains("schedule.toml: no beat_schedule table"), "{e}");
    let e = entries_from_config(&cfg, Some(&dir.join("missing.toml"))).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn beat_cron_starting_deadline_is_the_grace_of_crontabs() {
    let e = entries(
        r#"
        beat_cron_starting_deadline = 120
        [beat_schedule.cron]
        task = "t"
        schedule = "crontab(minute=0)"
        [beat_schedule.cron-own-grace]
        task = "t"
        schedule = "crontab(minute=0)"
        misfire_grace = 5
        [beat_schedule.interval]
        task = "t"
        schedule = 60
        "#,
    )
    .unwrap();
    let graces: Vec<Option<Duration>> = e.iter().map(|e| e.misfire_grace).collect();
    assert_eq!(graces, [Some(Duration::from_secs(120)), Some(Duration::from_secs(5)), None]);
}
