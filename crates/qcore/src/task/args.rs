//! Taking typed arguments from Celery's positional args and kwargs.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::TaskError;

/// Positional args and kwargs of one call, consumed parameter by parameter
/// the way Python binds them. Errors read like Python's `TypeError`s.
#[derive(Debug)]
pub struct Args {
    func: String,
    args: std::vec::IntoIter<Value>,
    kwargs: Map<String, Value>,
    given_positional: usize,
    params: Vec<&'static str>,
}

impl Args {
    /// Start binding the call of `func` (for messages) with these arguments.
    pub fn new(func: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let given_positional = args.len();
        Args { func: func.into(), args: args.into_iter(), kwargs, given_positional, params: Vec::new() }
    }

    /// Take the next parameter `name`: positionally if one is left, else by
    /// keyword. `Option<T>` parameters may be missing.
    pub fn next<T: DeserializeOwned>(&mut self, name: &'static str) -> Result<T, TaskError> {
        self.params.push(name);
        let v = match self.args.next() {
            Some(v) => {
                if self.kwargs.contains_key(name) {
                    return Err(TaskError::type_error(format!(
                        "{}() got multiple values for argument '{name}'",
                        self.func
                    )));
                }
                v
            }
            None => match self.kwargs.remove(name) {
                Some(v) => v,
                None => {
                    // Missing: fine for Option<T>, which deserializes from null.
                    return serde_json::from_value(Value::Null).map_err(|_| {
                        TaskError::type_error(format!(
                            "{}() missing 1 required positional argument: '{name}'",
                            self.func
                        ))
                    });
                }
            },
        };
        serde_json::from_value(v)
            .map_err(|e| TaskError::type_error(format!("{}() argument '{name}' has the wrong type: {e}", self.func)))
    }

    /// Check nothing is left over (too many positional args, unknown kwargs).
    pub fn finish(mut self) -> Result<(), TaskError> {
        if self.args.next().is_some() {
            let n = self.params.len();
            return Err(TaskError::type_error(format!(
                "{}() takes {n} positional argument{} but {} were given",
                self.func,
                if n == 1 { "" } else { "s" },
                self.given_positional
            )));
        }
        if let Some(k) = self.kwargs.keys().next() {
            return Err(TaskError::type_error(format!("{}() got an unexpected keyword argument '{k}'", self.func)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(args: Value, kwargs: Value) -> Result<(i64, Option<String>), TaskError> {
        let mut a = Args::new("add", args.as_array().unwrap().clone(), kwargs.as_object().unwrap().clone());
        let x: i64 = a.next("x")?;
        let y: Option<String> = a.next("y")?;
        a.finish()?;
        Ok((x, y))
    }

    #[test]
    fn binds_like_python() {
        assert_eq!(call(json!([1, "a"]), json!({})).unwrap(), (1, Some("a".into())));
        assert_eq!(call(json!([]), json!({"x": 2, "y": "b"})).unwrap(), (2, Some("b".into())));
        assert_eq!(call(json!([3]), json!({})).unwrap(), (3, None));
        let e = call(json!([]), json!({})).unwrap_err();
        assert_eq!(e, TaskError::type_error("add() missing 1 required positional argument: 'x'"));
        let e = call(json!([1, "a", 3]), json!({})).unwrap_err();
        assert_eq!(e, TaskError::type_error("add() takes 2 positional arguments but 3 were given"));
        let e = call(json!([1]), json!({"z": 1})).unwrap_err();
        assert_eq!(e, TaskError::type_error("add() got an unexpected keyword argument 'z'"));
        assert!(
            matches!(call(json!(["x"]), json!({})), Err(TaskError::Failure { exc, .. }) if exc.exc_type == "TypeError")
        );
    }
}
