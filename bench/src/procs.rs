//! The processes the bench starts, and what /proc says about them.
//!
//! A [`Server`] is one of our release binaries, found next to the bench executable (so the
//! bench measures exactly the build it came with), started on 127.0.0.1 with `-p 0`; its port
//! comes from its `listening on ADDR` log line. It is killed by pid when dropped, so a section
//! that fails half-way still leaves nothing running. The test harness's `Proc` does the same
//! for test binaries but panics on failure and looks in `target/<profile>/` from `deps/`; the
//! bench reports errors instead and lives one directory higher.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::run::Result;

/// How long a server gets to announce its address.
const STARTUP: Duration = Duration::from_secs(20);

/// Path of a binary built next to the bench (`target/release/NAME`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the bench executable: {e}"))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --release --workspace`",
            path.display()
        ))
    }
}

/// A child process, killed (by pid) and reaped when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts our binary `name` with `args` and waits for its `listening on ADDR` line.
    pub fn start<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Result<Server> {
        let mut cmd = Command::new(sibling(name)?);
        cmd.args(args);
        Server::start_cmd(name, cmd)
    }

    /// Starts `cmd` and waits for its `listening on ADDR` line on stderr (the log).
    pub fn start_cmd(name: &str, mut cmd: Command) -> Result<Server> {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let log = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Drains the log for the child's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        let server = |addr| Server { child, addr };
        match rx.recv_timeout(STARTUP) {
            Ok(addr) => Ok(server(addr)),
            Err(_) => {
                // Dropping the guard kills it.
                drop(server(SocketAddr::from(([127, 0, 0, 1], 0))));
                Err(format!(
                    "{name} did not log `listening on ADDR` within {STARTUP:?}"
                ))
            }
        }
    }

    /// Wraps a child that does not log its address (redis): the caller knows it.
    pub fn adopt(child: Child, addr: SocketAddr) -> Server {
        Server { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What /proc says about it now.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `listening on ADDR` log line (JSON or text).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
        .collect();
    addr.parse().ok()
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
