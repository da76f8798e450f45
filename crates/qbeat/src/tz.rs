//! Local wall-clock times to UTC instants, with the beat's one policy for
//! the times a daylight-saving change skips or repeats.
//!
//! * **Nonexistent** local time (spring forward, the clock jumps from 02:00
//!   to 03:00): the slot runs at the first instant after the gap, the
//!   instant of the change (03:00 new time). Every slot inside the gap
//!   therefore runs once, at that instant, and slots that land on the same
//!   instant run once together.
//! * **Ambiguous** local time (fall back, 01:00 to 02:00 happens twice): the
//!   slot runs once, at its first occurrence (summer time); the second pass
//!   through the same wall-clock times runs nothing already run.
//!
//! The rule makes the local-to-UTC map non-decreasing in local time, which
//! is what lets a schedule walk local slots in order and stop at the first
//! one after a given instant.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// The UTC instant a local wall-clock time in `tz` stands for, by the policy
/// above.
pub fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => gap_end(tz, local),
    }
}

/// The instant a gap containing `local` ends: the first instant whose local
/// time is past the gap.
fn gap_end(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    // Read with the offset in force a day before (the one the gap jumps
    // from), `local` is an instant at or after the change; read with the
    // offset a day after, an instant before it. The change lies between:
    // find it to the second.
    let probe = |naive: NaiveDateTime| -> i64 {
        let utc = Utc.from_utc_datetime(&naive);
        i64::from(tz.offset_from_utc_datetime(&utc.naive_utc()).fix().local_minus_utc())
    };
    let day = chrono::Duration::days(1);
    let before = probe(local - day);
    let after = probe(local + day);
    let hi = (local - chrono::Duration::seconds(before)).and_utc().timestamp();
    let lo = (local - chrono::Duration::seconds(after)).and_utc().timestamp();
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    // Invariant: the offset at `hi` is the new one; `lo` is before the change.
    let offset_at = |ts: i64| -> i32 {
        let t = DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or_default();
        tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc()
    };
    let new = offset_at(hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_at(mid) == new {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0).unwrap_or_default()
}

/// Parse an IANA zone name (`"Europe/Paris"`, `"UTC"`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (expected an IANA name like \"Europe/Paris\")"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap()
    }

    #[test]
    fn paris_gap_and_overlap() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // 2024-03-31 02:30 does not exist; the change is at 01:00 UTC.
        assert_eq!(resolve(tz, at(2024, 3, 31, 2, 30)).to_rfc3339(), "2024-03-31T01:00:00+00:00");
        // 2024-10-27 02:30 happens twice: first at 00:30 UTC (CEST).
        assert_eq!(resolve(tz, at(2024, 10, 27, 2, 30)).to_rfc3339(), "2024-10-27T00:30:00+00:00");
        assert_eq!(resolve(tz, at(2024, 7, 1, 12, 0)).to_rfc3339(), "2024-07-01T10:00:00+00:00");
    }

    #[test]
    fn samoa_skipped_a_whole_day() {
        let tz: Tz = "Pacific/Apia".parse().unwrap();
        // 2011-12-30 did not exist in Samoa: the 29th at 24:00 (-10) became the 31st at 00:00 (+14).
        assert_eq!(resolve(tz, at(2011, 12, 30, 9, 0)).to_rfc3339(), "2011-12-30T10:00:00+00:00");
    }

    #[test]
    fn zone_names() {
        assert!(parse_zone("Europe/Paris").is_ok());
        assert!(parse_zone("UTC").is_ok());
        let err = parse_zone("Europe/Pariss").unwrap_err();
        assert!(err.contains("unknown time zone \"Europe/Pariss\""), "{err}");
    }
}
