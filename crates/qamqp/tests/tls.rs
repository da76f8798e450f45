//! `amqps://` against a private RabbitMQ node with a TLS listener whose
//! certificates a throwaway CA (made with the `openssl` command at test
//! time) signed.

#[path = "common/pki.rs"]
mod pki;
#[path = "common/rabbit_node.rs"]
mod rabbit_node;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pki::Pki;
use qamqp::{AmqpBroker, AmqpOptions, TlsOptions};
use qcore::{Broker, ConsumeOptions, ErrorKind, Message, Properties};
use rabbit_node::RabbitNode;
use serde_json::json;

fn task(id: &str) -> Message {
    let mut m = Message {
        properties: Properties { correlation_id: Some(id.into()), ..Properties::default() },
        body: br#"[[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec(),
        ..Message::default()
    };
    m.headers.insert("lang".into(), json!("py"));
    m.headers.insert("task".into(), json!("tests.add"));
    m.headers.insert("id".into(), json!(id));
    m
}

/// Publish one task and consume it back, acking it.
async fn round_trip(broker: &AmqpBroker) -> Result<()> {
    let queue = format!("tls.{}", uuid::Uuid::new_v4().simple());
    let id = uuid::Uuid::new_v4().to_string();
    broker.declare_queue(&queue).await?;
    broker.publish(&queue, &task(&id)).await?;
    let mut consumer = broker.consume(std::slice::from_ref(&queue), ConsumeOptions::new(1)).await?;
    let d = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .context("no delivery within 20 s")??
        .context("the consumer ended")?;
    assert_eq!(d.message.headers.get("id"), Some(&json!(id)));
    assert_eq!(d.message.body, task(&id).body);
    d.acker.ack().await?;
    Ok(())
}

/// The error with its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The private node itself: plain `amqp://` works on its own port, so the
/// TLS failures below are about TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_node_plain_round_trip() -> Result<()> {
    let pki = Pki::new()?;
    let node = RabbitNode::start_with(Some(pki.listener(false)))?;
    let broker = AmqpBroker::connect(&node.url(), AmqpOptions::default()).await?;
    round_trip(&broker).await
}

/// Without the private CA, the server's certificate is not trusted: a
/// clear error naming the certificate problem, no panic, no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_without_the_ca_is_refused_with_a_clear_error() -> Result<()> {
    let pki = Pki::new()?;
    let node = RabbitNode::start_with(Some(pki.listener(false)))?;
    let opts = AmqpOptions::default().connection_name("qtask tls no-ca");
    let err = match AmqpBroker::connect(&node.tls_url("localhost"), opts).await {
        Ok(_) => bail!("connected over TLS to a server signed by an unknown CA"),
        Err(e) => e,
    };
    let text = chain(&err);
    assert!(text.contains(&format!("localhost:{}", node.tls_port.unwrap_or(0))), "{text}");
    assert!(text.contains("certificate") && text.contains("UnknownIssuer"), "{text}");
    assert_eq!(err.kind(), ErrorKind::Config, "an untrusted certificate is not worth retrying: {text}");
    assert!(!text.contains("guest:guest"), "credentials in the error: {text}");
    Ok(())
}

/// Bad TLS files are configuration errors before any connection.
#[test]
fn bad_tls_files_are_config_errors() -> Result<()> {
    let pki = Pki::new()?;
    let missing = pki.path("nope.pem");
    for r in [
        TlsOptions::default().ca_file(&missing),
        TlsOptions::default().ca_file(pki.path("ca.key")),
        TlsOptions::default().client_cert_files(pki.path("client.pem"), Some(&missing)),
        TlsOptions::default().client_cert_files(pki.path("client.pem"), None::<&Path>),
    ] {
        let e = r.err().context("accepted a bad TLS file")?;
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    // The real files load.
    let tls = TlsOptions::default()
        .ca_file(pki.path("ca.pem"))?
        .client_cert_files(pki.path("client.pem"), Some(pki.path("client.key")))?;
    assert_eq!(tls.ca_path(), Some(pki.path("ca.pem").as_path()));
    Ok(())
}

fn with_ca(pki: &Pki) -> Result<AmqpOptions> {
    Ok(AmqpOptions::default().tls(TlsOptions::default().ca_file(pki.path("ca.pem"))?))
}

/// With the private CA (Celery's `ca_certs`), `amqps://` works end to end:
/// declare, publish with confirms, consume and ack over TLS, and RabbitMQ
/// reports the connection as TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_private_ca_round_trips() -> Result<()> {
    let pki = Pki::new()?;
    let node = RabbitNode::start_with(Some(pki.listener(false)))?;
    let broker =
        AmqpBroker::connect(&node.tls_url("localhost"), with_ca(&pki)?.connection_name("qtask-tls-ca")).await?;
    round_trip(&broker).await?;
    let listed = node.ctl(&["list_connections", "ssl", "client_properties"])?;
    let ours: Vec<&str> = listed.lines().filter(|l| l.contains("qtask-tls-ca")).collect();
    assert!(!ours.is_empty() && ours.iter().all(|l| l.starts_with("true")), "{listed}");
    Ok(())
}

/// The CA is trusted but the certificate names `localhost`, not
/// `127.0.0.1`: refused (host names are always checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_checks_the_host_name() -> Result<()> {
    let pki = Pki::new()?;
    let node = RabbitNode::start_with(Some(pki.listener(false)))?;
    let err = match AmqpBroker::connect(&node.tls_url("127.0.0.1"), with_ca(&pki)?).await {
        Ok(_) => bail!("connected to 127.0.0.1 with a certificate for localhost"),
        Err(e) => e,
    };
    let text = chain(&err);
    assert!(text.contains("not valid for name"), "{text}");
    assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    Ok(())
}

/// A node that requires client certificates (`verify_peer`,
/// `fail_if_no_peer_cert`): the client certificate of Celery's
/// `certfile`/`keyfile` gets in; without it the connection is refused with
/// an error, not a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let node = RabbitNode::start_with(Some(pki.listener(true)))?;
    let mutual = TlsOptions::from_files(
        Some(&pki.path("ca.pem")),
        Some(&pki.path("client.pem")),
        Some(&pki.path("client.key")),
    )?;
    let broker = AmqpBroker::connect(&node.tls_url("localhost"), AmqpOptions::default().tls(mutual)).await?;
    round_trip(&broker).await?;

    let without =
        tokio::time::timeout(Duration::from_secs(30), AmqpBroker::connect(&node.tls_url("localhost"), with_ca(&pki)?))
            .await
            .context("connecting without a client certificate hung")?;
    let err = match without {
        Ok(_) => bail!("connected without the client certificate the node requires"),
        Err(e) => e,
    };
    eprintln!("without a client certificate: {}", chain(&err));
    // With TLS 1.3 the server may reset the connection before the client
    // reads its CertificateRequired alert: then all the client sees is a
    // reset, which it cannot tell from a network fault.
    let text = chain(&err);
    if text.contains("CertificateRequired") {
        assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    } else {
        assert_eq!(err.kind(), ErrorKind::Connection, "{text}");
        assert!(text.contains("reset") || text.contains("closed") || text.contains("EOF"), "{text}");
    }
    Ok(())
}
