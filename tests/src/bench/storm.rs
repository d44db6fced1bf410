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
    let tailsrv = Server::start(
        "tailsrv",
        &[
            "-p".as_ref(),
            "0".as_ref(),
            "--bind".as_ref(),
            "127.0.0.1".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let baseline = SendfileServer::start(&path)?;
    // The slowest of the repetitions: the target is a bound on the worst case.
    let mut worst: Option<(Vec<u64>, Vec<u64>)> = None;
    let mut connecting = Duration::ZERO;
    for _ in 0..plan.reps {
        let (ours, took) = one_storm(tailsrv.addr, n)?;
        connecting = connecting.max(took);
        let (theirs, _) = one_storm(baseline.addr(), n)?;
        let slower = |a: &Vec<u64>, b: Vec<u64>| if b.last() > a.last() { b } else { a.clone() };
        worst = Some(match worst {
            None => (ours, theirs),
            Some((a, b)) => (slower(&a, ours), slower(&b, theirs)),
        });
    }
    let (ours, theirs) = worst.expect("at least one repetition");
    let all = |v: &Vec<u64>| *v.last().unwrap_or(&0);
    table.push(
        Row::new("storm", &format!("{n} connect at once: all served"))
            .value(nanos(all(&ours)))
            .baseline(format!("{} (backlog 128)", nanos(all(&theirs))))
            .ratio(all(&theirs) as f64 / all(&ours) as f64)
            .target("< 1 s", all(&ours) < 1_000_000_000),
    );
    table.push(
        Row::new("storm", "time to first byte, p50 / p99")
            .value(format!(
                "{} / {}",
                nanos(quantile(&ours, 0.5)),
                nanos(quantile(&ours, 0.99))
            ))
            .baseline(format!(
                "{} / {}",
                nanos(quantile(&theirs, 0.5)),
                nanos(quantile(&theirs, 0.99))
            )),
    );
    table.note(format!(
        "storm: the client's own loop of {n} non-blocking connects took up to {} (a floor \
         under the storm figures; loopback connects do the handshake inside connect())",
        nanos(connecting.as_nanos() as u64)
    ));
    Ok(())
}

/// Runs one storm of `n` clients; returns each client's time to first byte, ascending (ns),
/// and how long the client took to start its connects.
fn one_storm(addr: SocketAddr, n: usize) -> Result<(Vec<u64>, Duration)> {
    let start = Instant::now();
    let fleet = Fleet::launch(addr, n, b"0\n", 1, start + STORM_LIMIT, |_| FirstByte {
        start,
        sink: Sink::new(),
        served: Vec::with_capacity(n),
    });
    let parts = fleet.join();
    fleet::check(&parts, &format!("storm of {n} against {addr}"))?;
    let connecting = parts.iter().map(|p| p.connecting).max().unwrap_or_default();
    let mut served: Vec<u64> = parts.into_iter().flat_map(|p| p.handler.served).collect();
    served.sort_unstable();
    Ok((served, connecting))
}

/// Done at the first bytes; remembers when they came.
struct FirstByte {
    start: Instant,
    sink: Sink,
    served: Vec<u64>,
}

impl Handler for FirstByte {
    fn readable(&mut self, _id: usize, sock: &TcpStream) -> io::Result<Step> {
        if discard(sock, &mut self.sink)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending anything",
            ));
        }
        self.served.push(self.start.elapsed().as_nanos() as u64);
        Ok(Step::Done)
    }
}
