//! The SQL drivers: URLs (qtask's and Celery's `db+…` spellings) and the
//! settings of the brokers and the result backend read from the app's
//! [`Config`], in one place.

use std::sync::Arc;

use qcore::driver::{BoxFuture, Driver};
use qcore::{Broker, Config, Error, ResultBackend};

use crate::{PgBroker, SqlBackend, SqlOptions, SqliteBroker};

/// The PostgreSQL driver: `postgres://` / `postgresql://` brokers, and those
/// URLs or Celery's `db+postgresql://…` (any `+driver`) as result backend.
pub static POSTGRES: Driver = Driver::new("postgres")
    .broker(&["postgres", "postgresql"], connect_pg_broker)
    .backend(&["postgres", "postgresql", "db+postgresql", "db+postgres"], connect_backend);

/// The SQLite driver: `sqlite://path` brokers, and `sqlite://path`,
/// `sqlite::memory:` or Celery's `db+sqlite:///path` as result backend.
pub static SQLITE: Driver =
    Driver::new("sqlite").broker(&["sqlite"], connect_sqlite_broker).backend(&["sqlite", "db+sqlite"], connect_backend);

impl SqlOptions {
    /// Broker options from an app [`Config`]: the visibility timeout
    /// (qtask's `visibility_timeout`, else
    /// `broker_transport_options.visibility_timeout`) and `max_deliveries`.
    pub fn from_config(config: &Config) -> Self {
        let mut o = Self::default();
        if let Some(v) = config.broker_visibility_timeout() {
            o.visibility_timeout = v;
        }
        o.max_deliveries = config.max_deliveries;
        o
    }

    /// Result backend options from an app [`Config`]: Celery's
    /// `database_table_schemas` as the PostgreSQL schema (qsql keeps both
    /// tables in one schema, so `task` and `group` must agree), and
    /// `result_serializer` / `result_accept_content`.
    pub fn backend_from_config(config: &Config) -> Result<Self, Error> {
        let mut o = Self::from_config(config);
        o.codec = qcore::ResultCodec::from_config(config);
        let s = &config.database_table_schemas;
        match (&s.task, &s.group) {
            (Some(t), Some(g)) if t != g => {
                return Err(Error::Config(format!(
                    "database_table_schemas: task ({t:?}) and group ({g:?}) must name the same schema"
                )))
            }
            (Some(one), _) | (None, Some(one)) => o = o.schema(one.clone()),
            (None, None) => {}
        }
        Ok(o)
    }
}

/// The qsql URL of a result backend URL: qtask's `postgres://…`,
/// `postgresql://…`, `sqlite://path`, `sqlite::memory:` unchanged, and
/// Celery's SQLAlchemy spellings `db+postgresql://…`,
/// `db+postgresql+psycopg2://…` and `db+sqlite:///path` (three slashes and
/// a relative path, four for an absolute one, `db+sqlite://` alone for memory).
pub fn backend_url(url: &str) -> String {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("db+") else {
        return url.to_string();
    };
    let Some((scheme, tail)) = rest.split_once("://") else {
        return rest.to_string();
    };
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    if dialect == "sqlite" {
        return match tail.strip_prefix('/') {
            None if tail.is_empty() => "sqlite::memory:".to_string(),
            None => format!("sqlite://{tail}"),
            Some("") | Some(":memory:") => "sqlite::memory:".to_string(),
            Some(path) => format!("sqlite://{path}"),
        };
    }
    format!("{dialect}://{tail}")
}

fn connect_pg_broker<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
    Box::pin(
        async move { Ok(Arc::new(PgBroker::connect(url, SqlOptions::from_config(cfg)).await?) as Arc<dyn Broker>) },
    )
}

fn connect_sqlite_broker<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
    Box::pin(
        async move { Ok(Arc::new(SqliteBroker::connect(url, SqlOptions::from_config(cfg)).await?) as Arc<dyn Broker>) },
    )
}

fn connect_backend<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn ResultBackend>, Error>> {
    Box::pin(async move {
        let backend = SqlBackend::connect(&backend_url(url), SqlOptions::backend_from_config(cfg)?).await?;
        Ok(Arc::new(backend) as Arc<dyn ResultBackend>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcore::driver::{find, Role};

    #[test]
    fn celery_database_backend_urls() {
        assert_eq!(backend_url("db+postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(backend_url("db+postgresql+psycopg2://u@h/db?x=1"), "postgresql://u@h/db?x=1");
        assert_eq!(backend_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(backend_url("db+sqlite:///results.db"), "sqlite://results.db");
        assert_eq!(backend_url("db+sqlite:////var/r.db"), "sqlite:///var/r.db");
        assert_eq!(backend_url("db+sqlite://"), "sqlite::memory:");
        assert_eq!(backend_url("sqlite://q.db"), "sqlite://q.db");
        assert_eq!(backend_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn the_drivers_serve_celery_spellings() {
        let drivers = [&POSTGRES, &SQLITE];
        for (url, name) in [
            ("db+postgresql+psycopg2://u@h/db", "postgres"),
            ("db+postgresql://u@h/db", "postgres"),
            ("postgresql://u@h/db", "postgres"),
            ("db+sqlite:///r.db", "sqlite"),
            ("sqlite::memory:", "sqlite"),
        ] {
            assert_eq!(find(&drivers, url, Role::Backend).map(|d| d.name).ok(), Some(name), "{url}");
        }
        assert!(find(&drivers, "db+mysql://h/db", Role::Backend).is_err());
        assert!(find(&drivers, "db+sqlite:///r.db", Role::Broker).is_err(), "db+ is for results only");
    }

    #[test]
    fn settings_reach_the_options() {
        let cfg = Config::from_toml_str(
            "broker_transport_options = { visibility_timeout = 12 }\nmax_deliveries = 4\n\
             database_table_schemas = { task = \"jobs\", group = \"jobs\" }",
        )
        .unwrap();
        let o = SqlOptions::backend_from_config(&cfg).unwrap();
        assert_eq!(o.visibility_timeout, std::time::Duration::from_secs(12));
        assert_eq!(o.max_deliveries, Some(4));
        assert_eq!(o.schema.as_deref(), Some("jobs"));
        let cfg = Config::from_toml_str("database_table_schemas = { task = \"a\", group = \"b\" }").unwrap();
        let e = SqlOptions::backend_from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("same schema"), "{e}");
    }
}
