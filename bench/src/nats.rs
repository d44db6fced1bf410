//! nats-server for the bench's sections that compare with NATS JetStream (`bridge`,
//! `collator`): one starter for both.
//!
//! [`Nats::start`] runs `n` nats-server processes (Debian's package, from PATH) with JetStream
//! on free loopback ports, clustered when `n > 1`, their configuration, logs and file stores
//! in a directory under the plan's scratch dir. Every wait is bounded, failures are errors
//! (not panics), and every server is killed by pid and reaped when the guard is dropped, also
//! when starting fails half-way.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::Result;

/// How long the servers get to accept clients (and, clustered, to elect a metadata leader).
const STARTUP: Duration = Duration::from_secs(20);

/// Whether `nats-server` can be run from PATH.
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `nats-server: v2.9.10`, or empty if it cannot be run.
pub fn version() -> String {
    Command::new("nats-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Running nats-servers, killed by pid when dropped.
pub struct Nats {
    children: Vec<Child>,
    ports: Vec<u16>,
    logs: Vec<PathBuf>,
}

impl Nats {
    /// `n` servers with JetStream (file storage in `dir`), clustered when `n > 1`. Returns
    /// once every server accepts clients and, for a cluster, a metadata leader is elected.
    pub fn start(dir: &Path, n: usize) -> Result<Nats> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        // The guard exists before the first child, so an error below kills what started.
        let mut nats = Nats {
            children: Vec::new(),
            ports: Vec::new(),
            logs: Vec::new(),
        };
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let port = free_port()?;
            let store = dir.join(format!("store-{name}"));
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{ name: c1, listen: 127.0.0.1:{route}, routes: [{route_list}] }}\n"
                ));
            }
            let conf_path = dir.join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)
                .map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
            let log = dir.join(format!("{name}.log"));
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&conf_path)
                .arg("-l")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting nats-server: {e}"))?;
            nats.children.push(child);
            nats.ports.push(port);
            nats.logs.push(log);
        }
        let deadline = Instant::now() + STARTUP;
        for (i, &port) in nats.ports.iter().enumerate() {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "nats-server n{} does not accept clients within {STARTUP:?}; its log:\n{}",
                        i + 1,
                        std::fs::read_to_string(&nats.logs[i]).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if n > 1 {
            while !nats
                .logs
                .iter()
                .any(|l| std::fs::read_to_string(l).is_ok_and(|t| t.contains("metadata leader")))
            {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no JetStream metadata leader within {STARTUP:?}; log of n1:\n{}",
                        std::fs::read_to_string(&nats.logs[0]).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(nats)
    }

    /// Every server's client address, comma-separated (what `tsbridge --nats` takes).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // SIGKILL by pid (Child::kill), then reap.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
