use super::*;

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn toml_and_env_with_celery_names() {
    let mut c = Config::from_toml_str(
        r#"
        broker_url = "redis://localhost/1"
        task_acks_late = true
        worker_prefetch_multiplier = 1
        result_expires = 3600
        task_default_rate_limit = "10/m"
        task_routes = { "mail.*" = "emails", "reports.build" = { queue = "slow" } }
        broker_transport_options = { visibility_timeout = 60, global_keyprefix = "app1:" }
        "#,
    )
    .unwrap();
    assert_eq!(c.broker_url.as_deref(), Some("redis://localhost/1"));
    assert!(c.task_acks_late);
    assert_eq!(c.worker_prefetch_multiplier, 1);
    assert_eq!(c.result_expires, Duration::from_secs(3600));
    assert_eq!(c.task_default_rate_limit, Some(RateLimit { count: 10, per: Duration::from_secs(60) }));
    assert_eq!(c.route("mail.send", None), "emails");
    assert_eq!(c.route("reports.build", None), "slow");
    assert_eq!(c.route("other", Some("q")), "q");
    assert_eq!(c.route("other", None), "celery");
    assert_eq!(c.broker_visibility_timeout(), Some(Duration::from_secs(60)));
    assert_eq!(c.broker_transport_options.global_keyprefix.as_deref(), Some("app1:"));
    assert!(c.unsupported().is_empty());

    c.merge_vars(vars(&[
        ("CELERY_BROKER_URL", "amqp://x"),
        ("QTASK_RESULT_BACKEND", "redis://y"),
        ("CELERY_RESULT_BACKEND", "ignored://"),
        ("QTASK_TASK_ACKS_LATE", "false"),
        ("QTASK_VISIBILITY_TIMEOUT", "5"),
        ("PATH", "/usr/bin"),
    ]))
    .unwrap();
    assert_eq!(c.broker_url.as_deref(), Some("amqp://x"));
    assert_eq!(c.result_backend.as_deref(), Some("redis://y"));
    assert!(!c.task_acks_late);
    assert_eq!(c.broker_visibility_timeout(), Some(Duration::from_secs(5)), "qtask's own name wins");
}

/// Celery tries routes in the order they are written (first match wins);
/// a sorted table would try `a.*` before `a.special` here.
#[test]
fn routes_match_in_the_order_written() {
    let c = Config::from_toml_str(
        r#"
        [task_routes]
        "z.special" = "fast"
        "z.*" = "slow"
        "a.special" = { queue = "fast" }
        "a.*" = "slow"
        "#,
    )
    .unwrap();
    let patterns: Vec<&str> = c.task_routes.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(patterns, ["z.special", "z.*", "a.special", "a.*"]);
    assert_eq!(c.route("z.special", None), "fast");
    assert_eq!(c.route("z.other", None), "slow");
    assert_eq!(c.route("a.special", None), "fast");

    // The same rules the other way round: the glob now wins.
    let c = Config::from_toml_str("task_routes = { \"a.*\" = \"slow\", \"a.special\" = \"fast\" }").unwrap();
    assert_eq!(c.route("a.special", None), "slow");

    // From the environment, in the order given.
    let c = Config::from_vars(vars(&[("QTASK_TASK_ROUTES", "b.x=one,b.*=two")])).unwrap();
    assert_eq!(c.route("b.x", None), "one");
    assert_eq!(c.route("b.y", None), "two");
}

#[test]
fn unknown_settings_are_errors_with_the_closest_name() {
    for (toml, want) in [
        ("task_ack_late = true", "unknown setting `task_ack_late`: did you mean `task_acks_late`?"),
        ("worker_concurency = 2", "did you mean `worker_concurrency`?"),
        ("CELERY_TASK_ACKS_LATE = true", "did you mean `task_acks_late`?"),
        ("broker_transport_options = { visiblity_timeout = 3 }", "did you mean `visibility_timeout`?"),
    ] {
        let e = Config::from_toml_str(toml).unwrap_err().to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
    let e = Config::from_toml_str("zzz = 1").unwrap_err().to_string();
    assert_eq!(e, "configuration error: unknown setting `zzz`");

    let e = Config::from_vars(vars(&[("QTASK_TASK_ACK_LATE", "1")])).unwrap_err().to_string();
    assert!(
        e.contains("unknown environment variable QTASK_TASK_ACK_LATE: did you mean `QTASK_TASK_ACKS_LATE`?"),
        "{e}"
    );
    // The project's own variables that are not settings, and foreign CELERY_* ones, are fine.
    let c = Config::from_vars(vars(&[
        ("QTASK_LOG", "debug"),
        ("QTASK_TEST_REDIS_URL", "redis://h"),
        ("CELERY_CONFIG_MODULE", "proj.celeryconfig"),
    ]))
    .unwrap();
    assert!(c.unsupported().is_empty());
}

#[test]
fn celery_settings_qtask_does_not_support_are_reported() {
    let c = Config::from_toml_str(
        r#"
        worker_max_tasks_per_child = 100
        broker_transport_options = { visibility_timeout = 60, queue_order_strategy = "priority" }
        task_routes = { "a.*" = { queue = "a", routing_key = "a.key" } }
        "#,
    )
    .unwrap();
    assert_eq!(
        c.unsupported(),
        ["worker_max_tasks_per_child", "broker_transport_options.queue_order_strategy", "task_routes.a.*.routing_key"]
    );
    assert_eq!(c.broker_visibility_timeout(), Some(Duration::from_secs(60)));
    let c = Config::from_vars(vars(&[("CELERY_WORKER_POOL", "prefork")])).unwrap();
    assert_eq!(c.unsupported(), ["worker_pool"]);
}

#[test]
fn seed_tutorial_settings() {
    let c = Config::from_toml_str(
        r#"
        accept_content = ["json", "application/x-msgpack"]
        task_default_queue_type = "quorum"
        "#,
    )
    .unwrap();
    assert_eq!(c.accept_content, Some(vec![ContentType::Json, ContentType::Msgpack]));
    assert_eq!(c.task_default_queue_type, QueueType::Quorum);
    let c = Config::from_vars(vars(&[("CELERY_ACCEPT_CONTENT", "json")])).unwrap();
    assert_eq!(c.accept_content, Some(vec![ContentType::Json]));
    assert_eq!(Config::default().accept_content, None);
    let e = Config::from_toml_str("accept_content = [\"pickle\"]").unwrap_err().to_string();
    assert!(e.contains("accept_content"), "{e}");
    let e = Config::from_toml_str("task_default_queue_type = \"stream\"").unwrap_err().to_string();
    assert!(e.contains("quorum"), "{e}");
    // Seed 003 writes these two; Celery 5.7 ignores them, qtask honours them.
    let c = Config::from_toml_str("task_default_retry_delay = 300\ntask_max_retries = 5\n").unwrap();
    assert_eq!((c.task_default_retry_delay, c.task_max_retries), (Duration::from_secs(300), Some(5)));
    assert!(c.unsupported().is_empty());
    let d = Config::default();
    assert_eq!((d.task_default_retry_delay, d.task_max_retries), (Duration::from_secs(180), Some(3)));
    let c = Config::from_vars(vars(&[("QTASK_TASK_MAX_RETRIES", "None")])).unwrap();
    assert_eq!(c.task_max_retries, None, "None = retry forever, as Celery's max_retries=None");
    let e = Config::from_toml_str("task_max_retries = 1.5").unwrap_err().to_string();
    assert!(e.contains("task_max_retries") && e.contains("whole number"), "{e}");
}

#[test]
fn every_known_setting_is_accepted_by_set() {
    for name in KNOWN_SETTINGS {
        let e = Config::default().set(name, Value::List(vec![])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.contains("unknown setting"), "{name} is listed but not handled: {e}");
    }
}

#[test]
fn qtask_config_names_the_settings_file() {
    let dir = std::env::temp_dir().join(format!("qcore-config-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("qtask.toml");
    std::fs::write(&file, "task_acks_late = true\nworker_concurrency = 3\n").unwrap();
    let path = file.display().to_string();
    let c = Config::from_vars(vars(&[("QTASK_CONFIG", &path), ("QTASK_WORKER_CONCURRENCY", "5")])).unwrap();
    assert!(c.task_acks_late, "from the file");
    assert_eq!(c.worker_concurrency, 5, "the environment wins over the file");

    std::fs::write(&file, "task_acks_lat = true\n").unwrap();
    let e = Config::from_vars(vars(&[("QTASK_CONFIG", &path)])).unwrap_err().to_string();
    assert!(e.contains("QTASK_CONFIG") && e.contains("qtask.toml") && e.contains("did you mean"), "{e}");
    let e = Config::from_vars(vars(&[("QTASK_CONFIG", "/nonexistent/qtask.toml")])).unwrap_err().to_string();
    assert!(e.contains("cannot read /nonexistent/qtask.toml"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_values_are_clear_errors() {
    let e = Config::from_toml_str("worker_concurrency = 0").unwrap_err().to_string();
    assert!(e.contains("worker_concurrency"), "{e}");
    let e = Config::from_toml_str("task_acks_late = \"maybe\"").unwrap_err().to_string();
    assert!(e.contains("task_acks_late"), "{e}");
    let e = Config::from_toml_str("task_default_rate_limit = \"10/fortnight\"").unwrap_err().to_string();
    assert!(e.contains("rate limit"), "{e}");
    let e = Config::from_toml_str("task_queue_max_priority = 300").unwrap_err().to_string();
    assert!(e.contains("task_queue_max_priority"), "{e}");
    let e = Config::from_toml_str("database_table_schemas = { tasks = \"x\" }").unwrap_err().to_string();
    assert!(e.contains("unknown table `tasks`"), "{e}");
    let e = Config::from_toml_str("task_routes = { \"a\" = { queues = \"x\" } }").unwrap_err().to_string();
    assert!(e.contains("unknown key `queues`"), "{e}");
    let e = Config::from_vars(vars(&[("QTASK_TASK_ACKS_LATE", "maybe")])).unwrap_err().to_string();
    assert!(e.contains("QTASK_TASK_ACKS_LATE"), "{e}");
    assert!(Config::from_toml_str("not toml [").is_err());
}

#[test]
fn the_deploy_example_settings_parse() {
    let c = Config::from_toml_str(include_str!("../../../../deploy/qtask.toml")).unwrap();
    assert!(c.task_acks_late);
    assert_eq!(c.worker_shutdown_timeout, Duration::from_secs(60));
    assert_eq!(c.route("emails.welcome", None), "mail");
    assert_eq!(c.route("reports.build", None), "slow");
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());
}

#[test]
fn broker_use_ssl_from_toml_and_env() {
    let c = Config::from_toml_str(
        r#"broker_use_ssl = { ca_certs = "/etc/q/ca.pem", certfile = "/etc/q/c.pem", keyfile = "/etc/q/c.key", cert_reqs = "CERT_REQUIRED" }"#,
    )
    .unwrap();
    let ssl = c.broker_use_ssl.unwrap();
    assert_eq!(ssl.ca_certs.as_deref(), Some(Path::new("/etc/q/ca.pem")));
    assert_eq!(ssl.certfile.as_deref(), Some(Path::new("/etc/q/c.pem")));
    assert_eq!(ssl.keyfile.as_deref(), Some(Path::new("/etc/q/c.key")));
    assert_eq!(Config::from_toml_str("broker_use_ssl = true").unwrap().broker_use_ssl, Some(BrokerSsl::default()));
    assert_eq!(Config::from_toml_str("broker_use_ssl = false").unwrap().broker_use_ssl, None);
    assert_eq!(Config::default().broker_use_ssl, None);
    let c = Config::from_toml_str("broker_use_ssl = { cert_reqs = 2 }").unwrap();
    assert_eq!(c.broker_use_ssl, Some(BrokerSsl::default()));

    let mut c = Config::default();
    c.merge_vars(vars(&[("CELERY_BROKER_USE_SSL", "ca_certs=/a.pem, cert_reqs=ssl.CERT_REQUIRED")])).unwrap();
    assert_eq!(c.broker_use_ssl.and_then(|s| s.ca_certs), Some(PathBuf::from("/a.pem")));
    let mut c = Config::default();
    c.merge_vars(vars(&[("QTASK_BROKER_USE_SSL", "yes")])).unwrap();
    assert_eq!(c.broker_use_ssl, Some(BrokerSsl::default()));

    for bad in [
        "broker_use_ssl = { cert_reqs = \"CERT_NONE\" }",
        "broker_use_ssl = { cert_reqs = 0 }",
        "broker_use_ssl = { ca_cert = \"/typo.pem\" }",
        "broker_use_ssl = { ca_certs = \"\" }",
        "broker_use_ssl = { ca_certs = 1 }",
        "broker_use_ssl = { keyfile = \"/k.pem\" }",
        "broker_use_ssl = \"maybe\"",
        "broker_use_ssl = [1]",
    ] {
        let e = Config::from_toml_str(bad).unwrap_err().to_string();
        assert!(e.contains("broker_use_ssl"), "{bad}: {e}");
    }
}

#[test]
fn globs() {
    assert!(glob_match("a.*", "a.b.c"));
    assert!(glob_match("*.send", "mail.send"));
    assert!(!glob_match("a.*", "b.c"));
    assert!(glob_match("exact", "exact"));
}

#[test]
fn task_queues_with_exchange_and_routing_key() {
    // Seed 004: Queue('celery', Exchange('default'), routing_key='celery'),
    // Queue('high', Exchange('default'), routing_key='high').
    let c = Config::from_toml_str(
        r#"
        [task_queues]
        high = { exchange = "default", routing_key = "high" }
        celery = { exchange = "default", routing_key = "celery", queue_arguments = { "x-max-priority" = 10 } }
        events = { exchange = "ev", exchange_type = "topic", routing_key = "ev.#" }
        "#,
    )
    .unwrap();
    let names: Vec<_> = c.task_queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["high", "celery", "events"], "the order written");
    assert_eq!(c.task_queue("high"), Some(&TaskQueue::new("high").exchange("default", ExchangeType::Direct)));
    assert_eq!(
        c.task_queue("events"),
        Some(&TaskQueue::new("events").exchange("ev", ExchangeType::Topic).routing_key("ev.#"))
    );
    assert_eq!(c.unsupported(), ["task_queues.celery.queue_arguments"]);
    // A list of names, of tables, and the environment's `a,b`.
    let c = Config::from_toml_str(r#"task_queues = ["a", { name = "b", routing_key = "bee" }]"#).unwrap();
    assert_eq!(c.task_queues, [TaskQueue::new("a"), TaskQueue::new("b").routing_key("bee")]);
    let c = Config::from_vars(vars(&[("CELERY_TASK_QUEUES", "a, b")])).unwrap();
    assert_eq!(c.task_queues, [TaskQueue::new("a"), TaskQueue::new("b")]);
    for (bad, says) in [
        (r#"task_queues = { a = { exchange_type = "headers" } }"#, "expected direct, topic or fanout"),
        (r#"task_queues = { a = { exchnage = "x" } }"#, "unknown key `exchnage`"),
        (r#"task_queues = ["a", "a"]"#, "listed twice"),
        (r#"task_queues = [{ exchange = "x" }]"#, "has no `name`"),
        ("task_queues = 3", "expected a table or a list"),
    ] {
        let e = Config::from_toml_str(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn timezone_enable_utc_and_beat_schedule_are_settings() {
    let c = Config::from_toml_str(
        r#"
        timezone = "Europe/Paris"
        enable_utc = false
        beat_max_loop_interval = 5
        beat_cron_starting_deadline = 120
        [beat_schedule.cleanup]
        task = "app.cleanup"
        schedule = "crontab(hour=2, minute=0)"
        "#,
    )
    .unwrap();
    assert_eq!(c.timezone.as_deref(), Some("Europe/Paris"));
    assert!(!c.enable_utc);
    assert_eq!(c.beat_max_loop_interval, Some(Duration::from_secs(5)));
    assert_eq!(c.beat_cron_starting_deadline, Some(Duration::from_secs(120)));
    let entry = c.beat_schedule.as_ref().and_then(|s| s.get("cleanup")).unwrap();
    assert_eq!(entry.get("task").and_then(Value::as_str), Some("app.cleanup"));
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());
    assert!(Config::default().enable_utc);
    let err = Config::from_toml_str("beat_schedule = 3").unwrap_err().to_string();
    assert!(err.contains("beat_schedule: expected a table of entries"), "{err}");
    let err = Config::from_toml_str("timezone = \"Europe/ Paris\"").unwrap_err().to_string();
    assert!(err.contains("timezone: expected an IANA zone name"), "{err}");
    let c = Config::from_vars(vars(&[("QTASK_TIMEZONE", "America/New_York"), ("CELERY_ENABLE_UTC", "no")])).unwrap();
    assert_eq!(c.timezone.as_deref(), Some("America/New_York"));
    assert!(!c.enable_utc);
}

#[test]
fn confirm_publish_takes_kombus_boolean_or_a_mode() {
    let mode = |v: &str| {
        Config::from_toml_str(&format!("broker_transport_options = {{ confirm_publish = {v} }}"))
            .map(|c| c.broker_transport_options.confirm_publish)
    };
    assert_eq!(mode("true").unwrap(), Some(ConfirmPublish::Each));
    assert_eq!(mode("\"each\"").unwrap(), Some(ConfirmPublish::Each));
    assert_eq!(mode("false").unwrap(), Some(ConfirmPublish::Pipelined));
    assert_eq!(mode("\"Pipelined\"").unwrap(), Some(ConfirmPublish::Pipelined));
    let e = mode("\"sometimes\"").unwrap_err().to_string();
    assert!(e.contains("broker_transport_options.confirm_publish") && e.contains("\"each\""), "{e}");
    assert_eq!(Config::default().broker_transport_options.confirm_publish, None);
}
