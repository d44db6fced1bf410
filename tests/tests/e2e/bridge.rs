//! tsbridge end to end: real nats-server processes (a 3-node JetStream cluster, R=3 streams)
//! on loopback ports, the real tailsrv and tsbridge binaries, files in temp directories.
//!
//! Ground truth never comes from the bridge's code: input files are generated here, the
//! stream is read back with async-nats directly (`tests::nats::read_stream`), and every stored
//! message is checked against the tests' own naive framing scan (`tests::framed`): message i
//! of the log is stream sequence i+1, with the right offset headers and payload. Skipped
//! (with a note) when nats-server is not installed, except under CI=true.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tests::framed::{self, FRAMINGS};
use tests::nats::{self, Cluster};
use tests::*;

/// Bound for a bridge run that should finish.
const RUN: Duration = Duration::from_secs(90);

/// `n` messages of `framing` with payloads of 0 to `max` bytes (empty ones included).
fn input(framing: &str, n: usize, max: usize, seed: u64) -> Vec<u8> {
    let sizes = random_bytes(n * 2, seed);
    let body = random_bytes(max + 1, seed ^ 0x5eed);
    let mut out = Vec::new();
    for i in 0..n {
        let len = (usize::from(sizes[2 * i]) << 8 | usize::from(sizes[2 * i + 1])) % (max + 1);
        framed::encode(framing, &body[..len], &mut out);
    }
    out
}

fn to_js(urls: &str, server: &Proc, stream: &str, framing: &str, extra: &[&str]) -> Proc {
    let addr = server.addr().to_string();
    let subject = format!("logs.{}", stream.to_lowercase());
    let mut args = vec![
        "to-jetstream",
        "--nats",
        urls,
        "--stream",
        stream,
        "--subject",
        &subject,
        "--framing",
        framing,
        "--log-id",
        "test-log",
    ];
    args.extend_from_slice(extra);
    args.push(&addr);
    tsbridge(args).spawn()
}

fn from_js(urls: &str, stream: &str, framing: &str, file: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "from-jetstream",
        "--nats",
        urls,
        "--stream",
        stream,
        "--framing",
        framing,
        "--sync",
        "data",
    ];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    tsbridge(args).spawn()
}

fn finish(p: &mut Proc, what: &str) -> ExitStatus {
    match p.wait_exit(RUN) {
        Some(s) => s,
        None => panic!(
            "{what} did not finish within {RUN:?}; log:\n{}",
            p.log.text()
        ),
    }
}

fn finish_ok(p: &mut Proc, what: &str) {
    let status = finish(p, what);
    assert!(
        status.success(),
        "{what} failed ({status}); log:\n{}",
        p.log.text()
    );
}

/// The stream holds every message of `data` exactly once, in order: sequence i+1 is message
/// i, with its offsets in the headers and its payload.
fn check_stream(urls: &str, stream: &str, framing: &str, data: &[u8]) {
    let (starts, end) = framed::naive_starts(framing, data);
    let stored = nats::read_stream(urls, stream);
    assert_eq!(
        stored.len(),
        starts.len(),
        "stream {stream} holds {} messages, the log {}",
        stored.len(),
        starts.len()
    );
    for (i, m) in stored.iter().enumerate() {
        let start = starts[i];
        let next = starts.get(i + 1).copied().unwrap_or(end);
        assert_eq!(m.seq, i as u64 + 1, "message {i}: sequence");
        let h = |k: &str| m.headers.get(k).cloned().unwrap_or_default();
        assert_eq!(
            h("Tailsrv-Offset"),
            start.to_string(),
            "message {i}: offset"
        );
        assert_eq!(h("Tailsrv-Next"), next.to_string(), "message {i}: next");
        assert_eq!(
            h("Nats-Msg-Id"),
            format!("test-log:{start}"),
            "message {i}: id"
        );
        assert_eq!(
            m.payload,
            framed::payload(framing, &data[start as usize..next as usize]),
            "message {i}: payload"
        );
    }
}

/// Messages the cluster's servers report stored (the first live server that answers).
fn stored_count(cluster: &Cluster) -> u64 {
    for node in cluster.nodes.iter().filter(|n| n.alive()) {
        if let Some(body) = node.http_get("/jsz") {
            if let Some(i) = body.find("\"messages\": ") {
                let n: String = body[i + 12..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = n.parse() {
                    return n;
                }
            }
        }
    }
    0
}

/// file -> R=3 stream -> file, for every framing: the stream holds exactly the log's
/// messages with their offsets, and the file written back equals the input byte for byte.
/// Also newline -> stream -> u32be: the output is the same payloads re-framed.
#[test]
fn round_trip_every_framing() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let dir = tempdir();
    for (k, framing) in FRAMINGS.iter().enumerate() {
        let data = input(framing, 3000, 300, 40 + k as u64);
        let log = dir.path().join(format!("{framing}.log"));
        std::fs::write(&log, &data).unwrap();
        let server = tailsrv(&log).start();
        let stream = format!("RT_{}", framing.to_uppercase());
        let create = ["--create-stream", "--replicas", "3", "--exit-at-end"];
        let mut b = to_js(&urls, &server, &stream, framing, &create);
        finish_ok(&mut b, "to-jetstream");
        check_stream(&urls, &stream, framing, &data);

        let out = dir.path().join(format!("{framing}.out"));
        let mut f = from_js(&urls, &stream, framing, &out, &["--exit-at-end"]);
        finish_ok(&mut f, "from-jetstream");
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{framing}: the round trip differs"
        );

        // Running either side again changes nothing.
        let mut b = to_js(&urls, &server, &stream, framing, &["--exit-at-end"]);
        finish_ok(&mut b, "to-jetstream again");
        let mut f = from_js(&urls, &stream, framing, &out, &["--exit-at-end"]);
        finish_ok(&mut f, "from-jetstream again");
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{framing}: a rerun changed the file"
        );

        if *framing == "newline" {
            let out = dir.path().join("newline-as-u32be.out");
            let mut f = from_js(
                &urls,
                &stream,
                "u32be",
                &out,
                &["--exit-at-end", "--durable", "re"],
            );
            finish_ok(&mut f, "from-jetstream --framing u32be");
            let (starts, end) = framed::naive_starts(framing, &data);
            let mut want = Vec::new();
            for (i, &s) in starts.iter().enumerate() {
                let next = starts.get(i + 1).copied().unwrap_or(end);
                framed::encode(
                    "u32be",
                    framed::payload(framing, &data[s as usize..next as usize]),
                    &mut want,
                );
            }
            assert!(
                std::fs::read(&out).unwrap() == want,
                "newline -> u32be differs"
            );
        }
    }
    check_stream(
        &urls,
        "RT_NEWLINE",
        "newline",
        &std::fs::read(dir.path().join("newline.log")).unwrap(),
    );
}

/// kill -9 of to-jetstream 15 times while the log grows and the bridge publishes with a
/// window of acks in flight; then kill -9 of from-jetstream 8 times while it writes. The stream
/// holds every message exactly once, in order, and the file written back is byte-identical.
#[test]
fn kill9_bridges_repeatedly() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let dir = tempdir();
    let framing = "varint";
    let data = input(framing, 40_000, 200, 7);
    let (starts, _) = framed::naive_starts(framing, &data);
    let half = starts[starts.len() / 2] as usize;
    let log = dir.path().join("k.log");
    std::fs::write(&log, &data[..half]).unwrap();
    let server = tailsrv(&log).start();
    let create = ["--create-stream", "--replicas", "3", "--window", "256"];
    let kills = 15;
    let mut appended = half;
    let jitter = random_bytes(kills + 8, 99);
    let mut counts = Vec::new();
    for (k, &j) in jitter[..kills].iter().enumerate() {
        let mut b = to_js(&urls, &server, "K", framing, &create);
        std::thread::sleep(Duration::from_millis(150 + u64::from(j) * 2));
        b.signal(Signal::KILL);
        b.wait_exit(PATIENCE).expect("killed");
        counts.push(stored_count(&cluster));
        // The log grows between kills: the rest in uneven slices, cut anywhere.
        let to = (half + (data.len() - half) * (k + 1) / kills).min(data.len());
        append(&log, &data[appended..to]);
        appended = to;
    }
    eprintln!(
        "messages stored at each kill: {counts:?} (of {})",
        starts.len()
    );
    let mut b = to_js(&urls, &server, "K", framing, &["--exit-at-end"]);
    finish_ok(&mut b, "to-jetstream after the kills");
    check_stream(&urls, "K", framing, &data);
    assert!(
        counts
            .iter()
            .filter(|&&c| c > 0 && c < starts.len() as u64)
            .count()
            >= 3,
        "the kills should fall during the transfer: {counts:?}"
    );

    let out = dir.path().join("k.out");
    for k in 0..8 {
        let mut f = from_js(&urls, "K", framing, &out, &["--batch", "64"]);
        std::thread::sleep(Duration::from_millis(
            300 + u64::from(jitter[kills + k]) * 2,
        ));
        f.signal(Signal::KILL);
        f.wait_exit(PATIENCE).expect("killed");
    }
    let partial = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!("file after the kills: {partial} of {} bytes", data.len());
    let mut f = from_js(
        &urls,
        "K",
        framing,
        &out,
        &["--exit-at-end", "--batch", "64"],
    );
    finish_ok(&mut f, "from-jetstream after the kills");
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the round trip after kills differs"
    );
}

/// The stream's leader is killed (SIGKILL) while to-jetstream publishes and from-jetstream
/// writes: both carry on with the other two servers (R=3 keeps a quorum), the stream holds
/// every message exactly once, in order, and the file is byte-identical.
#[test]
fn stream_leader_killed_during_transfer() {
    if !nats::available() {
        return;
    }
    let mut cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let dir = tempdir();
    let framing = "newline";
    let data = input(framing, 40_000, 120, 11);
    let log = dir.path().join("l.log");
    std::fs::write(&log, &data).unwrap();
    let server = tailsrv(&log).start();
    let mut b = to_js(
        &urls,
        &server,
        "L",
        framing,
        &["--create-stream", "--replicas", "3", "--exit-at-end"],
    );
    assert!(
        eventually(PATIENCE, || stored_count(&cluster) >= 5_000),
        "the bridge does not publish; log:\n{}",
        b.log.text()
    );
    let out = dir.path().join("l.out");
    let mut f = from_js(&urls, "L", framing, &out, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let leader = cluster.stream_leader("L").expect("the stream has a leader");
    let at = stored_count(&cluster);
    eprintln!(
        "killing the stream leader {} at {at} messages",
        cluster.nodes[leader].name
    );
    cluster.nodes[leader].kill();
    finish_ok(&mut b, "to-jetstream through the failover");
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.alive())
        .map(|n| n.url())
        .collect();
    check_stream(&survivors.join(","), "L", framing, &data);
    let t = Instant::now();
    assert!(
        eventually(RUN, || std::fs::metadata(&out)
            .map(|m| m.len())
            .unwrap_or(0)
            >= data.len() as u64),
        "from-jetstream did not catch up; log:\n{}",
        f.log.text()
    );
    eprintln!(
        "from-jetstream caught up {:?} after to-jetstream finished",
        t.elapsed()
    );
    f.signal(Signal::TERM);
    finish_ok(&mut f, "from-jetstream");
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the round trip through a failover differs"
    );
}

/// The errors a user meets first are clear, fast, and have their exit status.
#[test]
fn clear_errors() {
    if !nats::available() {
        return;
    }
    let dir = tempdir();
    let log = dir.path().join("e.log");
    let mut data = b"short\n".to_vec();
    data.extend(std::iter::repeat_n(b'x', 2000));
    data.push(b'\n');
    std::fs::write(&log, &data).unwrap();
    let server = tailsrv(&log).start();
    let small = Cluster::start(1, "max_payload: 1024");
    let urls = small.urls();
    let run = |p: &mut Proc, what: &str, code: i32, needle: &str| {
        let status = finish(p, what);
        // The harness reads the log on a thread: the last line may arrive after the exit.
        let found = p.log.wait_for(needle, PATIENCE).is_some();
        let text = p.log.text();
        assert_eq!(
            status.code(),
            Some(code),
            "{what}: exit status; log:\n{text}"
        );
        assert!(found, "{what}: no {needle:?} in:\n{text}");
    };
    let mut p = to_js(&urls, &server, "NOPE", "newline", &[]);
    run(&mut p, "missing stream", 4, "does not exist");
    let mut p = to_js(&urls, &server, "BIG", "newline", &["--create-stream"]);
    run(&mut p, "over max_payload", 5, "max_payload");
    let args = [
        "to-jetstream",
        "--nats",
        &urls,
        "--stream",
        "BIG",
        "--subject",
        "other.subject",
        &server.addr().to_string(),
    ];
    let mut p = tsbridge(args).spawn();
    run(&mut p, "subject mismatch", 4, "do not include");
    // The first message made it; the stream holds the log up to the big one.
    let stored = nats::read_stream(&urls, "BIG");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, b"short");

    let dead = loopback(free_port()).to_string();
    let t = Instant::now();
    let mut p = to_js(&dead, &server, "X", "newline", &["--give-up-after", "1"]);
    run(&mut p, "unreachable", 1, "unreachable");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "gave up after {:?}",
        t.elapsed()
    );

    let auth = Cluster::start(1, "authorization { user: bridge, password: right }");
    let args = [
        "to-jetstream",
        "--nats",
        &auth.urls(),
        "--user",
        "bridge",
        "--password",
        "wrong",
        "--stream",
        "A",
        "--subject",
        "a",
        &server.addr().to_string(),
    ];
    let mut p = tsbridge(args).spawn();
    run(&mut p, "auth failure", 6, "refused the credentials");

    // Two from-jetstream on one file: the second is refused at once.
    let out = dir.path().join("e.out");
    let mut first = from_js(&urls, "BIG", "newline", &out, &[]);
    assert!(
        first.log.wait_for("delivers stream", PATIENCE).is_some(),
        "{}",
        first.log.text()
    );
    let mut second = from_js(&urls, "BIG", "newline", &out, &[]);
    run(
        &mut second,
        "second writer",
        3,
        "another tsbridge is writing",
    );
    assert!(
        eventually(PATIENCE, || std::fs::read(&out).unwrap_or_default()
            == b"short\n"),
        "from-jetstream does not write; log:\n{}",
        first.log.text()
    );
    first.signal(Signal::TERM);
    finish_ok(&mut first, "from-jetstream");
    assert_eq!(std::fs::read(&out).unwrap(), b"short\n");
}

/// Directory mode: `--path` follows one file of a tailsrv serving a directory; the log id
/// defaults to that path.
#[test]
fn directory_mode_path() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(1, "");
    let urls = cluster.urls();
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    let data = input("nul", 2000, 100, 5);
    std::fs::write(dir.path().join("app/events.log"), &data).unwrap();
    std::fs::write(dir.path().join("other.log"), b"not this one\n").unwrap();
    let server = tailsrv(dir.path()).start();
    let addr = server.addr().to_string();
    let args = [
        "to-jetstream",
        "--nats",
        &urls,
        "--stream",
        "D",
        "--subject",
        "logs.d",
        "--framing",
        "nul",
        "--path",
        "app/events.log",
        "--create-stream",
        "--exit-at-end",
        &addr,
    ];
    let mut b = tsbridge(args).spawn();
    finish_ok(&mut b, "to-jetstream --path");
    let stored = nats::read_stream(&urls, "D");
    let (starts, _) = framed::naive_starts("nul", &data);
    assert_eq!(stored.len(), starts.len());
    assert_eq!(
        stored[0].headers.get("Nats-Msg-Id").map(String::as_str),
        Some("app/events.log:0")
    );
    let out = dir.path().join("d.out");
    let mut f = from_js(&urls, "D", "nul", &out, &["--exit-at-end"]);
    finish_ok(&mut f, "from-jetstream");
    assert!(
        std::fs::read(&out).unwrap() == data,
        "directory mode round trip differs"
    );
}

/// Without `--log-id` a log's identity is not the address it was reached by (issue #24): a
/// bridge resumed through another address of the same server (`localhost` after `127.0.0.1`)
/// continues the stream with the identity its messages already carry, and one given another
/// `--log-id` is still refused.
#[test]
fn the_default_log_id_names_the_log_not_the_address() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(1, "");
    let urls = cluster.urls();
    let dir = tempdir();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "one\ntwo\n").unwrap();
    let server = tailsrv(&log).start();
    let port = server.addr().port();
    let bridge = |host: &str, extra: &[&str]| {
        let addr = format!("{host}:{port}");
        let mut args = vec![
            "to-jetstream",
            "--nats",
            &urls,
            "--stream",
            "ADDR",
            "--subject",
            "logs.addr",
            "--exit-at-end",
        ];
        args.extend_from_slice(extra);
        args.push(&addr);
        tsbridge(args).spawn()
    };
    let mut b = bridge(LOOPBACK, &["--create-stream"]);
    finish_ok(&mut b, "first bridge, by 127.0.0.1");
    append(&log, b"three\n");
    let mut b = bridge("localhost", &[]);
    finish_ok(&mut b, "second bridge, by localhost");
    let stored = nats::read_stream(&urls, "ADDR");
    let got: Vec<(String, &[u8])> = stored
        .iter()
        .map(|m| {
            let id = m.headers.get("Nats-Msg-Id").cloned().unwrap_or_default();
            (id, m.payload.as_slice())
        })
        .collect();
    let want: Vec<(String, &[u8])> = vec![
        ("logs.addr:0".into(), b"one"),
        ("logs.addr:4".into(), b"two"),
        ("logs.addr:8".into(), b"three"),
    ];
    assert_eq!(
        got, want,
        "the stream holds the log once, under one identity"
    );
    // An explicit identity that is not the stream's is refused, as before.
    let mut b = bridge("localhost", &["--log-id", "other"]);
    let status = finish(&mut b, "a bridge of another log");
    assert_eq!(status.code(), Some(4), "log:\n{}", b.log.text());
}
