//! The processes the bench starts, and what /proc says about them.
//!
//! A [`Server`] is one of our release binaries, found next to the bench executable (so the
//! bench measures exactly the build it came with), started on 127.0.0.1 with `-p 0`; its port
//! comes from its `listening on ADDR` log line. The starters, the log and killing by pid on
//! drop are the test harness's ([`tests::tailsrv`] and the others, [`tests::Spawn::try_start`]
//! reporting errors instead of panicking); this module adds only what the bench reads about a
//! running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Instant;

use crate::run::Result;

/// Path of a binary built next to the bench (`target/release/NAME`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    tests::bin_path(name)
}

/// A server under test, killed (by pid) and reaped when dropped.
pub struct Server {
    proc: tests::Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server of ours (`tests::tailsrv(path)`, ...) and waits for its
    /// `listening on ADDR` line.
    pub fn start(server: tests::Spawn) -> Result<Server> {
        Ok(Server::wrap(server.try_start()?))
    }

    /// Wraps a child that does not log its address (redis): the caller knows it.
    pub fn adopt(child: Child, addr: SocketAddr) -> Server {
        Server::wrap(tests::Proc::adopt(child, addr))
    }

    fn wrap(proc: tests::Proc) -> Server {
        Server {
            addr: proc.addr(),
            proc,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What /proc says about it now.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid())
    }
}

/// A process's footprint, from /proc/PID/{status,stat,fd}.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub threads: u64,
    pub fds: u64,
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub at: Instant,
}

impl ProcStats {
    pub fn read(pid: u32) -> Result<ProcStats> {
        let at = Instant::now();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
        };
        let rss_bytes = field("VmRSS:")? * 1024;
        let threads = field("Threads:")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("listing /proc/{pid}/fd: {e}"))?
            .count() as u64;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
        // Fields after the command name (which may hold spaces and parentheses): state is
        // field 3, utime and stime are fields 14 and 15.
        let after = &stat[stat.rfind(')').ok_or("malformed /proc/PID/stat")? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i - 3)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("malformed /proc/{pid}/stat"))
        };
        let hz = rustix::param::clock_ticks_per_second() as f64;
        let cpu_secs = (ticks(14)? + ticks(15)?) as f64 / hz;
        Ok(ProcStats {
            rss_bytes,
            threads,
            fds,
            cpu_secs,
            at,
        })
    }

    /// CPU use between `earlier` and `self`, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcStats) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        (self.cpu_secs - earlier.cpu_secs) / wall * 100.0
    }
}

/// CPU seconds (utime + stime) used so far by the threads of this process whose name starts
/// with `prefix`: how the bench tells its readers' cost from its writer's or the floor's.
pub fn own_threads_cpu_secs(prefix: &str) -> Result<f64> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("listing /proc/self/task: {e}"))?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        // A thread that ended between the listing and the read is simply not counted.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15; `fields` starts at field 3.
        for i in [14, 15] {
            ticks += fields
                .get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("malformed /proc/self/task/TID/stat")?;
        }
    }
    Ok(ticks as f64 / hz)
}
