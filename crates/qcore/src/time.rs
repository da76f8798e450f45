//! Dates as Celery writes them: ISO-8601 like Python's `datetime.isoformat()`.

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};

use crate::error::ProtocolError;

/// Parse an ISO-8601 date as Celery sends it: with an offset
/// (`2026-11-22T02:17:17.503662+00:00`) or naive (`2030-01-02T03:04:05`,
/// taken as UTC, as Celery does with `enable_utc`).
pub fn parse_iso(s: &str) -> Result<DateTime<Utc>, ProtocolError> {
    if let Ok(dt) = DateTime::<FixedOffset>::parse_from_rfc3339(s) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(n.and_utc());
        }
    }
    if let Ok(dt) = DateTime::<FixedOffset>::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(dt.with_timezone(&Utc));
    }
    Err(ProtocolError::Invalid(format!("invalid ISO-8601 date {s:?}")))
}

/// Format like Python's `datetime.isoformat()` for an aware UTC datetime:
/// microseconds when non-zero, and `+00:00`.
pub fn format_iso(dt: &DateTime<Utc>) -> String {
    let fmt = if dt.timestamp_subsec_micros() == 0 { SecondsFormat::Secs } else { SecondsFormat::Micros };
    dt.to_rfc3339_opts(fmt, false)
}

/// Serde adapter for `Option<DateTime<Utc>>` in Python isoformat.
pub mod opt_iso {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as an isoformat string or null.
    pub fn serialize<S: Serializer>(v: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(dt) => s.serialize_str(&super::format_iso(dt)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from an isoformat string (aware or naive) or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_iso(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// UNIX time now, in seconds (what Celery's `time.time()` gives).
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aware_and_naive_and_formats_like_python() {
        let a = parse_iso("2026-11-22T02:17:17.503662+00:00").unwrap();
        assert_eq!(format_iso(&a), "2026-11-22T02:17:17.503662+00:00");
        let n = parse_iso("2030-01-02T03:04:05").unwrap();
        assert_eq!(format_iso(&n), "2030-01-02T03:04:05+00:00");
        let o = parse_iso("2030-01-03T01:00:00+01:00").unwrap();
        assert_eq!(format_iso(&o), "2030-01-03T00:00:00+00:00");
        assert!(parse_iso("yesterday").is_err());
    }
}
