//! `--on-gone fail|earliest` end to end (issue #19): a consumer stopped while retention
//! deletes past its checkpoint, then resumed with each policy, against the real tailsrv (and
//! indexer) on a segmented log built with `logfile::segments`.
//!
//! - tscat: `fail` (the default too) exits 8 naming the checkpoint and the log start, writes
//!   nothing and leaves the state file where it was; `earliest` prints exactly the oracle
//!   from the log start, logs the bytes skipped (and, with `--indexer`, the first message
//!   still held) and saves the new position.
//! - tsmirror: `earliest` is refused (exit 2: a replica never skips); a replica whose
//!   length retention deleted exits 8.
//! - tsbridge to-jetstream (a one-node JetStream; skipped without nats-server): `fail` exits
//!   8 and publishes nothing more; `earliest` publishes exactly the log's messages from the
//!   log start after the ones already in the stream, and logs the skip.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use logfile::segments::{self, Log, Marker, SegmentName};
use tests::nats::{self, Cluster};
use tests::*;

/// Lines of this many bytes (newline included), so byte offsets are line numbers × 10.
const LINE: usize = 10;

/// A segmented log of `segments` segments of `lines` lines each (the last one active), and
/// the oracle: every byte ever appended.
struct Segmented {
    dir: PathBuf,
    oracle: Vec<u8>,
}

impl Segmented {
    fn new(dir: &Path, segments: usize, lines: usize) -> Segmented {
        Log::create(dir, &Marker::default()).unwrap();
        let mut log = Segmented {
            dir: dir.to_owned(),
            oracle: Vec::new(),
        };
        for s in 0..segments {
            if s > 0 {
                log.roll();
            }
            log.lines(lines);
        }
        log
    }

    /// Appends `n` lines to the active segment.
    fn lines(&mut self, n: usize) {
        let first = self.oracle.len() / LINE;
        let data: Vec<u8> = (first..first + n)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        append(&Log::open(&self.dir).unwrap().active().path, &data);
        self.oracle.extend_from_slice(&data);
    }

    /// Seals the active segment and starts the next.
    fn roll(&self) {
        let base = self.oracle.len() as u64;
        let next = SegmentName {
            base,
            first_message: base / LINE as u64,
        };
        segments::roll(&self.dir, next).unwrap();
    }

    /// Retention: deletes the oldest segment; returns the new log start.
    fn delete_oldest(&self) -> u64 {
        let log = Log::open(&self.dir).unwrap();
        segments::remove(&log.segments()[0]).unwrap();
        Log::open(&self.dir).unwrap().start().base
    }
}

/// Waits until tailsrv's `-0 ok` names `start` as the log start.
fn wait_start(srv: &Proc, start: u64) {
    let want = format!(" {start}\n");
    let mut last = String::new();
    let seen = eventually(PATIENCE, || {
        let s = srv.request("-0 ok");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        last.clear();
        let _ = BufReader::new(s).read_line(&mut last);
        last.ends_with(&want)
    });
    assert!(seen, "tailsrv never started the log at {start}: {last:?}");
}

/// A log of three 100-byte segments, a tscat with a state file that took the first five
/// lines (checkpoint 50), and retention past it (the log starts at 100).
fn stopped_past_checkpoint(tmp: &Path) -> (Segmented, Proc, PathBuf) {
    let log = Segmented::new(&tmp.join("log"), 3, 10);
    let srv = tailsrv(&log.dir).start();
    let state = tmp.join("cat.pos");
    let addr = srv.addr().to_string();
    let state_arg = state.to_str().unwrap();
    let (status, out, err) = tscat([
        "--state",
        state_arg,
        "--framing",
        "newline",
        "--count",
        "5",
        &addr,
    ])
    .run();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, &log.oracle[..50]);
    assert_eq!(log.delete_oldest(), 100);
    wait_start(&srv, 100);
    (log, srv, state)
}

#[test]
fn tscat_on_gone_fail_exits_8_naming_the_checkpoint_and_the_log_start() {
    let tmp = tempdir();
    let (_log, srv, state) = stopped_past_checkpoint(tmp.path());
    let addr = srv.addr().to_string();
    let state_arg = state.to_str().unwrap();
    let saved = std::fs::read(&state).unwrap();
    for policy in [&["--on-gone", "fail"][..], &[]] {
        let (status, out, err) = tscat(["--state", state_arg, "--exit-at-end", &addr])
            .args(policy)
            .run();
        assert_eq!(status.code(), Some(8), "{policy:?}: {err}");
        assert!(out.is_empty(), "{policy:?}: nothing is printed");
        assert!(
            err.contains("the checkpoint, byte 50") && err.contains("log at byte 100"),
            "{policy:?}: the message names the checkpoint and the log start: {err}"
        );
        assert_eq!(std::fs::read(&state).unwrap(), saved, "the state is kept");
    }
}

#[test]
fn tscat_on_gone_earliest_prints_the_oracle_from_the_log_start_and_logs_the_skip() {
    let tmp = tempdir();
    let (log, srv, state) = stopped_past_checkpoint(tmp.path());
    let ix = indexer(&log.dir).args(["--framing", "newline"]).start();
    let state_arg = state.to_str().unwrap();
    let (addr, ix_addr) = (srv.addr().to_string(), ix.addr().to_string());
    let mut idx = LineClient::new(&ix);
    assert!(
        eventually(PATIENCE, || idx.ask("count") == "30"),
        "the indexer caught up"
    );
    let (status, out, err) = tscat([
        "--state",
        state_arg,
        "--framing",
        "newline",
        "--indexer",
        &ix_addr,
        "--on-gone",
        "earliest",
        "--exit-at-end",
        &addr,
    ])
    .run();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(
        out,
        &log.oracle[100..],
        "exactly the oracle from the log start"
    );
    assert!(
        err.contains("bytes 50..100 were deleted by retention"),
        "the byte range skipped is logged: {err}"
    );
    assert!(
        err.contains("before message 10"),
        "the first message still held is logged: {err}"
    );
    // The new position was saved: the next run goes on from the end, skipping nothing.
    append(&Log::open(&log.dir).unwrap().active().path, b"line 0030\n");
    let (status, out, err) = tscat(["--state", state_arg, "--exit-at-end", &addr]).run();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"line 0030\n");
    assert!(
        !err.contains("retention"),
        "nothing more was skipped: {err}"
    );
}

#[test]
fn tsmirror_refuses_earliest_and_exits_8_when_its_length_is_gone() {
    let tmp = tempdir();
    let log = Segmented::new(&tmp.path().join("log"), 3, 10);
    let srv = tailsrv(&log.dir).start();
    let replica = tmp.path().join("replica");
    std::fs::write(&replica, &log.oracle[..50]).unwrap();
    assert_eq!(log.delete_oldest(), 100);
    wait_start(&srv, 100);
    let addr = srv.addr().to_string();
    let replica_arg = replica.to_str().unwrap();
    let (status, _, err) = tsmirror(["--on-gone", "earliest", &addr, replica_arg]).run();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("byte-identical"), "{err}");
    let (status, _, err) = tsmirror([&addr, replica_arg]).run();
    assert_eq!(status.code(), Some(8), "{err}");
    assert!(
        err.contains("the checkpoint, byte 50") && err.contains("log at byte 100"),
        "{err}"
    );
    assert_eq!(std::fs::read(&replica).unwrap(), &log.oracle[..50]);
}

#[test]
fn tsbridge_to_jetstream_on_gone_fail_then_earliest() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(1, "");
    let urls = cluster.urls();
    let tmp = tempdir();
    let mut log = Segmented::new(&tmp.path().join("log"), 1, 5);
    let srv = tailsrv(&log.dir).start();
    let addr = srv.addr().to_string();
    let bridge = |extra: &[&str]| {
        let mut args = vec![
            "to-jetstream",
            "--nats",
            &urls,
            "--stream",
            "GONE",
            "--subject",
            "logs.gone",
            "--log-id",
            "gone",
            "--exit-at-end",
        ];
        args.extend_from_slice(extra);
        args.push(&addr);
        let mut b = tsbridge(args).spawn();
        let status = b
            .wait_exit(PATIENCE * 3)
            .unwrap_or_else(|| panic!("tsbridge {extra:?} did not finish: {}", b.log.text()));
        (status, b.log.text())
    };
    let (status, err) = bridge(&["--create-stream"]);
    assert!(status.success(), "{err}");
    // The stream holds the log up to byte 50; retention passes it.
    log.lines(5);
    for _ in 0..2 {
        log.roll();
        log.lines(10);
    }
    assert_eq!(log.delete_oldest(), 100);
    wait_start(&srv, 100);
    let (status, err) = bridge(&[]);
    assert_eq!(status.code(), Some(8), "{err}");
    assert!(
        err.contains("the checkpoint, byte 50") && err.contains("log at byte 100"),
        "{err}"
    );
    assert_eq!(
        nats::read_stream(&urls, "GONE").len(),
        5,
        "nothing more published"
    );
    let (status, err) = bridge(&["--on-gone", "earliest"]);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("bytes 50..100 were deleted by retention"),
        "{err}"
    );
    let stored = nats::read_stream(&urls, "GONE");
    let want: Vec<(u64, Vec<u8>)> = (0..5)
        .chain(10..30)
        .map(|i| (i * LINE as u64, format!("line {i:04}").into_bytes()))
        .collect();
    let got: Vec<(u64, Vec<u8>)> = stored
        .iter()
        .map(|m| {
            (
                m.headers["Tailsrv-Offset"].parse().unwrap(),
                m.payload.clone(),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "the messages before the checkpoint, then the log from its start"
    );
}
