//! NATS servers for the bridge tests and the bench: `nats-server` processes (Debian's package)
//! started here on free loopback ports, with JetStream store dirs in a scratch dir, killed by
//! pid (one at a time, for failover tests, or all on drop, also when starting fails half-way).
//! Every wait is bounded; [`Cluster::try_start_in`] reports failures as errors (the bench),
//! [`Cluster::start`] panics with them (the tests).
//!
//! Ground truth about a stream is read here with async-nats directly (an ordered pass over
//! the whole stream, headers included), never through tsbridge's code.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::{try_free_port as free_port, Proc, Spawn, LOOPBACK, PATIENCE};

/// Whether `nats-server` can be run. Without it a test prints a note and skips, except under
/// `CI=true`, where `.ci/run` installs it and its absence fails the test.
pub fn available() -> bool {
    let ok = installed();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not on PATH (apt-get install nats-server; .ci/run installs it)"
        );
        eprintln!("note: nats-server is not on PATH, skipping (apt-get install nats-server)");
    }
    ok
}

/// Whether `nats-server` can be run from PATH (no CI rule: the bench's question).
pub fn installed() -> bool {
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

/// One nats-server.
pub struct Node {
    /// Its `server_name`.
    pub name: String,
    /// Client port (`nats://127.0.0.1:PORT`).
    pub port: u16,
    /// Monitoring port (`/jsz`).
    pub http: u16,
    conf: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    /// `HOST:PORT` for clients.
    pub fn url(&self) -> String {
        format!("{LOOPBACK}:{}", self.port)
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(&mut self) -> Result<(), String> {
        let proc = Spawn::tool("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .arg("-l")
            .arg(&self.log)
            .try_spawn()
            .map_err(|e| format!("{e} ({})", self.name))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGKILL, by pid.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Whether it is running (not killed).
    pub fn alive(&self) -> bool {
        self.proc.is_some()
    }

    /// GET `path` from its monitoring port: the body.
    pub fn http_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect((LOOPBACK, self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }
}

/// A set of nats-servers (one, or a JetStream cluster) and their scratch directory.
pub struct Cluster {
    /// The servers, `n1`, `n2`, ...
    pub nodes: Vec<Node>,
    /// The scratch directory when the cluster made its own (removed on drop).
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// `n` servers with JetStream, clustered when `n > 1`; `extra` is appended to every
    /// configuration (e.g. `max_payload: 1024`, an `authorization { }` block). Waits until
    /// every server accepts clients and, for a cluster, a metadata leader is elected.
    pub fn start(n: usize, extra: &str) -> Cluster {
        let dir = crate::tempdir();
        let mut cluster =
            Cluster::try_start_in(dir.path(), n, extra).unwrap_or_else(|e| panic!("{e}"));
        cluster._dir = Some(dir);
        cluster
    }

    /// [`Cluster::start`] with configurations, logs and stores in `dir` (created if needed),
    /// reporting failures as errors; the servers already started are killed first.
    pub fn try_start_in(dir: &Path, n: usize, extra: &str) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://{LOOPBACK}:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        // The guard exists before the first child, so an error below kills what started.
        let mut cluster = Cluster {
            nodes: Vec::new(),
            _dir: None,
        };
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, http) = (free_port()?, free_port()?);
            let store = dir.join(format!("store-{name}"));
            let mut conf = format!(
                "server_name: {name}\nlisten: {LOOPBACK}:{port}\nhttp: {LOOPBACK}:{http}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{ name: c1, listen: {LOOPBACK}:{route}, routes: [{route_list}] }}\n"
                ));
            }
            conf.push_str(extra);
            conf.push('\n');
            let path = dir.join(format!("{name}.conf"));
            std::fs::write(&path, conf).map_err(|e| format!("writing {}: {e}", path.display()))?;
            cluster.nodes.push(Node {
                name,
                port,
                http,
                conf: path,
                log: dir.join(format!("{}.log", i + 1)),
                proc: None,
            });
            cluster.nodes.last_mut().expect("just pushed").start()?;
        }
        let deadline = Instant::now() + PATIENCE;
        for node in &cluster.nodes {
            while TcpStream::connect((LOOPBACK, node.port)).is_err() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{} does not accept clients within {PATIENCE:?}; log:\n{}",
                        node.name,
                        node.log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if n > 1 {
            while !cluster
                .nodes
                .iter()
                .any(|n| n.log().contains("metadata leader"))
            {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no JetStream metadata leader within {PATIENCE:?}; log of n1:\n{}",
                        cluster.nodes[0].log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// Every server's client address, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server leading `stream`'s RAFT group, as a live server's monitoring port says.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let Some(body) = node.http_get("/jsz?streams=true") else {
                continue;
            };
            let Some(at) = body.find(&format!("\"name\": \"{stream}\"")) else {
                continue;
            };
            let rest = &body[at..];
            let Some(l) = rest.find("\"leader\": \"") else {
                continue;
            };
            let name: String = rest[l + 11..].chars().take_while(|&c| c != '"').collect();
            if let Some(i) = self.nodes.iter().position(|n| n.name == name) {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// One stored message: its sequence, the headers the bridge sets, and the payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

/// Numbers the durable consumers of [`read_stream`]: each read has its own.
static READS: AtomicU64 = AtomicU64::new(0);

/// Every message of `stream`, in order, read with async-nats (an ephemeral ordered pass).
pub fn read_stream(urls: &str, stream: &str) -> Vec<Stored> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures_lite::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let servers: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(servers.as_slice())
            .await
            .expect("connect");
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client);
        // Right after a failover the JetStream API may time out for a while: retry.
        let deadline = Instant::now() + 3 * PATIENCE;
        let (last, consumer) = loop {
            let attempt = async {
                let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
                let last = s
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence;
                let consumer = s
                    .create_consumer(pull::Config {
                        // Durable, so it has the stream's replicas: an ephemeral one is R1
                        // and may be placed on a server a failover test has killed.
                        durable_name: Some(format!("check-{}", READS.fetch_add(1, Relaxed))),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::None,
                        inactive_threshold: Duration::from_secs(60),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((last, consumer))
            };
            match attempt.await {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("reading stream {stream}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("reading stream {stream}: {e}"),
            }
        };
        let mut out = Vec::new();
        if last == 0 {
            return out;
        }
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .expect("messages");
        while let Some(m) = tokio::time::timeout(PATIENCE, msgs.next())
            .await
            .expect("the stream delivers within PATIENCE")
        {
            let m = m.expect("message");
            let seq = m.info().expect("info").stream_sequence;
            let mut headers = HashMap::new();
            if let Some(h) = &m.headers {
                for (k, v) in h.iter() {
                    if let Some(v) = v.first() {
                        headers.insert(k.to_string(), v.as_str().to_owned());
                    }
                }
            }
            out.push(Stored {
                seq,
                headers,
                payload: m.payload.to_vec(),
            });
            if seq >= last {
                break;
            }
        }
        out
    })
}
