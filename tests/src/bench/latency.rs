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

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Handler, Part, Step};
use crate::procs::{ProcStats, Server};
use crate::report::{nanos, quantile, Row, Table};
use crate::run::{secs, Plan, Result};

/// How long followers get to connect and attach.
const ATTACH_LIMIT: Duration = Duration::from_secs(60);

/// How often the writer appends a sync line while followers attach. Each one is sent to every
/// attached follower, so not too often.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// After the last measured line, how long followers get to receive it.
const GRACE: Duration = Duration::from_secs(10);

pub fn latency(plan: &Plan, table: &mut Table) -> Result<()> {
    let total = (plan.rate as f64 * plan.latency_secs).ceil().max(1.0) as u64;
    for &n in &plan.followers {
        let n = plan.cap(n.max(1), table);
        let path = plan.dir.join(format!("latency-{n}.log"));
        let tailsrv = start_tailsrv(&path)?;
        let origin = Instant::now();
        let deadline = origin + ATTACH_LIMIT + secs(plan.latency_secs) + GRACE;
        let (fleet, attached) = followers(
            tailsrv.addr,
            n,
            plan.client_threads,
            deadline,
            origin,
            total,
        );
        let mut log = Appender::open(&path)?;
        if let Err(e) = attach(&mut log, &attached, n) {
            fleet.stop();
            fleet.join();
            return Err(e);
        }
        // Measured lines at a fixed rate, on an absolute schedule so a late tick does not
        // shift the ones after it.
        let period = Duration::from_secs_f64(1.0 / plan.rate as f64);
        let cpu_before = tailsrv.stats()?;
        let bench_before = ProcStats::read(std::process::id())?;
        let t0 = Instant::now();
        for seq in 0..total {
            let due = t0 + period * seq as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let stamp = origin.elapsed().as_nanos() as u64;
            log.append(format!("m {seq} {stamp}\n").as_bytes())?;
        }
        let cpu = tailsrv.stats()?.cpu_percent_since(&cpu_before);
        let bench_cpu = ProcStats::read(std::process::id())?.cpu_percent_since(&bench_before);
        let parts = fleet.join();
        let (mut lat, delivered, disorder) = merge(parts);
        lat.sort_unstable();
        let expected = total * n as u64;
        let q = |p| nanos(quantile(&lat, p));
        let p99 = quantile(&lat, 0.99);
        let all = delivered == expected && disorder == 0;
        let mut row = Row::new("latency", &format!("{n} followers: p50 / p99 / p999 / max"))
            .value(format!(
                "{} / {} / {} / {}",
                q(0.5),
                q(0.99),
                q(0.999),
                nanos(*lat.last().unwrap_or(&0))
            ))
            .baseline(format!("CPU: tailsrv {cpu:.0} %, bench {bench_cpu:.0} %"));
        row = match n {
            1000 => row.target("p99 ≤ 5 ms", p99 <= 5_000_000),
            10_000 => row.target("p99 ≤ 50 ms", p99 <= 50_000_000),
            _ => row,
        };
        table.push(row);
        let mut row = Row::new("latency", &format!("{n} followers: lines delivered"))
            .value(format!("{delivered} of {expected}"));
        if disorder > 0 {
            row = row.baseline(format!("{disorder} out of order"));
        }
        table.push(row.target("all, in order", all));
    }
    Ok(())
}

pub fn idle(plan: &Plan, table: &mut Table) -> Result<()> {
    let n = plan.cap(plan.idle_followers.max(1), table);
    let path = plan.dir.join("idle.log");
    let tailsrv = start_tailsrv(&path)?;
    let origin = Instant::now();
    let mut log = Appender::open(&path)?;
    // One follower first, so that what the runtime sets up for its first client (worker
    // threads, buffers) is in the baseline and not counted per follower.
    let warm_deadline = origin + ATTACH_LIMIT * 2 + secs(plan.idle_secs) + GRACE;
    let (warm, warm_attached) = followers(tailsrv.addr, 1, 1, warm_deadline, origin, u64::MAX);
    let result: Result<(ProcStats, ProcStats, ProcStats)> = (|| {
        attach(&mut log, &warm_attached, 1)?;
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
            attach(&mut log, &attached, n)?;
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
            .target("≤ 4 KiB", per <= 4096.0),
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

fn start_tailsrv(path: &Path) -> Result<Server> {
    std::fs::write(path, b"first line, before any follower\n")
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Server::start(
        "tailsrv",
        &[
            "-p".as_ref(),
            "0".as_ref(),
            "--bind".as_ref(),
            "127.0.0.1".as_ref(),
            path.as_os_str(),
        ],
    )
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
    let fleet = Fleet::launch(addr, n, b"-0\n", threads, deadline, |_| Follower {
        origin,
        total,
        buf: vec![0; 64 << 10],
        carry: vec![Vec::new(); n],
        next: vec![0; n],
        seen: vec![false; n],
        attached: attached.clone(),
        latencies: Vec::new(),
        delivered: 0,
        disorder: 0,
    });
    (fleet, attached)
}

/// Appends sync lines until `n` followers have received something.
fn attach(log: &mut Appender, attached: &AtomicUsize, n: usize) -> Result<()> {
    let limit = Instant::now() + ATTACH_LIMIT;
    while attached.load(Ordering::Relaxed) < n {
        if Instant::now() > limit {
            return Err(format!(
                "only {} of {n} followers attached within {ATTACH_LIMIT:?}",
                attached.load(Ordering::Relaxed)
            ));
        }
        log.append(b"s\n")?;
        std::thread::sleep(SYNC_EVERY);
    }
    Ok(())
}

/// All latencies, lines delivered, lines out of order.
fn merge(parts: Vec<Part<Follower>>) -> (Vec<u64>, u64, u64) {
    let mut lat = Vec::new();
    let (mut delivered, mut disorder) = (0, 0);
    for p in parts {
        lat.extend(p.handler.latencies);
        delivered += p.handler.delivered;
        disorder += p.handler.disorder;
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
struct Follower {
    origin: Instant,
    total: u64,
    buf: Vec<u8>,
    /// Per follower: a line split across reads.
    carry: Vec<Vec<u8>>,
    next: Vec<u64>,
    seen: Vec<bool>,
    attached: Arc<AtomicUsize>,
    latencies: Vec<u64>,
    delivered: u64,
    disorder: u64,
}

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
        let mut carry = std::mem::take(&mut self.carry[id]);
        carry.extend_from_slice(&self.buf[..n]);
        let mut done = false;
        let mut rest = &carry[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            let Some(fields) = line.strip_prefix(b"m ") else {
                continue;
            };
            let mut words = fields.split(|&b| b == b' ').map(|w| {
                std::str::from_utf8(w)
                    .ok()
                    .and_then(|w| w.parse::<u64>().ok())
            });
            let (Some(Some(seq)), Some(Some(stamp))) = (words.next(), words.next()) else {
                return Err(io::Error::other(format!(
                    "garbled line {:?}",
                    String::from_utf8_lossy(line)
                )));
            };
            if seq != self.next[id] {
                self.disorder += 1;
            }
            self.next[id] = seq + 1;
            self.delivered += 1;
            self.latencies.push(now.saturating_sub(stamp));
            done |= seq + 1 == self.total;
        }
        let keep = rest.len();
        let start = carry.len() - keep;
        carry.drain(..start);
        self.carry[id] = carry;
        Ok(if done { Step::Done } else { Step::More })
    }
}
