//! The harness for the end-to-end tests: start the real binaries, learn their port from the
//! `listening on ADDR` log line, talk to them over real sockets, stop them by pid.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`);
//! the README's test command builds them first (`cargo build --workspace`).

pub mod framed;
pub mod lazyfs;
pub mod nats;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything a busy 2-core CI machine should do "at once".
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Path of a workspace binary built by cargo for the same profile as the running program:
/// next to it (the bench, `target/release/bench`) or one directory up (a test executable,
/// `target/<profile>/deps/TEST`).
pub fn bin_path(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let dir = exe.parent().ok_or("this executable has no directory")?;
    for candidate in [Some(dir), dir.parent()].into_iter().flatten() {
        let path = candidate.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(format!(
        "{name} is not built next to {}: run `cargo build --workspace` first (the README's \
         test command does; the bench needs `cargo build --release --workspace`)",
        exe.display()
    ))
}

/// [`bin_path`], for tests: a binary that is not built fails the test with that message.
pub fn bin(name: &str) -> PathBuf {
    bin_path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Everything a child process has logged so far, with a way to wait for a line.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<(Mutex<String>, Condvar)>,
}

impl Log {
    fn push(&self, line: &str) {
        let (text, cv) = &*self.inner;
        let mut text = text.lock().unwrap();
        text.push_str(line);
        text.push('\n');
        cv.notify_all();
    }

    /// The whole log so far.
    pub fn text(&self) -> String {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let (text, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut guard = text.lock().unwrap();
        loop {
            if guard.matches(needle).count() >= n {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Waits until the log contains `needle`; returns the log text from the match on.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let (text, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut guard = text.lock().unwrap();
        loop {
            if let Some(i) = guard.find(needle) {
                return Some(guard[i..].to_owned());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// A running binary of ours. Killed (by pid) when dropped.
pub struct Proc {
    child: Child,
    /// Its stdout and stderr, line by line (the servers log to stderr).
    pub log: Log,
    /// The address from its `listening on` line, if it printed one.
    pub addr: Option<SocketAddr>,
}

impl Proc {
    /// Starts `name` with `args` and waits for its `listening on ADDR` line.
    pub fn start<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Proc {
        Proc::try_start(name, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Proc::start`] that reports failure instead of panicking (the bench's starter).
    pub fn try_start<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Result<Proc, String> {
        Proc::try_start_cmd(name, Command::new(bin_path(name)?).args(args))
    }

    /// Starts `cmd` (the binary `name`) and waits for its `listening on ADDR` line. On a
    /// failure the child is killed before the error is returned.
    pub fn try_start_cmd(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        let mut p = Proc::try_spawn_cmd(name, cmd)?;
        p.addr = Some(p.wait_listening(name)?);
        Ok(p)
    }

    /// Wraps a child that does not log its address (a peer such as redis): the caller knows it.
    pub fn adopt(child: Child, addr: SocketAddr) -> Proc {
        Proc {
            child,
            log: Log::default(),
            addr: Some(addr),
        }
    }

    fn wait_listening(&self, name: &str) -> Result<SocketAddr, String> {
        let Some(rest) = self.log.wait_for("listening on ", PATIENCE) else {
            return Err(format!(
                "{name} did not report its address within {PATIENCE:?}; log:\n{}",
                self.log.text()
            ));
        };
        let addr: String = rest["listening on ".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
            .collect();
        addr.parse()
            .map_err(|e| format!("{name} logged a bad address {addr:?}: {e}"))
    }

    /// Number of file descriptors the process has open.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Starts `name` with `args` without waiting for anything.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Proc {
        Proc::try_spawn_cmd(name, Command::new(bin(name)).args(args))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Proc::start`], with the child's open-file limit set to `nofile`.
    pub fn start_with_fd_limit<S: AsRef<std::ffi::OsStr>>(
        name: &str,
        args: &[S],
        nofile: u64,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin(name));
        cmd.args(args);
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let limit = rustix::process::Rlimit {
                    current: Some(nofile),
                    maximum: Some(nofile),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                Ok(())
            });
        }
        Proc::try_start_cmd(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_spawn_cmd(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let log = Log::default();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => log.push(&l),
                        Err(_) => break,
                    }
                }
            });
        }
        Ok(Proc {
            child,
            log,
            addr: None,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("process did not print a listening address")
    }

    /// Connects a client to it.
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr()).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to this process (and only this one).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, sig);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's open-file limit to its hard limit (tests with many clients).
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A scratch directory removed at the end of the test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tailsrv-test-")
        .tempdir()
        .expect("tempdir")
}

/// Reads exactly `n` bytes from `s`, failing the test after [`PATIENCE`].
pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Reads until the peer closes (or [`PATIENCE`] runs out, which fails the test).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading to end: {e}"));
    buf
}

/// Waits until `cond` holds, polling every few milliseconds; false after `timeout`.
/// For outside state that has no event to wait on (a process's fd count, a file's length).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `n` deterministic pseudo-random bytes (xorshift64*), so a misplaced byte is noticed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Appends `data` to the file at `path` (opened, written, closed: as a logging writer would).
pub fn append(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all(data).unwrap();
}

/// The last synced length a collator published in `FILE.synced` (0 before the first), read
/// with the tests' own decoder of its 8-byte big-endian records, not the collator's code.
pub fn synced(file: &Path) -> u64 {
    let mut p = file.as_os_str().to_owned();
    p.push(".synced");
    let b = std::fs::read(p).unwrap_or_default();
    let n = b.len() / 8;
    if n == 0 {
        return 0;
    }
    u64::from_be_bytes(b[(n - 1) * 8..n * 8].try_into().unwrap())
}
