//! [`Value`]: one setting's value, as a TOML file or an environment
//! variable gives it, owned by qcore so no parser's types reach the API.

use std::time::Duration;

/// A setting's value before it is checked: what a TOML file, an environment
/// variable (always [`Value::Str`]) or code passes to [`Config::set`](super::Config::set).
///
/// Tables keep the order they were written in (`task_routes`: first match wins).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text (every environment variable).
    Str(String),
    /// An array.
    List(Vec<Value>),
    /// A table, in the order it was written.
    Table(Vec<(String, Value)>),
}

impl Value {
    /// The entry `key` of a table.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Table(t) => t.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    pub(crate) fn from_toml(v: toml::Value) -> Value {
        match v {
            toml::Value::String(s) => Value::Str(s),
            toml::Value::Integer(i) => Value::Int(i),
            toml::Value::Float(f) => Value::Float(f),
            toml::Value::Boolean(b) => Value::Bool(b),
            toml::Value::Datetime(d) => Value::Str(d.to_string()),
            toml::Value::Array(a) => Value::List(a.into_iter().map(Value::from_toml).collect()),
            toml::Value::Table(t) => Value::Table(t.into_iter().map(|(k, v)| (k, Value::from_toml(v))).collect()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<Duration> for Value {
    /// Seconds, as Celery's settings count time.
    fn from(d: Duration) -> Self {
        Value::Float(d.as_secs_f64())
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Value {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Value::Table(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}
