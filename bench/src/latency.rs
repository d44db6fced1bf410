//! Followers at the end of the file: broadcast latency (section `latency`) and what idle
//! followers cost the server (section `idle`).
//!
//! Followers connect with `-0`, so each starts at whatever the end of the file is when the
//! server reads its header. To know that every follower is attached before measuring, the
//! writer appends `s` (sync) lines until every follower has received something; only then
//! does it append the measured lines, `m SEQ STAMP`, at a fixed rate. STAMP is nanoseconds
//! since an origin `Instant` shared by the writer and the followers (same process, so the
//! same CLOCK_MONOTONIC), taken just before the `write`; the follower subtracts it from the
//! time its `recv` returned. Every follower must see every measured line, in order: the
//! count of lines delivered is part of the result.
//!
//! Each follower count is then measured again against the floor ([`Broadcaster`]: one thread
//! that `sendfile`s each append to every socket in turn), with the same writer, line format,
//! rate and readers, right after tailsrv. On loopback the kernel's transmit path, the
//! receiver's softirq and the reader's wake-up are all billed to the sender, so that loop's
//! latency is what this machine can do at all; tailsrv's figure means something only beside it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::baseline::{Broadcaster, ThreadFloor, FLOOR_THREAD, THREAD_FLOOR_THREAD};
use crate::fleet::{Fleet, Handler, Part, Step, THREAD_PREFIX as READER_THREAD};
use crate::indexer::{spawn_indexer, INDEXER};
use crate::procs::{own_threads_cpu_secs, sibling, ProcStats, Server};
use crate::report::{nanos, quantile, Chart, Row, Table};
use crate::run::{secs, Plan, Result};

/// How long followers get to connect and attach.
const ATTACH_LIMIT: Duration = Duration::from_secs(60);

/// How often the writer appends a sync line while followers attach. Each one is sent to every
/// attached follower, so not too often.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// After the last measured line, how long followers get to receive it.
const GRACE: Duration = Duration::from_secs(10);

/// Above this many followers the thread-per-client floor is not run (a thread each).
const THREAD_FLOOR_MAX: usize = 1000;

/// The servers a latency round measures, in the order they take turns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Tailsrv,
    Floor,
    Threads,
}

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::Tailsrv => "tailsrv",
            Who::Floor => "one-thread floor",
            Who::Threads => "thread per client",
        }
    }
}

pub fn latency(plan: &Plan, table: &mut Table) -> Result<()> {
    let total = (plan.rate as f64 * plan.latency_secs).ceil().max(1.0) as u64;
    for &n in &plan.followers {
        let n = plan.cap(n.max(1), table);
        // The floors hold both ends of each connection in this process.
        let floor_n = n.min(plan.max_conns() / 2);
        if floor_n < n {
            table.note(format!(
                "latency: the open-file limit {} caps the floors' followers to {floor_n} \
                 (they hold both ends of each connection) where tailsrv had {n}",
                plan.nofile
            ));
        }
        let threads = floor_n <= THREAD_FLOOR_MAX;
        if !threads {
            table.note(format!(
                "latency: the thread-per-client floor is run up to {THREAD_FLOOR_MAX} followers, \
                 not with {n} (a thread each)"
            ));
        }
        let mut who = vec![Who::Tailsrv, Who::Floor];
        if threads {
            who.push(Who::Threads);
        }
        // Rounds in turns: tailsrv, the one-thread floor, the thread-per-client floor; the
        // medians over rounds are reported.
        let mut rounds: Vec<Vec<Measured>> = who.iter().map(|_| Vec::new()).collect();
        for round in 0..plan.latency_rounds {
            for (i, &w) in who.iter().enumerate() {
                let path = plan.dir.join(format!("latency-{n}-{round}-{i}.log"));
                write_first_line(&path)?;
                let trace = (w == Who::Tailsrv && n == 1)
                    .then_some(plan.trace.as_ref())
                    .flatten();
                let mut m = match w {
                    Who::Tailsrv => {
                        let tailsrv = start_tailsrv(&path, trace)?;
                        let pid = tailsrv.pid();
                        let cpu = || Ok(ProcStats::read(pid)?.cpu_secs);
                        measure(
                            plan,
                            tailsrv.addr,
                            &path,
                            n,
                            total,
                            || {},
                            cpu,
                            trace.is_some(),
                        )?
                    }
                    Who::Floor => {
                        let floor = Broadcaster::start(&path)?;
                        let cpu = || own_threads_cpu_secs(FLOOR_THREAD);
                        let wake = || floor.wake();
                        measure(plan, floor.addr(), &path, floor_n, total, wake, cpu, false)?
                    }
                    Who::Threads => {
                        let floor = ThreadFloor::start(&path)?;
                        let cpu = || own_threads_cpu_secs(THREAD_FLOOR_THREAD);
                        measure(plan, floor.addr(), &path, floor_n, total, || {}, cpu, false)?
                    }
                };
                m.who = w.label();
                if let (Some(trace), Some(raw)) = (trace, &m.raw) {
                    breakdown(trace, raw, table)?;
                }
                let _ = std::fs::remove_file(&path);
                rounds[i].push(m);
            }
        }
        let summary: Vec<Summary> = rounds.iter().map(|r| Summary::of(r)).collect();
        let ours = &summary[0];
        let floor = &summary[1];
        let mut row = Row::new("latency", &format!("{n} followers: p50 / p99 / p999 / max"))
            .value(ours.quantiles())
            .baseline(format!("{} floor", floor.quantiles()))
            .ratio(ours.p99 as f64 / floor.p99 as f64);
        row = match n {
            1000 => row.target(
                "p99 ≤ 0.75× floor",
                ours.p99 as f64 <= 0.75 * floor.p99 as f64,
            ),
            10_000 => row.target("p99 ≤ 50 ms", ours.p99 <= 50_000_000),
            _ => row,
        };
        table.push(row);
        if let Some(tpc) = summary.get(2) {
            let ratio50 = ours.p50 as f64 / tpc.p50 as f64;
            let ratio99 = ours.p99 as f64 / tpc.p99 as f64;
            let mut row = Row::new(
                "latency",
                &format!("{n} followers vs thread per client: p50 / p99"),
            )
            .value(format!("{} / {}", nanos(ours.p50), nanos(ours.p99)))
            .baseline(format!(
                "{} / {} thread per client",
                nanos(tpc.p50),
                nanos(tpc.p99)
            ))
            .ratio(ratio99);
            if n <= 10 {
                row = row.target(
                    format!("p50, p99 ≤ 1.0× (p50 {ratio50:.2}×)"),
                    ratio50 <= 1.0 && ratio99 <= 1.0,
                );
            }
            table.push(row);
        }
        let cpu = |s: &Summary| {
            format!(
                "{} {:.0} % ({:.1} µs/line), readers {:.0} %",
                s.who, s.server_cpu, s.cpu_per_line_us, s.readers_cpu
            )
        };
        table.push(
            Row::new(
                "latency",
                &format!("{n} followers: CPU, % of a core (per line delivered)"),
            )
            .value(cpu(ours))
            .baseline(summary[1..].iter().map(cpu).collect::<Vec<_>>().join("; ")),
        );
        let (ours_text, all) = ours.delivered(total, n);
        let floor_text = summary[1..]
            .iter()
            .map(|s| format!("{} {}", s.delivered(total, floor_n).0, s.who))
            .collect::<Vec<_>>()
            .join("; ");
        table.push(
            Row::new("latency", &format!("{n} followers: lines delivered"))
                .value(ours_text)
                .baseline(floor_text)
                .target("all, in order", all),
        );
        table.chart(Chart::Cdf {
            name: format!("latency-{n}"),
            title: format!(
                "Append → delivery latency, {n} followers, {} lines/s",
                plan.rate
            ),
            series: rounds
                .into_iter()
                .zip(&who)
                .map(|(r, w)| {
                    let mut all: Vec<u64> = r.into_iter().flat_map(|m| m.lat).collect();
                    all.sort_unstable();
                    (w.label().to_string(), all)
                })
                .collect(),
        });
    }
    if plan.followers.contains(&1) {
        count_latency(plan, table)?;
    }
    Ok(())
}

/// The indexer on the same wake path: from an append to the first `count` answer that
/// includes it, for one client asking in a closed loop (the next `count` goes out as soon as
/// the previous answer is in). The loop's own round trip is the resolution: it is reported
/// beside the figure (measured while nothing is appended), and an append can only be seen
/// one round trip or so after it happens.
fn count_latency(plan: &Plan, table: &mut Table) -> Result<()> {
    const IDLE_ASKS: usize = 1000;
    let figure = "indexer, 1 client: append → count shows it, p50 / p99";
    if sibling(INDEXER).is_err() {
        table.push(Row::new("latency", figure).value("n/a: indexer not built"));
        return Ok(());
    }
    let total = (plan.rate as f64 * plan.latency_secs).ceil().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / plan.rate as f64);
    let (mut lat, mut rtt) = (Vec::new(), Vec::new());
    for round in 0..plan.latency_rounds {
        let path = plan.dir.join(format!("count-latency-{round}.log"));
        let index = plan.dir.join(format!("count-latency-{round}.log.idx"));
        write_first_line(&path)?;
        let server = spawn_indexer(&path, &index, &[])?;
        let measured = (|| -> Result<()> {
            let ctx = |e: io::Error| format!("asking the indexer for count: {e}");
            let sock = TcpStream::connect(server.addr).map_err(ctx)?;
            sock.set_nodelay(true).map_err(ctx)?;
            sock.set_read_timeout(Some(GRACE)).map_err(ctx)?;
            let mut reader = io::BufReader::new(sock.try_clone().map_err(ctx)?);
            let mut writer = sock;
            let mut answer = String::new();
            // Asks until the count reaches `want`; returns when the answer that did arrived.
            let mut ask_until = |want: u64, rtt: &mut Vec<u64>| -> Result<Instant> {
                let limit = Instant::now() + GRACE;
                loop {
                    let asked = Instant::now();
                    writer.write_all(b"count\n").map_err(ctx)?;
                    answer.clear();
                    io::BufRead::read_line(&mut reader, &mut answer).map_err(ctx)?;
                    let now = Instant::now();
                    rtt.push(now.duration_since(asked).as_nanos() as u64);
                    match answer.trim().parse::<u64>() {
                        Ok(n) if n == want => return Ok(now),
                        Ok(n) if n > want => {
                            return Err(format!("the indexer counts {n} lines of {want}"))
                        }
                        _ if now > limit => {
                            return Err(format!(
                                "the indexer did not count {want} lines within {GRACE:?}; \
                                 last answer {answer:?}"
                            ))
                        }
                        _ => {}
                    }
                }
            };
            // The first line, indexed before measuring; then the resolution: a round trip
            // while nothing is appended.
            ask_until(1, &mut Vec::new())?;
            for _ in 0..IDLE_ASKS {
                ask_until(1, &mut rtt)?;
            }
            let mut log = Appender::open(&path)?;
            let t0 = Instant::now();
            let mut line = Vec::with_capacity(64);
            for seq in 0..total {
                sleep_until_due(t0, period, seq);
                line.clear();
                writeln!(line, "m {seq} 0").expect("writing to a Vec");
                log.append(&line)?;
                let appended = Instant::now();
                let seen = ask_until(seq + 2, &mut Vec::new())?;
                lat.push(seen.duration_since(appended).as_nanos() as u64);
            }
            Ok(())
        })();
        drop(server);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&index);
        measured?;
    }
    lat.sort_unstable();
    rtt.sort_unstable();
    table.push(
        Row::new("latency", figure)
            .value(format!(
                "{} / {}",
                nanos(quantile(&lat, 0.5)),
                nanos(quantile(&lat, 0.99))
            ))
            .baseline(format!(
                "{} / {} one `count` round trip, nothing appended (the resolution)",
                nanos(quantile(&rtt, 0.5)),
                nanos(quantile(&rtt, 0.99))
            )),
    );
    Ok(())
}

/// Sleeps until line `seq` of a fixed-rate schedule that started at `t0` is due: an absolute
/// schedule, so a late tick does not shift the ones after it.
fn sleep_until_due(t0: Instant, period: Duration, seq: u64) {
    let due = t0 + period * seq as u32;
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// One server's rounds, reduced to medians.
struct Summary {
    who: &'static str,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    server_cpu: f64,
    readers_cpu: f64,
    cpu_per_line_us: f64,
    delivered: u64,
    disorder: u64,
    rounds: u64,
}

impl Summary {
    fn of(rounds: &[Measured]) -> Summary {
        let med = |f: &dyn Fn(&Measured) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let q = |p: f64| med(&|m: &Measured| quantile(&m.lat, p) as f64) as u64;
        Summary {
            who: rounds.first().map_or("", |m| m.who),
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: med(&|m: &Measured| *m.lat.last().unwrap_or(&0) as f64) as u64,
            server_cpu: med(&|m: &Measured| m.server_cpu),
            readers_cpu: med(&|m: &Measured| m.readers_cpu),
            cpu_per_line_us: med(&|m: &Measured| {
                m.server_cpu_secs / (m.delivered.max(1) as f64) * 1e6
            }),
            delivered: rounds.iter().map(|m| m.delivered).sum(),
            disorder: rounds.iter().map(|m| m.disorder).sum(),
            rounds: rounds.len() as u64,
        }
    }

    fn quantiles(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            nanos(self.p50),
            nanos(self.p99),
            nanos(self.p999),
            nanos(self.max)
        )
    }

    /// "D of E" over every round, and whether all arrived in order.
    fn delivered(&self, total: u64, n: usize) -> (String, bool) {
        let expected = total * n as u64 * self.rounds;
        let mut s = format!("{} of {expected}", self.delivered);
        if self.disorder > 0 {
            s += &format!(", {} out of order", self.disorder);
        }
        (s, self.delivered == expected && self.disorder == 0)
    }
}

/// One latency run's results against one server.
struct Measured {
    who: &'static str,
    /// Every (line, follower) latency, ascending (ns).
    lat: Vec<u64>,
    /// With one follower and `--trace`: (append, receipt) of each measured line, in
    /// CLOCK_MONOTONIC ns.
    raw: Option<Vec<(u64, u64)>>,
    delivered: u64,
    disorder: u64,
    /// CPU of the server (tailsrv, or the floor's threads) and of the bench's reader
    /// threads over the measured window, in % of one core; and the server's in seconds.
    server_cpu: f64,
    server_cpu_secs: f64,
    readers_cpu: f64,
}

/// Attaches `n` followers to the server at `addr`, then appends `total` measured lines to
/// `path` at the plan's rate, calling `appended` right after each write. `server_cpu` reads
/// the server's CPU seconds so far.
#[allow(clippy::too_many_arguments)]
fn measure(
    plan: &Plan,
    addr: SocketAddr,
    path: &Path,
    n: usize,
    total: u64,
    appended: impl Fn(),
    server_cpu: impl Fn() -> Result<f64>,
    keep_raw: bool,
) -> Result<Measured> {
    let origin = Instant::now();
    let mono_origin = monotonic_ns();
    let mut stamps = Vec::with_capacity(if keep_raw { total as usize } else { 0 });
    let deadline = origin + ATTACH_LIMIT + secs(plan.latency_secs) + GRACE;
    let (fleet, attached) = followers(addr, n, plan.client_threads, deadline, origin, total);
    let mut log = Appender::open(path)?;
    let windowed: Result<(f64, f64, f64)> = (|| {
        attach(&mut log, &attached, n, &appended)?;
        // Measured lines at a fixed rate, on an absolute schedule so a late tick does not
        // shift the ones after it.
        let period = Duration::from_secs_f64(1.0 / plan.rate as f64);
        let (server0, readers0) = (server_cpu()?, own_threads_cpu_secs(READER_THREAD)?);
        let t0 = Instant::now();
        let mut line = Vec::with_capacity(64);
        for seq in 0..total {
            sleep_until_due(t0, period, seq);
            line.clear();
            let stamp = origin.elapsed().as_nanos() as u64;
            writeln!(line, "m {seq} {stamp}").expect("writing to a Vec");
            log.append(&line)?;
            appended();
            if keep_raw {
                stamps.push(stamp);
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let (server1, readers1) = (server_cpu()?, own_threads_cpu_secs(READER_THREAD)?);
        Ok((
            (server1 - server0) / wall * 100.0,
            server1 - server0,
            (readers1 - readers0) / wall * 100.0,
        ))
    })();
    if windowed.is_err() {
        fleet.stop();
    }
    let parts = fleet.join();
    let (server_cpu, server_cpu_secs, readers_cpu) = windowed?;
    let (mut lat, delivered, disorder) = merge(parts);
    // One follower receives the lines in order: its latencies pair with the stamps.
    let raw = (keep_raw && n == 1 && lat.len() == stamps.len()).then(|| {
        stamps
            .iter()
            .zip(&lat)
            .map(|(s, l)| (mono_origin + s, mono_origin + s + l))
            .collect()
    });
    lat.sort_unstable();
    Ok(Measured {
        who: "",
        lat,
        raw,
        delivered,
        disorder,
        server_cpu,
        server_cpu_secs,
        readers_cpu,
    })
}

/// CLOCK_MONOTONIC now, in ns (what `Instant` reads, and what tailsrv's trace writes).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Points of tailsrv's trace (`shared::rt::trace`), in path order.
const POINTS: [&str; 7] = [
    "readable",
    "read",
    "published",
    "notified",
    "polled",
    "send_start",
    "send_end",
];

/// The append → delivery breakdown for one follower: for each measured line, the first
/// trace mark of each point after its append, and the receipt; medians and p99 of each
/// step, as rows of the table. Needs tailsrv built with `--features shared/latency-trace`.
fn breakdown(trace: &Path, raw: &[(u64, u64)], table: &mut Table) -> Result<()> {
    // The trace thread writes every 20 ms.
    std::thread::sleep(Duration::from_millis(100));
    let text = std::fs::read_to_string(trace)
        .map_err(|e| format!("reading the trace {}: {e}", trace.display()))?;
    let mut marks: Vec<Vec<u64>> = vec![Vec::new(); POINTS.len()];
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(name), Some(Some(t))) = (words.next(), words.next().map(|w| w.parse().ok()))
        else {
            continue;
        };
        if let Some(i) = POINTS.iter().position(|p| *p == name) {
            marks[i].push(t);
        }
    }
    if marks.iter().all(|m| m.is_empty()) {
        table.note(format!(
            "latency trace {}: no marks (tailsrv built without --features shared/latency-trace?)",
            trace.display()
        ));
        return Ok(());
    }
    for m in &mut marks {
        m.sort_unstable();
    }
    // steps[k]: time from the previous point to point k (k = POINTS.len(): to receipt).
    let mut steps: Vec<Vec<u64>> = vec![Vec::new(); POINTS.len() + 1];
    let mut complete = 0;
    for &(append, received) in raw {
        let mut at = append;
        let mut times = Vec::with_capacity(POINTS.len());
        let mut missing = 0;
        for m in &marks {
            let i = m.partition_point(|&t| t < at);
            match m.get(i) {
                Some(&t) if t <= received => {
                    times.push(t);
                    at = t;
                }
                // `readable` is skipped when events were already queued (no `poll`):
                // that step then counts as 0.
                _ => {
                    missing += 1;
                    times.push(at);
                }
            }
        }
        if missing > 1 {
            continue;
        }
        complete += 1;
        let mut prev = append;
        for (k, &t) in times.iter().chain([received].iter()).enumerate() {
            steps[k].push(t - prev);
            prev = t;
        }
    }
    let names: Vec<String> = std::iter::once("append → readable".to_string())
        .chain((1..POINTS.len()).map(|k| format!("{} → {}", POINTS[k - 1], POINTS[k])))
        .chain(std::iter::once("send_end → recv returned".to_string()))
        .collect();
    for (name, mut v) in names.into_iter().zip(steps) {
        v.sort_unstable();
        table.push(
            Row::new("trace", &format!("1 follower: {name}"))
                .value(format!(
                    "p50 {} / p99 {}",
                    nanos(quantile(&v, 0.5)),
                    nanos(quantile(&v, 0.99))
                ))
                .baseline(format!("{complete} of {} lines traced", raw.len())),
        );
    }
    Ok(())
}

pub fn idle(plan: &Plan, table: &mut Table) -> Result<()> {
    let n = plan.cap(plan.idle_followers.max(1), table);
    let path = plan.dir.join("idle.log");
    let tailsrv = start_tailsrv(&path, None)?;
    let origin = Instant::now();
    let mut log = Appender::open(&path)?;
    // One follower first, so that what the runtime sets up for its first client (worker
    // threads, buffers) is in the baseline and not counted per follower.
    let warm_deadline = origin + ATTACH_LIMIT * 2 + secs(plan.idle_secs) + GRACE;
    let (warm, warm_attached) = followers(tailsrv.addr, 1, 1, warm_deadline, origin, u64::MAX);
    let result: Result<(ProcStats, ProcStats, ProcStats)> = (|| {
        attach(&mut log, &warm_attached, 1, &|| {})?;
        let before = tailsrv.stats()?;
        let deadline = Instant::now() + ATTACH_LIMIT + secs(plan.idle_secs) + GRACE;
        let (fleet, attached) = followers(
            tailsrv.addr,
            n,
            plan.client_threads,
            deadline,
            origin,
            u64::MAX,
        );
        let measured: Result<(ProcStats, ProcStats)> = (|| {
            attach(&mut log, &attached, n, &|| {})?;
            let quiet = tailsrv.stats()?;
            // The measurement itself: nothing is written for this long.
            std::thread::sleep(secs(plan.idle_secs));
            let after = tailsrv.stats()?;
            Ok((quiet, after))
        })();
        fleet.stop();
        let parts = fleet.join();
        let (quiet, after) = measured?;
        let failures: usize = parts.iter().map(|p| p.failures).sum();
        if failures > 0 {
            return Err(format!("{failures} idle followers were dropped"));
        }
        Ok((before, quiet, after))
    })();
    warm.stop();
    warm.join();
    let (before, quiet, after) = result?;
    let per = (after.rss_bytes as f64 - before.rss_bytes as f64) / n as f64;
    table.push(
        Row::new("idle", &format!("memory per follower ({n}, VmRSS delta)"))
            .value(format!("{per:.0} B"))
            .baseline(format!(
                "{:.1} → {:.1} MiB",
                before.rss_bytes as f64 / 1048576.0,
                after.rss_bytes as f64 / 1048576.0
            ))
            .target("≤ 2 KiB", per <= 2048.0),
    );
    table.push(
        Row::new("idle", &format!("threads with {n} followers"))
            .value(after.threads.to_string())
            .baseline(format!("{} with 1", before.threads))
            .target(
                "no thread per follower",
                after.threads <= before.threads + 4,
            ),
    );
    table.push(
        Row::new("idle", &format!("fds with {n} followers"))
            .value(after.fds.to_string())
            .baseline(format!("{} with 1", before.fds)),
    );
    table.push(Row::new("idle", "CPU while quiet").value(format!(
        "{:.2} % of a core over {:.0} s",
        after.cpu_percent_since(&quiet),
        after.at.duration_since(quiet.at).as_secs_f64()
    )));
    Ok(())
}

fn start_tailsrv(path: &Path, trace: Option<&std::path::PathBuf>) -> Result<Server> {
    write_first_line(path)?;
    // The child inherits it; a tailsrv built without the trace feature ignores it.
    match trace {
        Some(t) => std::env::set_var("TAILSRV_TRACE", t),
        None => std::env::remove_var("TAILSRV_TRACE"),
    }
    Server::start(tests::tailsrv(path))
}

/// A new followed file, with one line that no follower is meant to see.
fn write_first_line(path: &Path) -> Result<()> {
    std::fs::write(path, b"first line, before any follower\n")
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `n` followers (`-0`) that stop after measured line `total - 1`.
fn followers(
    addr: SocketAddr,
    n: usize,
    threads: usize,
    deadline: Instant,
    origin: Instant,
    total: u64,
) -> (Fleet<Follower>, Arc<AtomicUsize>) {
    let attached = Arc::new(AtomicUsize::new(0));
    let shares = threads.clamp(1, n.max(1));
    let fleet = Fleet::launch(addr, n, b"-0\n", threads, deadline, |t| {
        // Room for every latency this thread will record, so none is a reallocation.
        let share = n * (t + 1) / shares - n * t / shares;
        let expected = if total == u64::MAX {
            0
        } else {
            total as usize * share
        };
        Follower {
            origin,
            buf: vec![0; 64 << 10],
            carry: vec![Vec::new(); n],
            next: vec![0; n],
            seen: vec![false; n],
            attached: attached.clone(),
            tally: Tally {
                total,
                latencies: Vec::with_capacity(expected),
                delivered: 0,
                disorder: 0,
            },
        }
    });
    (fleet, attached)
}

/// Appends sync lines until `n` followers have received something.
fn attach(log: &mut Appender, attached: &AtomicUsize, n: usize, appended: &dyn Fn()) -> Result<()> {
    let limit = Instant::now() + ATTACH_LIMIT;
    while attached.load(Ordering::Relaxed) < n {
        if Instant::now() > limit {
            return Err(format!(
                "only {} of {n} followers attached within {ATTACH_LIMIT:?}",
                attached.load(Ordering::Relaxed)
            ));
        }
        log.append(b"s\n")?;
        appended();
        std::thread::sleep(SYNC_EVERY);
    }
    Ok(())
}

/// All latencies, lines delivered, lines out of order.
fn merge(parts: Vec<Part<Follower>>) -> (Vec<u64>, u64, u64) {
    let mut lat = Vec::new();
    let (mut delivered, mut disorder) = (0, 0);
    for p in parts {
        lat.extend(p.handler.tally.latencies);
        delivered += p.handler.tally.delivered;
        disorder += p.handler.tally.disorder;
    }
    (lat, delivered, disorder)
}

/// The followed file, opened for appending; one `write` per line, as a logger does.
struct Appender {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Appender {
    fn open(path: &Path) -> Result<Appender> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        Ok(Appender {
            file,
            path: path.to_owned(),
        })
    }

    fn append(&mut self, line: &[u8]) -> Result<()> {
        self.file
            .write_all(line)
            .map_err(|e| format!("appending to {}: {e}", self.path.display()))
    }
}

/// One fleet thread's followers: parses lines, times the measured ones.
///
/// Kept cheap because the readers share the two cores with the server they measure: one
/// `recv` per readiness event into one reused buffer, lines parsed in place, and a copy
/// only for the rare line split across two reads (into a per-follower buffer that keeps its
/// capacity). No allocation per line: the latencies vector is sized before the run.
struct Follower {
    origin: Instant,
    buf: Vec<u8>,
    /// Per follower: the start of a line split across reads.
    carry: Vec<Vec<u8>>,
    next: Vec<u64>,
    seen: Vec<bool>,
    attached: Arc<AtomicUsize>,
    tally: Tally,
}

/// What one fleet thread's followers received.
struct Tally {
    /// Measured lines per follower; a follower is done after line `total - 1`.
    total: u64,
    latencies: Vec<u64>,
    delivered: u64,
    disorder: u64,
}

impl Tally {
    /// One complete line (without its newline) that follower `next` expected; true when it
    /// was the last measured line.
    fn line(&mut self, line: &[u8], next: &mut u64, now: u64) -> io::Result<bool> {
        // Sync lines only attach followers.
        let Some(fields) = line.strip_prefix(b"m ") else {
            return Ok(false);
        };
        let mut words = fields.splitn(2, |&b| b == b' ').map(decimal);
        let (Some(Some(seq)), Some(Some(stamp))) = (words.next(), words.next()) else {
            return Err(io::Error::other(format!(
                "garbled line {:?}",
                String::from_utf8_lossy(line)
            )));
        };
        if seq != *next {
            self.disorder += 1;
        }
        *next = seq + 1;
        self.delivered += 1;
        self.latencies.push(now.saturating_sub(stamp));
        Ok(seq + 1 == self.total)
    }
}

/// An unsigned decimal, all digits; `None` for anything else.
fn decimal(word: &[u8]) -> Option<u64> {
    if word.is_empty() {
        return None;
    }
    word.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Longest line a follower may carry over between reads: far more than any line written.
const LONGEST_LINE: usize = 4096;

impl Handler for Follower {
    fn readable(&mut self, id: usize, sock: &TcpStream) -> io::Result<Step> {
        let n = rustix::net::recv(sock, &mut self.buf[..], rustix::net::RecvFlags::empty())?.1;
        let now = self.origin.elapsed().as_nanos() as u64;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed a follower",
            ));
        }
        if !self.seen[id] {
            self.seen[id] = true;
            self.attached.fetch_add(1, Ordering::Relaxed);
        }
        let (carry, next) = (&mut self.carry[id], &mut self.next[id]);
        let mut rest = &self.buf[..n];
        let mut done = false;
        if !carry.is_empty() {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                carry.extend_from_slice(rest);
                if carry.len() > LONGEST_LINE {
                    return Err(io::Error::other("line longer than any written"));
                }
                return Ok(Step::More);
            };
            carry.extend_from_slice(&rest[..nl]);
            done |= self.tally.line(carry, next, now)?;
            carry.clear();
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            done |= self.tally.line(&rest[..nl], next, now)?;
            rest = &rest[nl + 1..];
        }
        carry.extend_from_slice(rest);
        Ok(if done { Step::Done } else { Step::More })
    }
}
