//! Crontab slots against Celery 5.7's own: for 240 crontabs (Celery's field
//! syntax, day of month AND day of week) in UTC and Asia/Tokyo, the next
//! three runs Celery's `remaining_estimate` gives from a random start in
//! 2026–2027 (`tests/fixtures/celery_crontab_next.json`, made by
//! `gen_celery_crontab_next.py` next to it).

use chrono::{DateTime, Utc};
use qbeat::{CronField, Crontab, CrontabSpec, Schedule};

#[test]
fn next_runs_as_celery_computes_them() {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/celery_crontab_next.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "{}", cases.len());
    let at = |v: &serde_json::Value| DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&Utc);
    for case in cases {
        let spec = &case["spec"];
        let f = |k: &str| CronField::Spec(spec[k].as_str().unwrap().to_string());
        let cron = Crontab::celery(&CrontabSpec {
            minute: f("minute"),
            hour: f("hour"),
            day_of_week: f("day_of_week"),
            day_of_month: f("day_of_month"),
            month_of_year: f("month_of_year"),
        })
        .unwrap();
        let schedule = Schedule::Crontab(cron);
        let tz: chrono_tz::Tz = case["zone"].as_str().unwrap().parse().unwrap();
        let mut t = at(&case["after"]);
        for want in case["next"].as_array().unwrap() {
            let got = schedule.after(t, tz).unwrap();
            assert_eq!(got, at(want), "{case}");
            t = got;
        }
    }
}
