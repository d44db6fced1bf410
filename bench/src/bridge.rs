//! The bridge (section `bridge`): `tsbridge to-jetstream` moving a file into a JetStream
//! stream (R=3 on a 3-node nats-server cluster started here on loopback), beside the bench's
//! own raw async publish loop to the same cluster in the same run.
//!
//! - **Raw:** async-nats, one connection, JetStream publishes of the same payloads to an R=3
//!   stream with up to 1024 acks awaited at once (tsbridge's default `--window`), no headers:
//!   what a client can push into this cluster on this machine.
//! - **Bridge:** a file of N newline-framed messages served by tailsrv; `tsbridge to-jetstream
//!   --exit-at-end` into a fresh R=3 stream (created beforehand, like the raw one), timed from
//!   the process start to its exit (every message acknowledged). The stream's message count
//!   is checked to be N.
//!
//! Both are run in turns, `reps` times (at least 2), and the best of each is kept: the machine
//! is shared and noisy, only the ratio is worth comparing.

use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::procs::{sibling, Server};
use crate::report::{Row, Table};
use crate::run::{Plan, Result};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use tests::nats::{self, Cluster as Nats};

const WINDOW: usize = 1024;

pub fn bridge(plan: &Plan, table: &mut Table) -> Result<()> {
    if !nats::installed() || sibling("tsbridge").is_err() {
        table.push(
            Row::new("bridge", "all figures")
                .value("n/a: nats-server not installed or tsbridge not built"),
        );
        return Ok(());
    }
    let cluster = Nats::try_start_in(&plan.dir.join("nats-bridge"), 3, "")?;
    let urls = cluster.urls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let quick = plan.reps == 1;
    let mut run_no = 0;
    for (size, n) in [
        (100usize, if quick { 50_000 } else { 200_000 }),
        (1000, if quick { 30_000 } else { 100_000 }),
    ] {
        let log = plan.dir.join(format!("bridge-{size}.log"));
        let mut line = vec![b'm'; size - 1];
        line.push(b'\n');
        std::fs::write(&log, line.repeat(n))
            .map_err(|e| format!("writing {}: {e}", log.display()))?;
        let server = Server::start(tests::tailsrv(&log).arg("-q"))?;
        let (mut raw, mut dedupe, mut via) = (0f64, 0f64, 0f64);
        for _ in 0..plan.reps.max(2) {
            run_no += 1;
            let name = format!("RAW{run_no}");
            create(&rt, &urls, &name)?;
            raw = raw.max(rt.block_on(raw_publish(&urls, &name, size - 1, n, false))?);
            let name = format!("DEDUPE{run_no}");
            create(&rt, &urls, &name)?;
            dedupe = dedupe.max(rt.block_on(raw_publish(&urls, &name, size - 1, n, true))?);
            let name = format!("BRIDGE{run_no}");
            create(&rt, &urls, &name)?;
            via = via.max(run_bridge(&rt, &urls, &name, &server, n)?);
        }
        let ratio = via / raw;
        table.push(
            Row::new(
                "bridge",
                &format!("file → JetStream R=3, {size} B, {n} msgs"),
            )
            .value(format!("{via:.0} msg/s"))
            .baseline(format!("{raw:.0} msg/s raw async publish"))
            .ratio(ratio)
            .target("≥ 0.8× raw", ratio >= 0.8),
        );
        table.push(
            Row::new(
                "bridge",
                &format!("  the same, beside raw publish with id + expected seq, {size} B"),
            )
            .value(format!("{via:.0} msg/s"))
            .baseline(format!(
                "{dedupe:.0} msg/s raw, Nats-Msg-Id + Nats-Expected-Last-Sequence"
            ))
            .ratio(via / dedupe),
        );
    }
    table.note(format!(
        "bridge: 3 nats-server ({}) on loopback, file storage, R=3; raw and bridge both keep {WINDOW} acks in flight",
        nats::version()
    ));
    Ok(())
}

/// A fresh R=3 stream `name` with the subject `bench.NAME`.
fn create(rt: &tokio::runtime::Runtime, urls: &str, name: &str) -> Result<()> {
    rt.block_on(async {
        let servers: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(servers.as_slice())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let js = jetstream::new(client);
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("bench.{}", name.to_lowercase())],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating stream {name}: {e}"))?;
        Ok(())
    })
}

/// Publishes `n` payloads of `size` bytes with up to WINDOW acks in flight: messages/s.
async fn raw_publish(urls: &str, name: &str, size: usize, n: usize, dedupe: bool) -> Result<f64> {
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::connect(servers.as_slice())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client);
    let subject = async_nats::Subject::from(format!("bench.{}", name.to_lowercase()));
    let payload = bytes_of(size);
    let start = Instant::now();
    let mut inflight: VecDeque<jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if inflight.len() == WINDOW {
            let ack = inflight.pop_front().expect("full");
            ack.await.map_err(|e| format!("raw ack: {e}"))?;
        }
        let publish = if dedupe {
            // What exactly-once costs the servers: an id to remember, a sequence to check.
            PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("bench:{i}"))
                .expected_last_sequence(i as u64)
        } else {
            PublishMessage::build().payload(payload.clone())
        };
        let ack = js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| format!("raw publish: {e}"))?;
        inflight.push_back(ack);
    }
    for ack in inflight {
        ack.await.map_err(|e| format!("raw ack: {e}"))?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn bytes_of(size: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'm'; size])
}

/// tsbridge from the log into stream `name` until every message is acked: messages/s.
fn run_bridge(
    rt: &tokio::runtime::Runtime,
    urls: &str,
    name: &str,
    server: &Server,
    n: usize,
) -> Result<f64> {
    let subject = format!("bench.{}", name.to_lowercase());
    let start = Instant::now();
    let status = Command::new(sibling("tsbridge")?)
        .args([
            "-q",
            "to-jetstream",
            "--nats",
            urls,
            "--stream",
            name,
            "--subject",
        ])
        .arg(&subject)
        .args(["--exit-at-end", "--window", &WINDOW.to_string()])
        .arg(server.addr.to_string())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running tsbridge: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("tsbridge failed: {status}"));
    }
    let stored = rt.block_on(async {
        let servers: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(servers.as_slice()).await.ok()?;
        let mut s = jetstream::new(client).get_stream(name).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    });
    if stored != Some(n as u64) {
        return Err(format!("the stream holds {stored:?} messages, not {n}"));
    }
    Ok(n as f64 / secs)
}
