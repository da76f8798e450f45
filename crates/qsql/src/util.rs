//! Small helpers: names, hashes, times.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, Utc};

/// FNV-1a, 64 bit: stable across processes and versions (names of
/// notification channels, advisory lock keys).
pub(crate) fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Table names, qualified with the schema when one is set.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `"schema".` or empty.
    prefix: String,
    /// The schema, or `public` when none was given (for channel names).
    pub(crate) schema_key: String,
}

impl Names {
    pub(crate) fn new(schema: Option<&str>) -> Self {
        match schema {
            Some(s) => Names { prefix: format!("\"{s}\"."), schema_key: s.to_string() },
            None => Names { prefix: String::new(), schema_key: "public".into() },
        }
    }

    /// `name` qualified with the schema.
    pub(crate) fn t(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A sequence name as a string literal for `nextval(...)`.
    pub(crate) fn seq_literal(&self, name: &str) -> String {
        format!("'{}{name}'", self.prefix)
    }

    /// A notification channel name for `what` in this schema (at most 63 bytes).
    pub(crate) fn channel(&self, what: &str) -> String {
        format!("qtask_{what}_{:016x}", fnv64(&self.schema_key))
    }

    /// The advisory lock key serialising migrations of this schema.
    pub(crate) fn lock_key(&self) -> i64 {
        i64::from_ne_bytes(fnv64(&format!("qtask-migrate:{}", self.schema_key)).to_ne_bytes())
    }
}

/// Milliseconds since the Unix epoch (SQLite timestamps).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A UTC time as Unix milliseconds.
pub(crate) fn to_ms(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// `date_done` as SQLAlchemy writes it on SQLite: `2026-11-22 02:26:55.920358`.
pub(crate) fn sqlite_datetime(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parse a SQLite DATETIME text in the forms SQLAlchemy and sqlx write.
pub(crate) fn parse_sqlite_datetime(s: &str) -> Option<NaiveDateTime> {
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t);
        }
    }
    qcore::time::parse_iso(s).ok().map(|t| t.naive_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_and_channels_short() {
        let n = Names::new(Some("qtask_test_abc"));
        assert_eq!(n.t("celery_taskmeta"), "\"qtask_test_abc\".celery_taskmeta");
        assert_eq!(n.seq_literal("task_id_sequence"), "'\"qtask_test_abc\".task_id_sequence'");
        assert!(n.channel("result").len() <= 63);
        assert_ne!(n.channel("result"), Names::new(None).channel("result"));
        assert_eq!(Names::new(None).t("x"), "x");
    }

    #[test]
    fn sqlite_datetimes_round_trip() {
        let t = NaiveDateTime::parse_from_str("2026-11-22 02:26:55.920358", "%Y-%m-%d %H:%M:%S%.f").unwrap();
        assert_eq!(sqlite_datetime(&t), "2026-11-22 02:26:55.920358");
        assert_eq!(parse_sqlite_datetime("2026-11-22 02:26:55.920358"), Some(t));
        assert!(parse_sqlite_datetime("2026-11-22 02:26:55").is_some());
        assert!(parse_sqlite_datetime("nope").is_none());
    }
}
