//! Bulk reading: fan-out throughput (sections `fanout` and `slow`).
//!
//! `fanout`: N clients each read the data file from byte 0, the same total per row (the file
//! for one client, a 1/N share of it each for N), against tailsrv and against the blocking
//! sendfile baseline, taking turns so both see the same machine noise. The figure is the
//! aggregate rate from the first connect to the last client's last byte.
//!
//! `slow`: the same with 100 readers, with and without one more client that never reads.
//! A server that lets one stalled socket hold up a shared loop shows it here.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::baseline::SendfileServer;
use crate::data::DataFile;
use crate::fleet::{self, discard, Fleet, Handler, Sink, Step};
use crate::procs::Server;
use crate::report::{gibps, Chart, Row, Table};
use crate::run::{Plan, Result};

/// The longest one bulk run may take before it counts as failed.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Readers in the slow-consumer section.
const SLOW_READERS: usize = 100;

pub fn fanout(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    let tailsrv = start_tailsrv(data)?;
    let baseline = SendfileServer::start(&data.path)?;
    let mut groups = Vec::new();
    for &n in &plan.fanout_clients {
        // The in-process baseline holds both ends of every connection.
        let n = plan.cap(n.max(1), table).min(plan.max_conns() / 3);
        let each = (data.len / n as u64).max(1);
        let threads = plan.client_threads.min(n);
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..plan.reps {
            best.0 = best.0.min(bulk_read(tailsrv.addr, n, each, threads)?);
            best.1 = best.1.min(bulk_read(baseline.addr(), n, each, threads)?);
        }
        let total = each * n as u64;
        let ratio = best.1 / best.0;
        let mut row = Row::new("fanout", &format!("{n} clients × {}", mib(each)))
            .value(gibps(total, best.0))
            .baseline(gibps(total, best.1))
            .ratio(ratio);
        if n == 1 {
            row = row.target("≥ 0.90× sendfile", ratio >= 0.9);
        }
        table.push(row);
        let gib = |secs: f64| total as f64 / secs / (1u64 << 30) as f64;
        groups.push((
            format!("{n} clients"),
            vec![
                ("tailsrv".to_string(), gib(best.0)),
                ("sendfile, thread per client".to_string(), gib(best.1)),
            ],
        ));
    }
    table.chart(Chart::Bars {
        name: "fanout".into(),
        title: "Fan-out: total throughput, each client its share of the file".into(),
        unit: "GiB/s".into(),
        groups,
    });
    Ok(())
}

pub fn slow(plan: &Plan, data: &DataFile, table: &mut Table) -> Result<()> {
    let tailsrv = start_tailsrv(data)?;
    let n = SLOW_READERS.min(plan.max_conns().saturating_sub(1)).max(1);
    let each = (data.len / n as u64).max(1);
    let threads = plan.client_threads.min(n);
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..plan.reps {
        best.0 = best.0.min(bulk_read(tailsrv.addr, n, each, threads)?);
        let stalled = stalled_client(tailsrv.addr)?;
        best.1 = best.1.min(bulk_read(tailsrv.addr, n, each, threads)?);
        drop(stalled);
    }
    let total = each * n as u64;
    let ratio = best.0 / best.1;
    table.push(
        Row::new("slow", &format!("{n} readers beside 1 that never reads"))
            .value(gibps(total, best.1))
            .baseline(format!("{} without it", gibps(total, best.0)))
            .ratio(ratio)
            .target("≥ 0.90×", ratio >= 0.9),
    );
    Ok(())
}

fn start_tailsrv(data: &DataFile) -> Result<Server> {
    Server::start(tests::tailsrv(&data.path))
}

/// `n` clients each read `each` bytes from byte 0; returns the seconds until the last is done.
pub fn bulk_read(addr: SocketAddr, n: usize, each: u64, threads: usize) -> Result<f64> {
    let start = Instant::now();
    let fleet = Fleet::launch(addr, n, b"0\n", threads, start + RUN_LIMIT, |_| Bulk {
        sink: Sink::new(),
        each,
        got: vec![0; n],
        last_done: start,
    });
    let parts = fleet.join();
    fleet::check(&parts, &format!("{n} readers of {addr}"))?;
    let end = parts
        .iter()
        .map(|p| p.handler.last_done)
        .max()
        .unwrap_or(start);
    Ok(end.duration_since(start).as_secs_f64())
}

/// Reads and drops `each` bytes per connection.
struct Bulk {
    sink: Sink,
    each: u64,
    got: Vec<u64>,
    last_done: Instant,
}

impl Handler for Bulk {
    fn readable(&mut self, id: usize, sock: &TcpStream) -> io::Result<Step> {
        let n = discard(sock, &mut self.sink)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "server closed after {} of {} bytes",
                    self.got[id], self.each
                ),
            ));
        }
        self.got[id] += n as u64;
        if self.got[id] >= self.each {
            self.last_done = self.last_done.max(Instant::now());
            return Ok(Step::Done);
        }
        Ok(Step::More)
    }
}

/// A client that asks for the whole file and never reads: returned once the server has
/// started sending to it (its receive queue is non-empty), so it is surely stalled by the
/// time the readers run.
fn stalled_client(addr: SocketAddr) -> Result<TcpStream> {
    use std::io::Write;
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    sock.write_all(b"0\n")
        .map_err(|e| format!("sending header to {addr}: {e}"))?;
    let filling = tests::eventually(tests::PATIENCE, || {
        rustix::io::ioctl_fionread(&sock).is_ok_and(|n| n > 0)
    });
    if !filling {
        return Err("the stalled client never received anything".into());
    }
    Ok(sock)
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
