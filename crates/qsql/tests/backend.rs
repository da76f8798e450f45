//! Result backend behaviour beyond the shared suite: `celery.chord_unlock`
//! support, chords sent by Python (no `chord_init`), cleanup.

mod common;

use std::time::Duration;

use common::{PgSchema, TempDb};
use qcore::{ChordJoin, ChordPart, ExceptionInfo, ResultBackend, ResultMeta, State};
use qsql::{chord_unlock_ready, ChordUnlock, SqlBackend, SqlOptions};
use serde_json::json;

async fn backends() -> (PgSchema, TempDb, Vec<SqlBackend>) {
    let (schema, db) = (PgSchema::new(), TempDb::new());
    let pg = SqlBackend::connect(&schema.url(), SqlOptions::new())
        .await
        .expect("PostgreSQL at QTASK_TEST_PG_URL (default 127.0.0.1:5432)");
    let lite = SqlBackend::connect(&db.url(), SqlOptions::new()).await.unwrap();
    (schema, db, vec![pg, lite])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_unlock_sees_header_results_in_order() {
    let (_s, _d, all) = backends().await;
    for b in &all {
        let ids: Vec<String> = (0..3).map(|i| format!("{}-{i}", uuid::Uuid::new_v4())).collect();
        assert_eq!(chord_unlock_ready(b, "g", &ids).await.unwrap(), ChordUnlock::NotReady);
        b.store(&ResultMeta::new(&ids[2], State::Success, json!(30)), None).await.unwrap();
        b.store(&ResultMeta::new(&ids[0], State::Success, json!(10)), None).await.unwrap();
        b.store(&ResultMeta::new(&ids[1], State::Started, json!({"pid": 1})), None).await.unwrap();
        assert_eq!(chord_unlock_ready(b, "g", &ids).await.unwrap(), ChordUnlock::NotReady, "{}", b.describe());
        b.store(&ResultMeta::new(&ids[1], State::Success, json!(20)), None).await.unwrap();
        assert_eq!(
            chord_unlock_ready(b, "g", &ids).await.unwrap(),
            ChordUnlock::Ready(vec![json!(10), json!(20), json!(30)])
        );
        let bad = uuid::Uuid::new_v4().to_string();
        let exc = ExceptionInfo::new("ValueError", "boom");
        b.store(&ResultMeta::new(&bad, State::Failure, exc.to_value()), None).await.unwrap();
        let with_bad = vec![ids[0].clone(), bad.clone()];
        assert_eq!(chord_unlock_ready(b, "g", &with_bad).await.unwrap(), ChordUnlock::Failed { task_id: bad, exc });
    }
}

/// Header tasks of a chord sent by Python carry the body, but the producer
/// never called `chord_init`: the part is recorded without completing
/// anything (`celery.chord_unlock` joins that chord).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_parts_without_init_never_complete() {
    let (_s, _d, all) = backends().await;
    for b in &all {
        let gid = uuid::Uuid::new_v4().to_string();
        for i in 0..2 {
            let part = ChordPart { task_id: format!("{gid}-{i}"), index: i, status: State::Success, result: json!(i) };
            assert_eq!(b.chord_part(&gid, &part, None).await.unwrap(), ChordJoin::Waiting { done: 0, size: 0 });
            assert_eq!(b.chord_part(&gid, &part, None).await.unwrap(), ChordJoin::Duplicate);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_old_results_like_backend_cleanup() {
    let (_s, _d, all) = backends().await;
    for b in &all {
        let mut old = ResultMeta::new(uuid::Uuid::new_v4().to_string(), State::Success, json!(1));
        old.date_done = Some(chrono::Utc::now() - chrono::Duration::days(2));
        let fresh = ResultMeta::new(uuid::Uuid::new_v4().to_string(), State::Success, json!(2));
        b.store(&old, None).await.unwrap();
        b.store(&fresh, None).await.unwrap();
        b.cleanup(Some(Duration::from_secs(86400))).await.unwrap();
        assert_eq!(b.get(&old.task_id).await.unwrap(), None, "{}", b.describe());
        assert!(b.get(&fresh.task_id).await.unwrap().is_some());
    }
}

/// Several processes starting at once on an empty schema / file: every one
/// connects, tables and migrations are created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_create_tables_once() {
    let (schema, db) = (PgSchema::new(), TempDb::new());
    let mut starts = Vec::new();
    for url in [schema.url(), db.url()] {
        for i in 0..4 {
            let url = url.clone();
            starts.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    SqlBackend::connect(&url, SqlOptions::new()).await.map(drop).map_err(|e| e.to_string())
                } else {
                    qsql::connect_broker(&url, SqlOptions::new()).await.map(drop).map_err(|e| e.to_string())
                }
            }));
        }
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let b = SqlBackend::connect(&schema.url(), SqlOptions::new()).await.unwrap();
    let versions: Vec<(i32,)> =
        sqlx::query_as(&format!("SELECT version FROM \"{}\".qtask_schema_version", schema.name))
            .fetch_all(b.pg_pool().unwrap())
            .await
            .unwrap();
    assert_eq!(versions, vec![(1,)], "each migration recorded once");
}
