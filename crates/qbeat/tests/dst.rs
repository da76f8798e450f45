//! The daylight-saving policy, checked in every zone of the IANA database
//! (chrono-tz's `TZ_VARIANTS`) for every offset change of 2000–2040:
//!
//! * a wall-clock time a change skips runs at the first instant after the
//!   gap (the instant of the change);
//! * a wall-clock time a change repeats runs once, at its first occurrence;
//! * walking a crontab's slots across the change (every minute, hourly and
//!   daily schedules placed inside the gap or overlap) gives exactly the
//!   instants of the matching wall-clock minutes under those two rules:
//!   no slot skipped, none doubled, in increasing order.
//!
//! The expected instants come from the change itself (its instant and the
//! offsets before and after), not from the code under test. Changes are
//! found by sampling each zone's offset weekly and bisecting to the second;
//! the resolution rules are checked at every change, the schedule walks at
//! two pairs of changes per zone (spread over the years) to keep the run
//! short.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::{Tz, TZ_VARIANTS};
use qbeat::tz::resolve;
use qbeat::{Crontab, CrontabSpec, Schedule};

fn offset(tz: Tz, t: i64) -> i64 {
    let at = DateTime::<Utc>::from_timestamp(t, 0).unwrap();
    i64::from(tz.offset_from_utc_datetime(&at.naive_utc()).fix().local_minus_utc())
}

/// A change of offset: at `at` (UTC seconds) from `before` to `after`.
#[derive(Debug, Clone, Copy)]
struct Change {
    at: i64,
    before: i64,
    after: i64,
}

fn changes(tz: Tz) -> Vec<Change> {
    let start = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap().timestamp();
    let end = Utc.with_ymd_and_hms(2041, 1, 1, 0, 0, 0).unwrap().timestamp();
    let week = 7 * 86_400;
    let mut out = Vec::new();
    let mut t = start;
    let mut prev = offset(tz, t);
    while t < end {
        let next = t + week;
        let off = offset(tz, next);
        if off != prev {
            let (mut lo, mut hi) = (t, next);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset(tz, mid) == prev {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push(Change { at: hi, before: prev, after: offset(tz, hi) });
            prev = offset(tz, hi);
            // Two changes within the week: sample again from this one.
            t = hi;
            continue;
        }
        t = next;
    }
    out
}

fn naive(t: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp(t, 0).unwrap().naive_utc()
}

fn utc(t: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t, 0).unwrap()
}

/// The instant the policy gives the local time `l` near change `c`,
/// computed from the change alone.
fn expected(c: Change, l: NaiveDateTime) -> i64 {
    let l = l.and_utc().timestamp();
    let (gap_or_overlap_start, end) = if c.after > c.before {
        (c.at + c.before, c.at + c.after) // local [start, end) skipped
    } else {
        (c.at + c.after, c.at + c.before) // local [start, end) repeated
    };
    if l < gap_or_overlap_start {
        l - c.before
    } else if l >= end {
        l - c.after
    } else if c.after > c.before {
        c.at
    } else {
        l - c.before
    }
}

fn crontab(minute: &str, hour: &str) -> Schedule {
    Schedule::Crontab(
        Crontab::celery(&CrontabSpec { minute: minute.into(), hour: hour.into(), ..Default::default() }).unwrap(),
    )
}

/// Walk `schedule` over the hour and a half either side of the change and compare with
/// the expected instants of its matching local minutes.
fn walk(tz: Tz, c: Change, schedule: &Schedule, matches: impl Fn(NaiveDateTime) -> bool, what: &str) {
    let from = c.at - 90 * 60;
    let to = c.at + 90 * 60;
    let mut want = BTreeSet::new();
    // Every local minute that the window's instants show, either offset.
    let first_local = (from + c.before.min(c.after)) / 60 * 60;
    let last_local = to + c.before.max(c.after);
    let mut l = first_local;
    while l <= last_local {
        let local = naive(l);
        if matches(local) {
            let at = expected(c, local);
            if at > from && at <= to {
                want.insert(at);
            }
        }
        l += 60;
    }
    let mut got = Vec::new();
    let mut t = utc(from);
    while let Some(next) = schedule.after(t, tz) {
        if next.timestamp() > to {
            break;
        }
        assert!(next > t, "{tz} {c:?} {what}: {next} not after {t}");
        got.push(next.timestamp());
        t = next;
    }
    let want: Vec<i64> = want.into_iter().collect();
    if got != want {
        let show = |v: &[i64]| v.iter().map(|t| utc(*t).to_rfc3339()).collect::<Vec<_>>().join(" ");
        panic!("{tz} {c:?} {what}:\n got {}\nwant {}", show(&got), show(&want));
    }
}

#[test]
fn every_zone_every_change_2000_2040() {
    let mut zones_with_changes = 0;
    let mut checked_changes = 0;
    let mut walked_gaps = 0;
    let mut walked_overlaps = 0;
    for &tz in TZ_VARIANTS.iter() {
        let all = changes(tz);
        if all.is_empty() {
            continue;
        }
        zones_with_changes += 1;
        // Walks at two pairs of changes (a change and the next, so both
        // a gap and an overlap where the zone has both), spread over the years.
        let stride = all.len().div_ceil(2).div_ceil(2).max(1);
        for (i, &c) in all.iter().enumerate() {
            // Changes less than a day apart overlap each other's windows.
            let isolated =
                all.get(i + 1).is_none_or(|n| n.at - c.at > 86_400) && (i == 0 || c.at - all[i - 1].at > 86_400);
            if !isolated {
                continue;
            }
            checked_changes += 1;
            let width = (c.after - c.before).abs();
            let start_local = c.at + c.before.min(c.after);
            // Inside the gap or overlap: its first second, middle, last second.
            for l in [start_local, start_local + width / 2, start_local + width - 1] {
                let local = naive(l);
                assert_eq!(resolve(tz, local).timestamp(), expected(c, local), "{tz} {c:?} local {local}");
            }
            // Just outside: unambiguous times keep their one instant.
            let before = naive(start_local - 1);
            assert_eq!(resolve(tz, before).timestamp(), start_local - 1 - c.before, "{tz} {c:?}");
            if (i / 2) % stride != 0 {
                continue;
            }
            if c.after > c.before {
                walked_gaps += 1;
            } else {
                walked_overlaps += 1;
            }
            let mid = naive(start_local + width / 2);
            let (h, m) = (mid.hour(), mid.minute());
            walk(tz, c, &crontab("*", "*"), |_| true, "every minute");
            walk(tz, c, &crontab(&m.to_string(), "*"), |l| l.minute() == m, "hourly");
            walk(tz, c, &crontab(&m.to_string(), &h.to_string()), |l| l.minute() == m && l.hour() == h, "daily");
        }
    }
    // The database has hundreds of zones with changes in those years.
    assert!(zones_with_changes > 300, "{zones_with_changes}");
    assert!(checked_changes > 10_000, "{checked_changes}");
    eprintln!("{zones_with_changes} zones, {checked_changes} changes, walks at {walked_gaps} gaps and {walked_overlaps} overlaps");
    assert!(walked_gaps > 500 && walked_overlaps > 500, "{walked_gaps} {walked_overlaps}");
}

#[test]
fn dst_days_in_paris_and_new_york() {
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    // Daily 02:30: on 2026-03-29 02:30 does not exist in Paris: it runs at 03:00 (01:00 UTC).
    let daily = crontab("30", "2");
    assert_eq!(daily.after(at("2026-03-28T12:00:00Z"), paris), Some(at("2026-03-29T01:00:00Z")));
    assert_eq!(daily.after(at("2026-03-29T01:00:00Z"), paris), Some(at("2026-03-30T00:30:00Z")));
    // On 2026-10-25 02:30 happens twice: once, at the first (00:30 UTC).
    assert_eq!(daily.after(at("2026-10-24T12:00:00Z"), paris), Some(at("2026-10-25T00:30:00Z")));
    assert_eq!(daily.after(at("2026-10-25T00:30:00Z"), paris), Some(at("2026-10-26T01:30:00Z")));
    // Every 30 minutes through New York's fall back: 01:00 and 01:30 once each.
    let ny: Tz = "America/New_York".parse().unwrap();
    let half = crontab("*/30", "*");
    let mut t = at("2026-11-01T04:00:00Z"); // 00:00 EDT
    let mut got = Vec::new();
    for _ in 0..5 {
        t = half.after(t, ny).unwrap();
        got.push(t.with_timezone(&ny).format("%H:%M%z").to_string());
    }
    assert_eq!(got, ["00:30-0400", "01:00-0400", "01:30-0400", "02:00-0500", "02:30-0500"]);
}
