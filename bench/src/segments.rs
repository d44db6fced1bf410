//! Segmented logs (section `segments`, issue #19): what a log kept as a directory of
//! segments costs beside the same log as one file, each pair measured in turns in one run.
//!
//! - **Follow:** the data file's bytes written again as a segmented log (cut at the first
//!   line start past every 64 MiB, with `logfile::segments`' own `Log::create` and `roll`);
//!   one tailsrv serves the file, another the directory, and one client reads each from
//!   byte 0 to the end, the two taking turns.
//! - **Collate:** the collator's pipelined 1000 B run (`write` mode) into a plain file and
//!   into a segmented log with `--segment-bytes 64M --retain-bytes 128M`, so it rolls and
//!   retention deletes as it goes.
//! - **Deletion:** a segmented log whose one sealed segment is a copy of the data file (real
//!   bytes in the page cache), the collator rolling every 16 MiB under a pipelined producer
//!   while a second connection times each of its own 1000 B requests; with
//!   `--retain-bytes` set so that the second roll deletes the big segment, and without.
//! - **Restart:** a segmented log of 127 sealed segments of 64 MiB, sparse (the restart check
//!   reads only the active segment, so their bytes are never read: that is what is
//!   measured), and one active segment of 64 MiB of real lines with a torn tail, beside one
//!   plain file of the same 64 MiB and torn tail: collator start to `listening on`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use logfile::segments::{roll, Log, Marker, SegmentName};

use crate::collator::{self, collate, producer, Shape, Variant, PIPELINE};
use crate::data::DataFile;
use crate::fanout::bulk_read;
use crate::procs::{sibling, Server};
use crate::report::{gibps, nanos, quantile, Row, Table};
use crate::run::{in_turns, Plan, Result};

const MIB: u64 = 1 << 20;

/// Segment size of the follow and restart figures (issue #19's 64 MiB).
const SEGMENT: u64 = 64 * MIB;

/// Sealed segments in the restart figure: with the active one, 128 × 64 MiB = 8 GiB.
const SEALED: u64 = 127;

/// One figure of the section; an error becomes its row, and the others still run.
type Part = fn(&Plan, &DataFile, &mut Table) -> Result<()>;

pub fn segments(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    let parts: [(&str, Part); 4] = [
        ("follow", follow),
        ("collate", collate_rolling),
        ("deletion", deletion),
        ("restart", restart),
    ];
    for (name, part) in parts {
        eprintln!("bench: segments: {name}");
        if let Err(e) = part(plan, data, table) {
            table.push(Row::new("segments", &format!("{name}: error")).value(e));
        }
    }
    Ok(())
}

/// The same bytes as one file and as a segmented log, read by one follower each, in turns.
fn follow(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    // 64 MiB segments of a 1 GiB log; a smaller data file (--quick) gets 16 of them.
    let seg = if data.len >= 1 << 30 {
        SEGMENT
    } else {
        (data.len / 16).max(MIB)
    };
    let dir = plan.dir.join("follow.segmented");
    let count = build_segmented(data, &dir, seg)?;
    // The one file is a copy made the same way, so both are as fresh in the page cache and
    // were written by the same calls (the data file itself was written by 1 MiB writes).
    let copy = plan.dir.join("follow.one.log");
    copy_lines(data, &copy, data.len)?;
    let one = Server::start(tests::tailsrv(&copy))?;
    let segmented = Server::start(tests::tailsrv(&dir))?;
    let rounds = plan.reps.max(3);
    let read = |s: &Server| bulk_read(s.addr, 1, data.len, 1);
    let (t_one, t_seg) = in_turns(rounds, || read(&one), || read(&segmented))?;
    let ratios: Vec<f64> = t_one.iter().zip(&t_seg).map(|(a, b)| a / b).collect();
    let (best_one, best_seg) = (least(&t_one), least(&t_seg));
    drop((one, segmented));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&copy);
    let ratio = best_one / best_seg;
    table.push(
        Row::new(
            "segments",
            &format!(
                "1 follower, {} MiB log in {count} segments of {} MiB",
                data.len >> 20,
                seg >> 20
            ),
        )
        .value(gibps(data.len, best_seg))
        .baseline(format!("{} one file", gibps(data.len, best_one)))
        .ratio(ratio)
        .target("≥ 0.95× one file", ratio >= 0.95),
    );
    table.note(format!(
        "segments: follow: best of {rounds} reads each, one file and the segmented log in \
         turns; per-round ratios {}",
        spread(&ratios)
    ));
    Ok(())
}

/// The collator's pipelined 1000 B run into one file and into a segmented log that rolls
/// every 64 MiB and keeps 128 MiB, in turns.
fn collate_rolling(plan: &Plan, _data: &DataFile, table: &mut Table) -> Result<()> {
    let window = collator_window(plan)?;
    let shape = Shape {
        sync: "write",
        conns: 1,
        size: 1000,
        depth: PIPELINE,
    };
    let rounds = plan.reps.max(3);
    let run = |v: Variant| collate(plan, v, shape, window);
    // The figure (rolls and deletions), then rolls alone: what the deletions add.
    let figures: [(&[&str], bool); 2] = [
        (&["--segment-bytes", "64M", "--retain-bytes", "128M"], true),
        (&["--segment-bytes", "64M"], false),
    ];
    for (args, target) in figures {
        let rolling = Variant {
            args,
            tag: "segmented-",
            ..Variant::default()
        };
        let (r_one, r_seg) = in_turns(rounds, || run(Variant::default()), || run(rolling))?;
        let ratios: Vec<f64> = r_seg.iter().zip(&r_one).map(|(b, a)| b / a).collect();
        let (best_one, best_seg) = (most(&r_one), most(&r_seg));
        let ratio = best_seg / best_one;
        let row = Row::new(
            "segments",
            &format!(
                "collator write, 1 conn, 1000 B, pipelined, {}",
                args.join(" ")
            ),
        )
        .value(format!("{best_seg:.0} msg/s"))
        .baseline(format!("{best_one:.0} msg/s one file"))
        .ratio(ratio);
        table.push(if target {
            row.target("≥ 0.95× one file", ratio >= 0.95)
        } else {
            row
        });
        let written = best_seg * window.as_secs_f64() * 1001.0 / MIB as f64;
        table.note(format!(
            "segments: collate, {}: best of {rounds} runs of {window:?} each, in turns; about \
             {written:.0} MiB per segmented run, so about {} rolls{}; per-round ratios {}",
            args.join(" "),
            (written / 64.0) as u64,
            if target {
                ", all but the newest 2–3 segments deleted by retention"
            } else {
                ""
            },
            spread(&ratios)
        ));
    }
    Ok(())
}

/// Ack latency of 1000 B requests while the collator deletes a sealed segment as big as the
/// data file, beside the same run without retention.
fn deletion(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    let window = collator_window(plan)?;
    // The log holds the big segment and the active one; the second roll (16 MiB each) takes
    // it past this, and retention deletes the big segment, then nothing more.
    let retain = format!("{}K", (data.len >> 10) + 20 * 1024);
    let rounds = plan.reps.max(2);
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut deleted_at = Vec::new();
    for round in 0..rounds * 2 {
        let deleting = (round % 2 == 0) == (round / 2 % 2 == 0);
        let run = probe_run(plan, data, deleting.then_some(retain.as_str()), window)?;
        if deleting {
            let at = run.deleted_at.ok_or(
                "retention did not delete the big segment during the window: the producer \
                 wrote less than two segments",
            )?;
            deleted_at.push(at);
            with.push(run.acks);
        } else {
            without.push(run.acks);
        }
    }
    let summary = |runs: &[Vec<u64>]| -> (u64, u64, usize) {
        let mut p99s: Vec<u64> = runs.iter().map(|r| quantile(r, 0.99)).collect();
        p99s.sort_unstable();
        let max = runs
            .iter()
            .filter_map(|r| r.last().copied())
            .max()
            .unwrap_or(0);
        let n = runs.iter().map(Vec::len).sum::<usize>() / runs.len().max(1);
        (p99s[p99s.len() / 2], max, n)
    };
    let (p99_with, max_with, n_with) = summary(&with);
    let (p99_without, max_without, n_without) = summary(&without);
    let ratio = p99_with as f64 / p99_without.max(1) as f64;
    table.push(
        Row::new(
            "segments",
            &format!(
                "ack p99 / max of 1000 B requests while a {} MiB segment is deleted",
                data.len >> 20
            ),
        )
        .value(format!("{} / {}", nanos(p99_with), nanos(max_with)))
        .baseline(format!(
            "{} / {} without deletion",
            nanos(p99_without),
            nanos(max_without)
        ))
        .ratio(ratio)
        .target("p99 ≤ 1.5× without", ratio <= 1.5),
    );
    table.note(format!(
        "segments: deletion: --segment-bytes 16M beside a pipelined producer (1000 B, \
         {PIPELINE} in flight); the probe connection sends one 1000 B request at a time \
         (about {n_with} / {n_without} acks per {window:?} run with / without deletion); \
         median p99 of {rounds} runs each, in turns; the big segment was unlinked {} s into \
         the window",
        deleted_at
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// One deletion run's probe latencies (sorted, ns) and when the big segment went.
struct ProbeRun {
    acks: Vec<u64>,
    deleted_at: Option<f64>,
}

/// Builds the log (a sealed copy of the data file, an empty active segment), starts the
/// collator rolling every 16 MiB (with `--retain-bytes retain` if given), runs a pipelined
/// producer and the probe for `window`, and removes the log.
fn probe_run(
    plan: &Plan,
    data: &DataFile,
    retain: Option<&str>,
    window: Duration,
) -> Result<ProbeRun> {
    let dir = plan.dir.join("deletion.segmented");
    collator::remove_log(&dir);
    build_segmented(data, &dir, data.len)?;
    let next = SegmentName {
        base: data.len,
        first_message: data.lines(),
    };
    roll(&dir, next).map_err(|e| format!("deletion: {e}"))?;
    let big = dir.join(SegmentName::FIRST.file_name());
    let mut spawn = tests::collator(&dir).args(["--sync", "write", "-q", "--segment-bytes", "16M"]);
    if let Some(b) = retain {
        spawn = spawn.args(["--retain-bytes", b]);
    }
    let server = Server::start(spawn)?;
    let addr = server.addr;
    let filler = std::thread::spawn(move || producer(addr, 1000, PIPELINE, window));
    let probed = probe(addr, window, &big);
    let filled = filler
        .join()
        .map_err(|_| "producer thread panicked".to_string())?;
    drop(server);
    collator::remove_log(&dir);
    filled?;
    let (mut acks, deleted_at) = probed?;
    acks.sort_unstable();
    if retain.is_none() && deleted_at.is_some() {
        return Err("the big segment went without retention".into());
    }
    Ok(ProbeRun { acks, deleted_at })
}

/// One connection, one 1000 B request at a time for `window`: each ack's latency in ns, and
/// when (seconds into the window) `watched` was found gone, looked for every 64 requests.
fn probe(addr: SocketAddr, window: Duration, watched: &Path) -> Result<(Vec<u64>, Option<f64>)> {
    let ctx = |e: std::io::Error| format!("probe: {e}");
    let s = TcpStream::connect(addr).map_err(ctx)?;
    s.set_nodelay(true).map_err(ctx)?;
    let mut w = s.try_clone().map_err(ctx)?;
    let mut r = BufReader::new(s);
    let mut one = b"msg 1000\n".to_vec();
    one.extend(std::iter::repeat_n(b'p', 1000));
    let mut line = String::new();
    let mut acks = Vec::new();
    let mut gone = None;
    let start = Instant::now();
    while start.elapsed() < window {
        let sent = Instant::now();
        w.write_all(&one).map_err(ctx)?;
        line.clear();
        r.read_line(&mut line).map_err(ctx)?;
        if !line.starts_with("ok ") {
            return Err(format!("collator answered {line:?}"));
        }
        acks.push(sent.elapsed().as_nanos() as u64);
        if gone.is_none() && acks.len() % 64 == 0 && !watched.exists() {
            gone = Some(start.elapsed().as_secs_f64());
        }
    }
    if gone.is_none() && !watched.exists() {
        gone = Some(start.elapsed().as_secs_f64());
    }
    Ok((acks, gone))
}

/// Collator restart on 128 segments (127 sparse sealed, one real active) beside one file
/// the size of the active segment, in turns.
fn restart(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    collator_window(plan)?;
    let ctx = |e: std::io::Error| format!("restart: {e}");
    // The active segment and the one file: the data file's first 64 MiB of whole lines.
    let lines = data.line_starts.partition_point(|&s| s < SEGMENT);
    let active_len = data.line_starts.get(lines).copied().unwrap_or(data.len);
    let one = plan.dir.join("restart-one.log");
    copy_lines(data, &one, active_len)?;

    let dir = plan.dir.join("restart.segmented");
    Log::create(&dir, &Marker::default()).map_err(ctx)?;
    let first = OpenOptions::new()
        .append(true)
        .open(dir.join(SegmentName::FIRST.file_name()))
        .map_err(ctx)?;
    first.set_len(SEGMENT).map_err(ctx)?;
    let name = |i: u64| SegmentName {
        base: i * SEGMENT,
        first_message: i * lines as u64,
    };
    for i in 1..SEALED {
        roll(&dir, name(i))
            .and_then(|f| f.set_len(SEGMENT))
            .map_err(ctx)?;
    }
    let active_path = dir.join(name(SEALED).file_name());
    roll(&dir, name(SEALED)).map_err(ctx)?;
    copy_lines(data, &active_path, active_len)?;
    let log = Log::open(&dir).map_err(ctx)?;
    let (count, total) = (log.segments().len(), log.bytes());

    let rounds = plan.reps.max(5);
    let (t_one, t_seg) = in_turns(
        rounds,
        || collator::time_restart(&one, &one),
        || collator::time_restart(&dir, &active_path),
    )?;
    collator::remove_log(&one);
    collator::remove_log(&dir);
    let (one_s, seg_s) = (median(&t_one), median(&t_seg));
    let ratio = seg_s / one_s;
    table.push(
        Row::new(
            "segments",
            &format!(
                "collator restart, torn tail, {} GiB log in {count} segments ({} MiB active)",
                total >> 30,
                active_len >> 20
            ),
        )
        .value(format!("{seg_s:.3} s"))
        .baseline(format!("{one_s:.3} s one {} MiB file", active_len >> 20))
        .ratio(ratio)
        .target("≤ 2× one 64 MiB file", ratio <= 2.0),
    );
    table.note(format!(
        "segments: restart: the {SEALED} sealed segments are sparse (ftruncate to 64 MiB: the \
         restart check only reads their names and lengths), the active one real lines; \
         start to `listening on`, the page cache warm, median of {rounds} each, in turns; \
         the indexer's restart was not measured (its sealed segments would need index \
         files to be reused, and without them it would split the sparse segments' zeros)"
    ));
    Ok(())
}

/// Writes the bytes of `data` as a new segmented log at `dir`, a segment rolled at the first
/// line start at or past every `seg` bytes, each synced; returns how many segments it has.
fn build_segmented(data: &DataFile, dir: &Path, seg: u64) -> Result<usize> {
    let ctx = |e: std::io::Error| format!("building {}: {e}", dir.display());
    Log::create(dir, &Marker::default()).map_err(ctx)?;
    let mut src = File::open(&data.path).map_err(ctx)?;
    let mut out = OpenOptions::new()
        .append(true)
        .open(dir.join(SegmentName::FIRST.file_name()))
        .map_err(ctx)?;
    let mut at = 0u64;
    loop {
        let i = data.line_starts.partition_point(|&s| s < at + seg);
        let cut = data.line_starts.get(i).copied().unwrap_or(data.len);
        std::io::copy(&mut (&mut src).take(cut - at), &mut out).map_err(ctx)?;
        out.sync_all().map_err(ctx)?;
        if cut == data.len {
            break;
        }
        at = cut;
        let next = SegmentName {
            base: cut,
            first_message: i as u64,
        };
        out = roll(dir, next).map_err(ctx)?;
    }
    let log = Log::open(dir).map_err(ctx)?;
    if log.end() != data.len {
        return Err(format!(
            "{} ends at byte {}, not {}",
            dir.display(),
            log.end(),
            data.len
        ));
    }
    Ok(log.segments().len())
}

/// How long each collator run lasts, or why the collator parts cannot run.
fn collator_window(plan: &Plan) -> Result<Duration> {
    sibling("tailsrv-collator").map_err(|_| "collator not built".to_string())?;
    Ok(collator::window(plan))
}

/// The smallest sample (the best time).
fn least(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::MAX, f64::min)
}

/// The largest sample (the best rate).
pub fn most(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0f64, f64::max)
}

/// The median sample (the upper one of an even count).
fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Appends the data file's first `len` bytes to `to` (created if need be) and syncs it.
fn copy_lines(data: &DataFile, to: &Path, len: u64) -> Result<()> {
    let ctx =
        |e: std::io::Error| format!("copying {} to {}: {e}", data.path.display(), to.display());
    let mut src = File::open(&data.path).map_err(ctx)?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(to)
        .map_err(ctx)?;
    std::io::copy(&mut (&mut src).take(len), &mut out).map_err(ctx)?;
    out.sync_all().map_err(ctx)
}

/// "min–max, median m (n rounds)" of the per-round ratios.
pub fn spread(ratios: &[f64]) -> String {
    format!(
        "{:.2}–{:.2}×, median {:.2}× ({} rounds)",
        least(ratios),
        most(ratios),
        median(ratios),
        ratios.len()
    )
}
