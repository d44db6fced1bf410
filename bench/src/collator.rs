//! The collator (section `collator`): append rates beside the physical limit measured in the
//! same run on the same disk.
//!
//! - **Raw limit:** a loop of `write` + `fdatasync` of 100 B and 1000 B appends to a scratch
//!   file: what one durable writer can do on this disk. Also a loop of plain `write`s.
//! - **`data` mode:** 1 and 16 connections, one message per request, each waiting for its
//!   answer. Group commit is what lets 16 beat the raw loop: they share each `fdatasync`.
//! - **`write` mode:** 1 connection, one message per request, answered before the next
//!   (100 B and 1000 B); 16 connections, 100 B, one message per request; and 1000 B
//!   pipelined from one connection.
//! - **Peer, NATS JetStream** (issue #12): with `nats-server` on PATH, one server on loopback
//!   (file storage, one R=1 stream) takes turns with the collator on each `write` shape: the
//!   bench's own async-nats client publishes with ack, synchronously (each ack awaited before
//!   the next publish) from 1 and 16 connections, or asynchronously with a window of acks in
//!   flight for the pipelined shape. JetStream does not fsync per message by default, so
//!   `write` mode (answered once written, not synced) is the fair comparison. The stream is
//!   checked to hold every acknowledged message.
//! - **Restart:** a torn tail (half a line) on the data file; the time from start to
//!   `listening on`, the scan without an index included.
//!
//! Contract used (docs/collator.md, docs/protocols.md): `tailsrv-collator -p 0 --bind 127.0.0.1 --sync MODE
//! FILE`; request `msg LEN` + body, answer `ok OFFSET MSGNO COUNT`. Every answer is checked
//! to be `ok`, and the file's final length against the bytes acknowledged.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use async_nats::jetstream::{self, stream};

use logfile::segments::Log;

use crate::data::DataFile;
use crate::procs::{sibling, Server};
use crate::report::{Row, Table};
use crate::run::{in_turns, Plan, Result};
use crate::segments::{most, spread};
use tests::nats::{self, Cluster as Nats};

const COLLATOR: &str = "tailsrv-collator";

/// Requests in flight on the collator's pipelined run.
pub const PIPELINE: usize = 256;
/// Acks in flight on JetStream's async publish (tsbridge's default `--window`, as the bridge
/// section's raw publisher).
const JS_WINDOW: usize = 1024;
/// The peer's stream and subject.
const STREAM: &str = "PEER";
const SUBJECT: &str = "bench.peer";

pub fn collator(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    if sibling(COLLATOR).is_err() {
        table.push(Row::new("collator", "all figures").value("n/a: collator not built"));
        return Ok(());
    }
    let window = window(plan);
    let raw_sync: Vec<f64> = [100, 1000]
        .iter()
        .map(|&size| raw_loop(plan, size, window, true))
        .collect::<Result<_>>()?;
    let raw_write = raw_loop(plan, 1000, window, false)?;

    // data mode: 1 and 16 connections, one message per request. The disk's sync rate
    // swings with the neighbours' I/O on a shared machine, so each figure is taken in turns
    // with the raw loop, and the best of each is kept.
    for (conns, target, min) in [
        (1usize, "≥ 0.8× raw fdatasync", 0.8),
        (16, "≥ 4× raw fdatasync", 4.0),
    ] {
        let (mut rate, mut raw) = (0f64, 0f64);
        for _ in 0..plan.reps.max(2) {
            raw = raw.max(raw_loop(plan, 100, window, true)?);
            rate = rate.max(run_collator(plan, "data", conns, 100, 1, window)?);
        }
        let ratio = rate / raw;
        table.push(
            Row::new(
                "collator",
                &format!("data, {conns} conn, 100 B, 1 msg/request"),
            )
            .value(format!("{rate:.0} msg/s"))
            .baseline(format!("{raw:.0} write+fdatasync/s"))
            .ratio(ratio)
            .target(target, ratio >= min),
        );
    }
    // write mode, the shapes the issue compares with NATS JetStream: 1 connection one
    // message per request (100 B, 1000 B), 16 connections one message per request, 1000 B
    // pipelined from one connection. With nats-server installed, the collator and JetStream
    // take turns on each shape (best of each kept); without it, the collator runs once.
    let (peer, peer_note) = if !nats::installed() {
        (
            None,
            "NATS JetStream not compared in this run (nats-server not on PATH)".to_string(),
        )
    } else {
        match Peer::start(plan) {
            Ok(p) => (Some(p), String::new()),
            Err(e) => (
                None,
                format!("NATS JetStream not compared in this run: {e}"),
            ),
        }
    };
    let turns = if peer.is_some() { plan.reps.max(2) } else { 1 };
    let shape = |conns: usize, size: usize, depth: usize| -> Result<(f64, Option<f64>)> {
        let (mut rate, mut js) = (0f64, None::<f64>);
        for _ in 0..turns {
            rate = rate.max(run_collator(plan, "write", conns, size, depth, window)?);
            if let Some(p) = &peer {
                let r = p.publish(conns, size, if depth == 1 { 1 } else { JS_WINDOW }, window)?;
                js = Some(js.unwrap_or(0f64).max(r));
            }
        }
        Ok((rate, js))
    };
    let one: Vec<(f64, Option<f64>)> = [100usize, 1000]
        .into_iter()
        .map(|size| shape(1, size, 1))
        .collect::<Result<_>>()?;
    let sixteen = shape(16, 100, 1)?;
    let piped = shape(1, 1000, PIPELINE)?;

    for (i, size) in [100usize, 1000].into_iter().enumerate() {
        let rate = one[i].0;
        table.push(
            Row::new(
                "collator",
                &format!("write, 1 conn, {size} B, 1 msg/request"),
            )
            .value(format!("{rate:.0} msg/s"))
            .baseline(format!("{:.0} write+fdatasync/s", raw_sync[i]))
            .ratio(rate / raw_sync[i]),
        );
    }
    let rate = piped.0;
    table.push(
        Row::new("collator", "write, 1 conn, 1000 B, pipelined")
            .value(format!("{rate:.0} msg/s"))
            .baseline(format!("{raw_write:.0} write(2)/s"))
            .ratio(rate / raw_write)
            .target("≥ 150k msg/s", rate >= 150_000.0),
    );
    // The same shapes beside JetStream, one row per target of the issue.
    let versus = [
        (
            "write, 1 conn, 100 B, 1 msg/request, vs JetStream",
            one[0],
            "sync publish",
            1.5,
        ),
        (
            "write, 1 conn, 1000 B, 1 msg/request, vs JetStream",
            one[1],
            "sync publish",
            1.5,
        ),
        (
            "write, 16 conn, 100 B, 1 msg/request, vs JetStream",
            sixteen,
            "sync publish, 16 conn",
            1.0,
        ),
        (
            "write, 1 conn, 1000 B, pipelined, vs JetStream",
            piped,
            "async publish",
            1.0,
        ),
    ];
    for (figure, (rate, js), what, min) in versus {
        let row = Row::new("collator", figure).value(format!("{rate:.0} msg/s"));
        let target = format!(
            "≥ {min:.1}× JetStream {}",
            what.split(',').next().unwrap_or(what)
        );
        table.push(match js {
            Some(js) => row
                .baseline(format!("{js:.0} msg/s JetStream {what}"))
                .ratio(rate / js)
                .target(target, rate / js >= min),
            None => row.baseline("n/a: JetStream not run (see the note)"),
        });
    }
    drop(peer);
    // Restart with a torn tail on the data file, beside `wc -l` on the same file.
    let secs = time_restart(&data.path, &data.path)?;
    let wc = wc_l(data)?;
    let limit = 0.5 * ((data.len as f64) / (1u64 << 30) as f64).max(1.0);
    table.push(
        Row::new(
            "collator",
            &format!("restart, torn tail, {} MiB log", data.len >> 20),
        )
        .value(format!("{secs:.3} s"))
        .baseline(format!("wc -l {wc:.3} s"))
        .ratio(wc / secs)
        .target("≤ 0.5 s (1 GiB)", secs <= limit),
    );
    if peer_note.is_empty() {
        table.note(format!(
            "collator: JetStream peer: one nats-server ({}) on loopback, file storage, one R=1 \
             stream, the bench's own async-nats client on one thread; sync publish awaits each \
             ack before the next publish, async publish keeps {JS_WINDOW} acks in flight (the \
             collator's pipelined run keeps {PIPELINE} requests in flight). JetStream does not \
             fsync per message by default, so it is compared with the collator's `write` mode \
             (answered once written, not synced); each pair taken in turns, best of {} each",
            nats::version(),
            plan.reps.max(2)
        ));
    } else {
        table.note(format!(
            "collator: {peer_note}; baselines are this disk's raw write(2) and \
             write+fdatasync loops"
        ));
    }
    Ok(())
}

/// How long each rate run lasts: 3 s, or 1.5 s with one repetition (`--quick`).
pub fn window(plan: &Plan) -> Duration {
    Duration::from_secs_f64(if plan.reps > 1 { 3.0 } else { 1.5 })
}

/// Appends of `size` bytes for `window`: rate of `write` (+ `fdatasync` if `sync`).
fn raw_loop(plan: &Plan, size: usize, window: Duration, sync: bool) -> Result<f64> {
    let path = plan.dir.join("raw.log");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("raw loop: {e}"))?;
    let buf = vec![b'r'; size];
    let start = Instant::now();
    let mut n = 0u64;
    let mut at = 0u64;
    while start.elapsed() < window {
        f.write_all_at(&buf, at)
            .map_err(|e| format!("raw loop: {e}"))?;
        at += size as u64;
        if sync {
            f.sync_data().map_err(|e| format!("raw loop: {e}"))?;
        }
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// Messages per second through a collator in `sync` mode from `conns` connections, each
/// keeping `depth` requests of `size` bytes in flight.
fn run_collator(
    plan: &Plan,
    sync: &str,
    conns: usize,
    size: usize,
    depth: usize,
    window: Duration,
) -> Result<f64> {
    let shape = Shape {
        sync,
        conns,
        size,
        depth,
    };
    collate(plan, Variant::default(), shape, window)
}

/// Which collator a run starts: another build's binary, and flags beyond `--sync MODE -q`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Variant<'a> {
    /// Another build of `tailsrv-collator` (None: the one beside the bench).
    pub bin: Option<&'a Path>,
    /// More flags (`--segment-bytes 64M`: then the path is a segmented log's directory).
    pub args: &'a [&'a str],
    /// Part of the scratch path's name, so variants never share a log.
    pub tag: &'a str,
}

/// What the producers send: `conns` connections in `sync` mode, each keeping `depth`
/// requests of `size` bytes in flight.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub sync: &'a str,
    pub conns: usize,
    pub size: usize,
    pub depth: usize,
}

/// Messages per second through the `variant` collator with producers of `shape` for
/// `window`. Every answer is checked to be `ok` and the log's end (a segmented log's global
/// end, whatever retention deleted) against the bytes acknowledged; the log is removed.
pub fn collate(plan: &Plan, variant: Variant, shape: Shape, window: Duration) -> Result<f64> {
    let Shape {
        sync,
        conns,
        size,
        depth,
    } = shape;
    let path = plan.dir.join(format!(
        "collated-{}{sync}-{conns}-{size}-{depth}.log",
        variant.tag
    ));
    let mut spawn = tests::collator(&path)
        .args(["--sync", sync, "-q"])
        .args(variant.args);
    if let Some(bin) = variant.bin {
        spawn = spawn.program(bin);
    }
    let server = Server::start(spawn)?;
    let addr = server.addr;
    let threads: Vec<_> = (0..conns)
        .map(|_| std::thread::spawn(move || producer(addr, size, depth, window)))
        .collect();
    let mut total = 0u64;
    let mut longest = 0f64;
    for t in threads {
        let (n, secs) = t
            .join()
            .map_err(|_| "producer thread panicked".to_string())??;
        total += n;
        longest = longest.max(secs);
    }
    drop(server);
    let len = log_end(&path);
    remove_log(&path);
    if len < total * (size as u64 + 1) {
        return Err(format!(
            "the log ends at byte {len}, {total} messages of {size} B were acknowledged"
        ));
    }
    Ok(total as f64 / longest)
}

/// Where the log at `path` ends: a plain file's length, a segmented log's global end.
pub fn log_end(path: &Path) -> u64 {
    if path.is_dir() {
        Log::open(path).map(|l| l.end()).unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Removes the log at `path` (a file or a segmented log's directory) and the collator's
/// files beside it (`PATH.collator`, `PATH.synced`).
pub fn remove_log(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
    for suffix in [".collator", ".synced"] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        let _ = std::fs::remove_file(beside);
    }
}

/// One connection: `depth` requests in flight until `window` is over; returns the messages
/// acknowledged and the seconds it took.
pub fn producer(
    addr: SocketAddr,
    size: usize,
    depth: usize,
    window: Duration,
) -> Result<(u64, f64)> {
    let ctx = |e: std::io::Error| format!("producer: {e}");
    let s = TcpStream::connect(addr).map_err(ctx)?;
    s.set_nodelay(true).map_err(ctx)?;
    let mut w = s.try_clone().map_err(ctx)?;
    let mut r = BufReader::new(s);
    let mut one = format!("msg {size}\n").into_bytes();
    one.extend(std::iter::repeat_n(b'm', size));
    let burst: Vec<u8> = one.repeat(depth.div_ceil(2).max(1));
    let start = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut line = String::new();
    w.write_all(&one.repeat(depth)).map_err(ctx)?;
    sent += depth as u64;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(ctx)?;
        if !line.starts_with("ok ") {
            return Err(format!("collator answered {line:?}"));
        }
        acked += 1;
        let open = start.elapsed() < window;
        if open && depth == 1 {
            w.write_all(&one).map_err(ctx)?;
            sent += 1;
        } else if open && sent - acked <= (depth / 2) as u64 {
            w.write_all(&burst).map_err(ctx)?;
            sent += depth.div_ceil(2).max(1) as u64;
        }
        if acked == sent {
            return Ok((acked, start.elapsed().as_secs_f64()));
        }
    }
}

/// Seconds `wc -l` takes on the data file (the scan's floor: read and count every byte).
fn wc_l(data: &DataFile) -> Result<f64> {
    let start = Instant::now();
    let out = std::process::Command::new("wc")
        .arg("-l")
        .arg(&data.path)
        .output()
        .map_err(|e| format!("wc -l: {e}"))?;
    if !out.status.success() {
        return Err("wc -l failed".into());
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Appends half a line to `torn` (the log's file, or a segmented log's active segment),
/// starts a collator on `log` and times it to `listening on`; checks it cut the half line,
/// leaving `torn` as it was. The journal beside `log` is removed before and after, so every
/// run does the same check.
pub fn time_restart(log: &Path, torn: &Path) -> Result<f64> {
    let ctx = |e: std::io::Error| format!("restart of {}: {e}", log.display());
    let len = std::fs::metadata(torn).map_err(ctx)?.len();
    let f = OpenOptions::new().append(true).open(torn).map_err(ctx)?;
    // The bench wrote the file moments ago: flush it first, or the collator's sync after
    // the cut would be timed flushing the bench's writes.
    f.sync_all().map_err(ctx)?;
    (&f).write_all(b"half a li").map_err(ctx)?;
    drop(f);
    // Warm the page cache as a restarted machine's collator would not be: the same for
    // every run, and the scan, not the disk, is measured.
    let _ = std::fs::read(torn).map(|v| v.len());
    let mut journal = log.as_os_str().to_owned();
    journal.push(".collator");
    let _ = std::fs::remove_file(&journal);
    let start = Instant::now();
    let server = Server::start(tests::collator(log).arg("-q"))?;
    let secs = start.elapsed().as_secs_f64();
    drop(server);
    let _ = std::fs::remove_file(&journal);
    let after = std::fs::metadata(torn).map(|m| m.len()).unwrap_or(0);
    if after != len {
        return Err(format!(
            "after the restart {} is {after} bytes, not {len}",
            torn.display()
        ));
    }
    Ok(secs)
}

/// NATS JetStream as the collator's peer: one nats-server, one file-storage R=1 stream, and
/// the runtime the bench's own client runs on (tokio, current thread).
struct Peer {
    // Dropped first: the runtime (and its connections) before the server.
    rt: tokio::runtime::Runtime,
    url: String,
    _nats: Nats,
}

/// Bound on any one JetStream request (connect, ack, stream info).
const JS_TIMEOUT: Duration = Duration::from_secs(5);

impl Peer {
    fn start(plan: &Plan) -> Result<Peer> {
        let nats = Nats::try_start_in(&plan.dir.join("nats-collator"), 1, "")?;
        let url = nats.urls();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let peer = Peer {
            rt,
            url,
            _nats: nats,
        };
        peer.rt.block_on(async {
            let js = connect(&peer.url).await?;
            tokio::time::timeout(
                JS_TIMEOUT * 2,
                js.create_stream(stream::Config {
                    name: STREAM.to_owned(),
                    subjects: vec![SUBJECT.to_owned()],
                    storage: stream::StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|_| "creating the JetStream stream: timed out".to_string())?
            .map_err(|e| format!("creating the JetStream stream: {e}"))?;
            Ok::<_, String>(())
        })?;
        Ok(peer)
    }

    /// Messages per second acknowledged by JetStream from `conns` connections, each
    /// publishing `size`-byte messages with up to `window` acks in flight (1: synchronous
    /// publish, each ack awaited before the next publish) for `secs`. The stream is checked
    /// to hold every acknowledged message, then purged.
    fn publish(&self, conns: usize, size: usize, window: usize, secs: Duration) -> Result<f64> {
        self.rt.block_on(async {
            let mut clients = Vec::with_capacity(conns);
            for _ in 0..conns {
                clients.push(connect(&self.url).await?);
            }
            let payload = bytes::Bytes::from(vec![b'm'; size]);
            let mut set = tokio::task::JoinSet::new();
            for js in clients {
                set.spawn(publisher(js, payload.clone(), window, secs));
            }
            let (mut total, mut longest) = (0u64, 0f64);
            let bound = secs + JS_TIMEOUT * 2;
            while let Some(done) = tokio::time::timeout(bound, set.join_next())
                .await
                .map_err(|_| format!("JetStream publishers still running after {bound:?}"))?
            {
                let (n, s) = done.map_err(|e| format!("JetStream publisher: {e}"))??;
                total += n;
                longest = longest.max(s);
            }
            let js = connect(&self.url).await?;
            let mut st = tokio::time::timeout(JS_TIMEOUT, js.get_stream(STREAM))
                .await
                .map_err(|_| "JetStream stream lookup timed out".to_string())?
                .map_err(|e| format!("JetStream stream lookup: {e}"))?;
            let stored = tokio::time::timeout(JS_TIMEOUT, st.info())
                .await
                .map_err(|_| "JetStream stream info timed out".to_string())?
                .map_err(|e| format!("JetStream stream info: {e}"))?
                .state
                .messages;
            if stored < total {
                return Err(format!(
                    "the stream holds {stored} messages, {total} were acknowledged"
                ));
            }
            tokio::time::timeout(JS_TIMEOUT * 4, st.purge())
                .await
                .map_err(|_| "JetStream purge timed out".to_string())?
                .map_err(|e| format!("JetStream purge: {e}"))?;
            Ok(total as f64 / longest)
        })
    }
}

/// A JetStream context on a fresh connection to `url`, every request bounded by JS_TIMEOUT.
async fn connect(url: &str) -> Result<jetstream::Context> {
    let client = tokio::time::timeout(
        JS_TIMEOUT,
        async_nats::ConnectOptions::new()
            .connection_timeout(JS_TIMEOUT)
            .connect(url),
    )
    .await
    .map_err(|_| format!("connecting to {url}: timed out"))?
    .map_err(|e| format!("connecting to {url}: {e}"))?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(JS_TIMEOUT)
        .build(client))
}

/// One connection publishing until `secs` is over, up to `window` acks in flight: the
/// messages acknowledged and the seconds it took (to the last ack).
async fn publisher(
    js: jetstream::Context,
    payload: bytes::Bytes,
    window: usize,
    secs: Duration,
) -> Result<(u64, f64)> {
    let mut inflight: VecDeque<jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(window);
    let start = Instant::now();
    let mut acked = 0u64;
    while start.elapsed() < secs {
        let ack = js
            .publish(SUBJECT, payload.clone())
            .await
            .map_err(|e| format!("JetStream publish: {e}"))?;
        inflight.push_back(ack);
        if inflight.len() >= window {
            let ack = inflight.pop_front().expect("full");
            ack.await.map_err(|e| format!("JetStream ack: {e}"))?;
            acked += 1;
        }
    }
    for ack in inflight {
        ack.await.map_err(|e| format!("JetStream ack: {e}"))?;
        acked += 1;
    }
    Ok((acked, start.elapsed().as_secs_f64()))
}

/// Section `collator-vs`: this build's collator and another build's (`--baseline-bin DIR`)
/// in `--sync data`, 1 and 16 connections of 100 B one message per request, taking turns;
/// best of each.
pub fn versus_build(plan: &Plan, table: &mut Table) -> Result<()> {
    let Some(dir) = &plan.baseline_bin else {
        table.push(Row::new("collator-vs", "all figures").value("n/a: no --baseline-bin DIR"));
        return Ok(());
    };
    let old = dir.join(COLLATOR);
    if !old.is_file() {
        return Err(format!("{} is not built", old.display()));
    }
    let window = window(plan);
    let older = Variant {
        bin: Some(&old),
        tag: "older-",
        ..Variant::default()
    };
    let rounds = plan.reps.max(3);
    for conns in [1usize, 16] {
        let shape = Shape {
            sync: "data",
            conns,
            size: 100,
            depth: 1,
        };
        let run = |v: Variant| collate(plan, v, shape, window);
        let (r_new, r_old) = in_turns(rounds, || run(Variant::default()), || run(older))?;
        let ratios: Vec<f64> = r_new.iter().zip(&r_old).map(|(a, b)| a / b).collect();
        let (new, then) = (most(&r_new), most(&r_old));
        table.push(
            Row::new(
                "collator-vs",
                &format!("data, {conns} conn, 100 B, 1 msg/request"),
            )
            .value(format!("{new:.0} msg/s"))
            .baseline(format!("{then:.0} msg/s {}", dir.display()))
            .ratio(new / then),
        );
        table.note(format!(
            "collator-vs: {conns} conn: best of {rounds} runs of {window:?} each, this build \
             and {} in turns; per-round ratios {}",
            old.display(),
            spread(&ratios)
        ));
    }
    Ok(())
}
