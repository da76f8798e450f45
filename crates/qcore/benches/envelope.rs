//! Envelope codec benchmarks: building and decoding a typical task message
//! (JSON and msgpack bodies; `take_task` moves the headers instead of
//! copying them), decoding a canvas message, and a result document.
//!
//! `cargo bench -p qcore --bench envelope -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use base64::Engine as _;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use qcore::{ContentType, Message, ResultMeta, TaskMessageBuilder};
use serde_json::{json, Map, Value};

/// `echo.apply_async((1, 'two', 3.5), {'flag': True, 'items': [1, 2]})`.
fn typical(ct: ContentType) -> TaskMessageBuilder {
    let Value::Object(kwargs) = json!({"flag": true, "items": [1, 2]}) else { unreachable!() };
    TaskMessageBuilder {
        id: "9f0c5a3e-2b8d-4e51-9a7c-6d1f0e2b3c4d".into(),
        task: "capapp.echo".into(),
        args: vec![json!(1), json!("two"), json!(3.5)],
        kwargs,
        origin: "gen19655@vm".into(),
        content_type: ct,
        reply_to: Some("e40e8448-923b-370d-a6c6-cdf4194e702b".into()),
        ..TaskMessageBuilder::default()
    }
}

/// The first message of Celery's `chain(add.s(1, 2), add.s(3), add.s(4))`.
fn chain3() -> Message {
    let raw = include_bytes!("../tests/fixtures/canvas/chain3.msg0.raw.json");
    let env: Map<String, Value> = serde_json::from_slice(raw).unwrap();
    let body = base64::engine::general_purpose::STANDARD.decode(env["body"].as_str().unwrap()).unwrap();
    Message { headers: env["headers"].as_object().unwrap().clone(), body, ..Message::default() }
}

fn task_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("task_message");
    g.throughput(Throughput::Elements(1));
    for (name, ct) in [("json", ContentType::Json), ("msgpack", ContentType::Msgpack)] {
        let b = typical(ct);
        g.bench_function(format!("encode/{name}"), |bench| {
            bench.iter_batched(|| b.clone(), |b| b.build().unwrap(), BatchSize::SmallInput)
        });
        let msg = b.clone().build().unwrap();
        g.bench_function(format!("decode/{name}"), |bench| bench.iter(|| black_box(&msg).decode_task().unwrap()));
        g.bench_function(format!("take_task/{name}"), |bench| {
            bench.iter_batched(|| msg.clone(), |mut m| m.take_task().unwrap(), BatchSize::SmallInput)
        });
    }
    let chain = chain3();
    g.bench_function("decode/json-chain3", |bench| bench.iter(|| black_box(&chain).decode_task().unwrap()));
    g.finish();
}

fn result_meta(c: &mut Criterion) {
    let mut g = c.benchmark_group("result_meta");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in [
        ("success", &include_bytes!("../tests/fixtures/result-redis/success-add.raw.json")[..]),
        ("failure", &include_bytes!("../tests/fixtures/result-redis/failure-valueerror.raw.json")[..]),
    ] {
        let meta = ResultMeta::from_json(raw).unwrap();
        g.bench_function(format!("to_json/{name}"), |bench| bench.iter(|| black_box(&meta).to_json()));
        g.bench_function(format!("from_json/{name}"), |bench| bench.iter(|| ResultMeta::from_json(black_box(raw))));
    }
    g.finish();
}

criterion_group!(benches, task_message, result_meta);
criterion_main!(benches);
