//! Task states, spelled as Celery spells them on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The state of a task as stored in a result backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// Unknown or not yet run (never stored; what a missing key means).
    Pending,
    /// A worker received the message (events only).
    Received,
    /// Running (stored with `task_track_started`).
    Started,
    /// Failed and will be retried.
    Retry,
    /// Returned normally.
    Success,
    /// Raised an error.
    Failure,
    /// Revoked, terminated or expired.
    Revoked,
    /// Rejected by the task.
    Rejected,
    /// The result is ignored.
    Ignored,
    /// A custom state set by `update_state`, such as `PROGRESS`.
    Custom(String),
}

impl State {
    /// The custom `PROGRESS` state used for progress reports.
    pub fn progress() -> State {
        State::Custom("PROGRESS".into())
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Ignored => "IGNORED",
            State::Custom(s) => s,
        }
    }

    /// Parse the wire spelling; anything unknown is a custom state.
    pub fn parse(s: &str) -> State {
        match s {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "REJECTED" => State::Rejected,
            "IGNORED" => State::Ignored,
            other => State::Custom(other.to_string()),
        }
    }

    /// SUCCESS, FAILURE and REVOKED: the task will not change any more.
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// States whose `result` holds an exception map.
    pub fn is_exception(&self) -> bool {
        matches!(self, State::Retry | State::Failure | State::Revoked)
    }

    /// FAILURE and REVOKED: reading the result raises the stored error.
    pub fn propagates(&self) -> bool {
        matches!(self, State::Failure | State::Revoked)
    }

    /// Celery's precedence (lower is stronger) used when merging states.
    pub fn precedence(&self) -> u8 {
        match self {
            State::Success => 0,
            State::Failure => 1,
            State::Custom(_) | State::Ignored => 2,
            State::Revoked => 3,
            State::Started => 4,
            State::Received => 5,
            State::Rejected => 6,
            State::Retry => 7,
            State::Pending => 8,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(State::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_spelling() {
        for s in [
            "PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED",
            "PROGRESS",
        ] {
            assert_eq!(State::parse(s).as_str(), s);
        }
        assert!(State::Success.is_ready() && !State::progress().is_ready());
        assert!(State::Revoked.propagates() && !State::Retry.propagates());
    }
}
