//! End to end through RabbitMQ: a message published by qamqp is received by
//! a raw `basic.get` with the same content header as the one Celery's
//! message had when a raw consumer got it (`tests/fixtures/delivered/`):
//! same property flags, properties and typed headers, same body bytes.

mod common;

use std::path::Path;

use common::{broker, unique};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::protocol::basic::parse_properties;
use lapin::types::FieldTable;
use qamqp::AmqpOptions;
use qcore::{Broker, Message, Properties};
use serde_json::Value;

fn header_frame(bytes: &[u8]) -> Vec<u8> {
    let mut i = 0;
    while i + 7 <= bytes.len() {
        let size = u32::from_be_bytes([bytes[i + 3], bytes[i + 4], bytes[i + 5], bytes[i + 6]]) as usize;
        if bytes[i] == 2 {
            return bytes[i + 7..i + 7 + size].to_vec();
        }
        i += 8 + size;
    }
    panic!("no content header frame");
}

/// The message as Celery described it (`properties_plain` + body bytes).
fn message(decoded: &Value, body: Vec<u8>) -> Message {
    let p = &decoded["properties_plain"];
    let s = |k: &str| p[k].as_str().map(str::to_owned);
    Message {
        headers: p["headers"].as_object().cloned().unwrap_or_default(),
        properties: Properties {
            content_type: s("content_type").unwrap_or_default(),
            content_encoding: s("content_encoding").unwrap_or_default(),
            correlation_id: s("correlation_id"),
            reply_to: s("reply_to"),
            delivery_mode: p["delivery_mode"].as_u64().unwrap_or(1) as u8,
            priority: p["priority"].as_u64().unwrap_or(0) as u8,
            expiration: s("expiration"),
            ..Properties::default()
        },
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_arrive_with_celerys_content_header() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/delivered");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".decoded.json").map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names.len(), 7);
    let b = broker(AmqpOptions::default()).await;
    let conn = lapin::Connection::connect(&common::url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for name in names {
        let decoded: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.decoded.json"))).unwrap()).unwrap();
        let body = std::fs::read(dir.join(format!("{name}.body.bin"))).unwrap();
        let frames = std::fs::read(dir.join(format!("{name}.frames.bin"))).unwrap();
        let header = header_frame(&frames);
        let (_, celery) = parse_properties(&header[12..]).unwrap();

        let q = unique("wire");
        b.declare_queue(&q).await.unwrap();
        b.publish(&q, &message(&decoded, body.clone())).await.unwrap();
        b.flush().await.unwrap();
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let got = ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
        let d = got.delivery;
        assert_eq!(d.exchange.as_str(), "", "{name}: tasks go through the default exchange");
        assert_eq!(d.routing_key.as_str(), q, "{name}");
        assert_eq!(d.data, body, "{name}: body bytes");
        assert_eq!(d.properties.bitmask(), celery.bitmask(), "{name}: property flags");
        assert_eq!(d.properties, celery, "{name}: properties and typed headers");
    }
}
