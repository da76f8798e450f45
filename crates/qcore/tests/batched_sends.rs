//! A group's messages and `App::send_many`'s go to the broker in one
//! `publish_many`, in the order `delay` would publish them one by one.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qcore::{
    group, App, Broker, BrokerError, ConsumeOptions, Consumer, ErrorKind, Message, SendOptions, Signature, Subscription,
};

/// One broker call: its name and the (queue, task id) of each message.
type Call = (&'static str, Vec<(String, String)>);

/// What reached the broker, call by call.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
}

fn id_of(q: &str, m: &Message) -> (String, String) {
    (q.to_string(), m.task_id().unwrap_or_default().to_string())
}

fn unused<T>() -> Result<T, BrokerError> {
    Err(BrokerError::new(ErrorKind::Unsupported, "not used by these tests"))
}

#[async_trait]
impl Broker for Recorder {
    async fn declare_queue(&self, _: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, q: &str, m: &Message) -> Result<(), BrokerError> {
        self.calls.lock().unwrap().push(("publish", vec![id_of(q, m)]));
        Ok(())
    }
    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        self.calls.lock().unwrap().push(("publish_many", items.iter().map(|(q, m)| id_of(q, m)).collect()));
        Ok(())
    }
    async fn consume(&self, _: &[String], _: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        unused()
    }
    async fn queue_len(&self, _: &str) -> Result<u64, BrokerError> {
        unused()
    }
    async fn purge(&self, _: &str) -> Result<u64, BrokerError> {
        unused()
    }
    async fn publish_fanout(&self, _: &str, _: &str, _: &Message) -> Result<(), BrokerError> {
        unused()
    }
    async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        unused()
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "recorder://".into()
    }
}

fn app() -> (App, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (App::builder().broker(rec.clone()).build().unwrap(), rec)
}

fn add(i: i64) -> Signature {
    Signature::new("tasks.add").arg(i).arg(i)
}

#[tokio::test]
async fn a_group_is_published_in_one_batch_in_order() {
    let (app, rec) = app();
    let g = group((0..5).map(add));
    let prepared = app.prepare(g.clone(), SendOptions::new()).await.unwrap();
    let expected: Vec<String> = prepared.messages.iter().map(|(_, m)| m.task_id().unwrap().to_string()).collect();
    assert_eq!(expected.len(), 5);
    let handle = app.delay(g).await.unwrap();
    let calls = rec.calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "one call for the whole group");
    assert_eq!(calls[0].0, "publish_many");
    assert_eq!(calls[0].1.len(), 5);
    assert!(calls[0].1.iter().all(|(q, _)| q == "celery"));
    // The handle's members are the published ids, in order.
    let sent: Vec<&str> = calls[0].1.iter().map(|(_, id)| id.as_str()).collect();
    let members: Vec<&str> = handle.children().expect("a group handle").iter().map(|r| r.id()).collect();
    assert_eq!(sent, members);
}

#[tokio::test]
async fn send_many_publishes_every_signature_in_one_batch() {
    let (app, rec) = app();
    let sigs = vec![add(1), add(2).queue("other"), add(3)];
    let handles = app.send_many(sigs).await.unwrap();
    let calls = rec.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "publish_many");
    let sent: Vec<(String, String)> = calls[0].1.clone();
    let ids: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
    assert_eq!(sent.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(sent.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(), ["celery", "other", "celery"]);
}

#[tokio::test]
async fn a_single_task_is_still_one_publish() {
    let (app, rec) = app();
    app.delay(add(1)).await.unwrap();
    let calls = rec.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "publish");
}
