//! Connect storm (section `storm`): thousands of clients connect in the same instant.
//!
//! One thread starts every non-blocking connect back to back, then waits for each client's
//! first bytes. The figure is the time from the first connect to the last client served.
//! The baseline is the blocking sendfile server with std's backlog of 128: once its accept
//! queue overflows the kernel drops SYNs, and those clients only retry after the 1 s SYN
//! retransmit timeout — the cost a large backlog and a fast accept loop avoid.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::baseline::SendfileServer;
use crate::fleet::{self, discard, Fleet, Handler, Sink, Step};
use crate::procs::Server;
use crate::report::{nanos, quantile, Row, Table};
use crate::run::{Plan, Result};

/// A storm that is not served in this long counts as failed.
const STORM_LIMIT: Duration = Duration::from_secs(60);

pub fn storm(plan: &Plan, table: &mut Table) -> Result<()> {
    let path = plan.dir.join("storm.log");
    std::fs::write(&path, tests::random_bytes(4096, 7))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    // The in-process baseline holds both ends of every connection (and a handle on each).
    let n = plan
        .cap(plan.storm_clients.max(1), table)
        .min(plan.max_conns() / 3);
    let tailsrv = Server::start(tests::tailsrv(&path))?;
    let baseline = SendfileServer::start(&path)?;
    // The slowest of the repetitions: the target is a bound on the worst case.
    let mut worst: Option<(Storm, Storm)> = None;
    for _ in 0..plan.reps {
        let ours = one_storm(tailsrv.addr, n, plan.storm_threads)?;
        let theirs = one_storm(baseline.addr(), n, plan.storm_threads)?;
        let slower = |a: Storm, b: Storm| if b.all > a.all { b } else { a };
        worst = Some(match worst {
            None => (ours, theirs),
            Some((a, b)) => (slower(a, ours), slower(b, theirs)),
        });
    }
    let (ours, theirs) = worst.expect("at least one repetition");
    let max = |s: &Storm| *s.served.last().unwrap_or(&0);
    table.push(
        Row::new(
            "storm",
            &format!("{n} at once: slowest connect() → first byte"),
        )
        .value(nanos(max(&ours)))
        .baseline(format!("{} (backlog 128)", nanos(max(&theirs))))
        .ratio(max(&theirs) as f64 / max(&ours) as f64)
        .target("< 1 s", max(&ours) < 1_000_000_000),
    );
    // Whether the storm was a storm for the baseline: SYNs or handshakes dropped because its
    // accept queue was full are what make a small backlog slow.
    let overflows = |s: &Storm| match s.overflows {
        Some(n) => n.to_string(),
        None => "n/a".into(),
    };
    table.push(
        Row::new("storm", "accept-queue overflows during it")
            .value(overflows(&ours))
            .baseline(format!("{} (backlog 128)", overflows(&theirs))),
    );
    table.push(
        Row::new("storm", "connect() → first byte, p50 / p99")
            .value(format!(
                "{} / {}",
                nanos(quantile(&ours.served, 0.5)),
                nanos(quantile(&ours.served, 0.99))
            ))
            .baseline(format!(
                "{} / {}",
                nanos(quantile(&theirs.served, 0.5)),
                nanos(quantile(&theirs.served, 0.99))
            )),
    );
    let whole = |s: &Storm| nanos(s.all.as_nanos() as u64);
    table.push(
        Row::new("storm", "first connect → all served")
            .value(whole(&ours))
            .baseline(whole(&theirs))
            .ratio(theirs.all.as_secs_f64() / ours.all.as_secs_f64()),
    );
    table.note(format!(
        "storm: the client's own loop of {n} non-blocking connects took {} in tailsrv's \
         slowest storm: a floor under \"first connect → all served\" (a loopback connect() \
         does the handshake itself)",
        nanos(ours.connecting.as_nanos() as u64)
    ));
    Ok(())
}

/// One storm's result.
struct Storm {
    /// Each client's time from its `connect` to its first byte, ascending (ns).
    served: Vec<u64>,
    /// From the first connect to the last client served.
    all: Duration,
    /// How long the client took to start all its connects.
    connecting: Duration,
    /// Growth of the kernel's ListenOverflows counter over the storm (namespace-wide, so
    /// another program's overflows would count too); `None` if /proc/net/netstat lacks it.
    overflows: Option<u64>,
}

/// Runs one storm of `n` clients.
fn one_storm(addr: SocketAddr, n: usize, threads: usize) -> Result<Storm> {
    let overflows_before = listen_overflows();
    let start = Instant::now();
    let fleet = Fleet::launch(addr, n, b"0\n", threads, start + STORM_LIMIT, |_| {
        FirstByte {
            sink: Sink::new(),
            began: vec![None; n],
            served: Vec::with_capacity(n),
        }
    });
    let parts = fleet.join();
    let all = start.elapsed();
    fleet::check(&parts, &format!("storm of {n} against {addr}"))?;
    let connecting = parts.iter().map(|p| p.connecting).max().unwrap_or_default();
    let mut served: Vec<u64> = parts.into_iter().flat_map(|p| p.handler.served).collect();
    served.sort_unstable();
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok(Storm {
        served,
        all,
        connecting,
        overflows,
    })
}

/// The kernel's count of connections dropped because a listener's accept queue was full
/// (TcpExt ListenOverflows in /proc/net/netstat: a header line of names, then one of values).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let i = names
        .split_whitespace()
        .position(|w| w == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Done at the first bytes; remembers how long after its own `connect` each client got them.
struct FirstByte {
    sink: Sink,
    /// When each client called `connect`.
    began: Vec<Option<Instant>>,
    served: Vec<u64>,
}

impl Handler for FirstByte {
    fn connecting(&mut self, id: usize) {
        self.began[id] = Some(Instant::now());
    }

    fn readable(&mut self, id: usize, sock: &TcpStream) -> io::Result<Step> {
        if discard(sock, &mut self.sink)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending anything",
            ));
        }
        let began = self.began[id].expect("connect came first");
        self.served.push(began.elapsed().as_nanos() as u64);
        Ok(Step::Done)
    }
}
