//! The one wrapper for every child process the tests (and the bench) start: our servers, our
//! consumers (tscat, tsmirror, tswrite, tsbridge) and outside tools (nc, socat, sh, script).
//!
//! [`Spawn`] says what to start and how: the arguments (for a server, `-p PORT --bind ADDR`
//! first and its PATH last), the working directory, an open-file limit, what its stdin is
//! (nothing, a file, some bytes, bytes at a pace, or a closure on a thread). [`Proc`] is the running
//! child: its stdout captured raw (or left to the test) and its stderr (the log) captured, each
//! with a way to wait on it; it is killed and reaped by pid when dropped, and every wait is
//! bounded.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{bin_path, LOOPBACK, PATIENCE};

/// Bytes a child writes to one pipe, collected by a thread, with ways to wait on them.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<(Mutex<Captured>, Condvar)>,
}

/// The bytes so far, and whether the pipe has closed.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    closed: bool,
}

impl Captured {
    /// What ends in a newline (everything once the pipe has closed): whole log lines only,
    /// so a wait never matches half a line.
    fn complete(&self) -> &[u8] {
        if self.closed {
            return &self.bytes;
        }
        let end = memchr::memrchr(b'\n', &self.bytes).map_or(0, |i| i + 1);
        &self.bytes[..end]
    }
}

impl Log {
    /// Collects what `pipe` yields until it closes, on a thread of its own.
    fn of(mut pipe: impl Read + Send + 'static) -> Log {
        let log = Log::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*sink.inner;
                let mut g = lock.lock().unwrap();
                if n == 0 {
                    g.closed = true;
                } else {
                    g.bytes.extend_from_slice(&buf[..n]);
                }
                cv.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        log
    }

    /// A log of a pipe that was not captured: empty, and closed.
    fn none() -> Log {
        let log = Log::default();
        log.inner.0.lock().unwrap().closed = true;
        log
    }

    /// Every byte so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.inner.0.lock().unwrap().bytes.clone()
    }

    /// The whole log so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// The complete lines so far (and the unterminated last one once the pipe has closed).
    pub fn lines(&self) -> Vec<String> {
        let g = self.inner.0.lock().unwrap();
        String::from_utf8_lossy(g.complete())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Whether the pipe has closed (the child exited, or closed it).
    pub fn closed(&self) -> bool {
        self.inner.0.lock().unwrap().closed
    }

    /// Waits until `cond(bytes, closed)` holds; false after `timeout`.
    pub fn wait(&self, timeout: Duration, cond: impl Fn(&[u8], bool) -> bool) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().unwrap();
        while !cond(&g.bytes, g.closed) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    /// Waits until `cond(complete lines so far)` holds; false after `timeout`.
    fn wait_complete(&self, timeout: Duration, cond: impl Fn(&[u8]) -> bool) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().unwrap();
        while !cond(g.complete()) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    /// Waits until whole lines of the log contain `needle` at least `n` times.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.wait_complete(timeout, |b| {
            memchr::memmem::find_iter(b, needle.as_bytes()).count() >= n
        })
    }

    /// Waits until a whole line of the log contains `needle`; returns the log text from the
    /// match on.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let found = self.wait_complete(timeout, |b| {
            memchr::memmem::find(b, needle.as_bytes()).is_some()
        });
        if !found {
            return None;
        }
        let bytes = self.bytes();
        let at = memchr::memmem::find(&bytes, needle.as_bytes())?;
        Some(String::from_utf8_lossy(&bytes[at..]).into_owned())
    }
}

/// What a child's stdin is.
enum Input {
    /// /dev/null.
    Null,
    /// A pipe that a thread of the test's feeds with this closure, then closes.
    Feed(Box<dyn FnOnce(ChildStdin) + Send>),
    /// A file (read as the child likes: a regular file is not a pipe).
    File(std::fs::File),
}

/// What to start, and how. Built with [`Spawn::bin`] (one of our binaries), [`Spawn::server`]
/// (one of our servers, on loopback), [`Spawn::tool`] (a program on PATH), or the starters
/// ([`crate::tailsrv`], [`crate::tscat`], ...); run with [`Spawn::start`] (a server: waits for
/// its `listening on ADDR` line), [`Spawn::spawn`] (waits for nothing) or [`Spawn::run`] (to
/// its exit).
#[must_use = "a Spawn does nothing until it is started"]
pub struct Spawn {
    name: String,
    program: Result<PathBuf, String>,
    /// A server's `-p PORT` and `--bind ADDR` (None: the server's default bind).
    listen: Option<(u16, Option<String>)>,
    args: Vec<OsString>,
    /// A server's PATH, after every other argument.
    target: Option<OsString>,
    dir: Option<PathBuf>,
    nofile: Option<u64>,
    stdin: Input,
    raw_stdout: bool,
    env: Vec<(OsString, OsString)>,
}

impl Spawn {
    fn new(name: &str, program: Result<PathBuf, String>) -> Spawn {
        Spawn {
            name: name.to_owned(),
            program,
            listen: None,
            args: Vec::new(),
            target: None,
            dir: None,
            nofile: None,
            stdin: Input::Null,
            raw_stdout: false,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spawn {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Our binary `name`, built next to the running program ([`bin_path`]).
    pub fn bin(name: &str) -> Spawn {
        Spawn::new(name, bin_path(name))
    }

    /// Our server `name`, on a free port of [`LOOPBACK`] (`-p 0 --bind 127.0.0.1`).
    pub fn server(name: &str) -> Spawn {
        let mut s = Spawn::bin(name);
        s.listen = Some((0, Some(LOOPBACK.to_owned())));
        s
    }

    /// `program` from PATH (nc, socat, sh, script, nats-server).
    pub fn tool(program: &str) -> Spawn {
        Spawn::new(program, Ok(PathBuf::from(program)))
    }

    /// Runs `program` instead of the binary the starter named (another build of it: the
    /// bench's side-by-side runs against an older commit's release binaries).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Spawn {
        self.program = Ok(program.into());
        self
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spawn {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Spawn {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// A server's PATH (its last argument).
    pub fn target(mut self, path: impl AsRef<OsStr>) -> Spawn {
        self.target = Some(path.as_ref().to_owned());
        self
    }

    /// A server's port (0, the default: a free one).
    pub fn port(mut self, port: u16) -> Spawn {
        self.listen.get_or_insert((0, None)).0 = port;
        self
    }

    /// A server's `--bind` address (instead of [`LOOPBACK`]).
    pub fn bind(mut self, host: &str) -> Spawn {
        self.listen.get_or_insert((0, None)).1 = Some(host.to_owned());
        self
    }

    /// No `--bind`: the server's own default.
    pub fn default_bind(mut self) -> Spawn {
        self.listen.get_or_insert((0, None)).1 = None;
        self
    }

    /// The working directory.
    pub fn current_dir(mut self, dir: &Path) -> Spawn {
        self.dir = Some(dir.to_owned());
        self
    }

    /// The child's open-file limit (soft and hard), set in the child only.
    pub fn fd_limit(mut self, nofile: u64) -> Spawn {
        self.nofile = Some(nofile);
        self
    }

    /// Stdin is a pipe fed by `feed` on a thread of its own, closed when `feed` returns (or
    /// drops it). The child's exit ends a write with an error: `feed` should then return.
    pub fn feed(mut self, feed: impl FnOnce(ChildStdin) + Send + 'static) -> Spawn {
        self.stdin = Input::Feed(Box::new(feed));
        self
    }

    /// Stdin is `input`, then end of input.
    pub fn input(self, input: impl Into<Vec<u8>>) -> Spawn {
        let input = input.into();
        self.feed(move |mut sin| {
            let _ = sin.write_all(&input);
        })
    }

    /// Stdin is `input`: the first `fast` bytes at once, the rest in `chunk`-byte writes with
    /// `pause` after each (so the child is mid-stream whenever something is killed).
    pub fn paced(self, input: Vec<u8>, fast: usize, chunk: usize, pause: Duration) -> Spawn {
        self.feed(move |mut sin| {
            let fast = fast.min(input.len());
            if sin.write_all(&input[..fast]).is_err() {
                return;
            }
            for c in input[fast..].chunks(chunk.max(1)) {
                if sin.write_all(c).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        })
    }

    /// Stdin is the file `f`.
    pub fn stdin_file(mut self, f: std::fs::File) -> Spawn {
        self.stdin = Input::File(f);
        self
    }

    /// Stdout is left to the test ([`Proc::take_stdout`]) instead of captured.
    pub fn raw_stdout(mut self) -> Spawn {
        self.raw_stdout = true;
        self
    }

    /// Every argument, in order: `-p PORT --bind ADDR`, the others, PATH.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some((port, bind)) = &self.listen {
            argv.push("-p".into());
            argv.push(port.to_string().into());
            if let Some(host) = bind {
                argv.push("--bind".into());
                argv.push(host.into());
            }
        }
        argv.extend(self.args.iter().cloned());
        argv.extend(self.target.iter().cloned());
        argv
    }

    /// The command as it would run (RUST_LOG removed, stdio not set), for a test that needs
    /// the child's pipes itself.
    pub fn command(&self) -> Command {
        self.try_command().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_command(&self) -> Result<Command, String> {
        let mut cmd = Command::new(self.program.clone()?);
        cmd.args(self.argv()).env_remove("RUST_LOG");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        if let Some(nofile) = self.nofile {
            use std::os::unix::process::CommandExt;
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
        }
        Ok(cmd)
    }

    /// Starts it, waiting for nothing.
    pub fn spawn(self) -> Proc {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Spawn::spawn`] that reports failure instead of panicking (the bench's way).
    pub fn try_spawn(self) -> Result<Proc, String> {
        let mut cmd = self.try_command()?;
        let (stdin, feed) = match self.stdin {
            Input::Null => (Stdio::null(), None),
            Input::Feed(feed) => (Stdio::piped(), Some(feed)),
            Input::File(f) => (Stdio::from(f), None),
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.name))?;
        let feeder = feed.map(|feed| {
            let sin = child.stdin.take().expect("piped stdin");
            std::thread::spawn(move || feed(sin))
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (out, stdout) = if self.raw_stdout {
            (Log::none(), Some(stdout))
        } else {
            (Log::of(stdout), None)
        };
        let log = Log::of(child.stderr.take().expect("piped stderr"));
        Ok(Proc {
            name: self.name,
            child,
            exited: None,
            out,
            log,
            addr: None,
            stdout,
            feeder,
        })
    }

    /// Starts a server and waits for its `listening on ADDR` line.
    pub fn start(self) -> Proc {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Spawn::start`] that reports failure instead of panicking (the bench's way). On a
    /// failure the child is killed before the error is returned.
    pub fn try_start(self) -> Result<Proc, String> {
        let mut p = self.try_spawn()?;
        p.addr = Some(p.wait_listening()?);
        Ok(p)
    }

    /// Runs it to its exit (within [`PATIENCE`]): status, stdout, stderr.
    pub fn run(self) -> (ExitStatus, Vec<u8>, String) {
        self.spawn().finish()
    }
}

/// A running child. Killed (by pid) and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    /// Its status once a wait has reaped it (no signal is sent after that: the pid is free).
    exited: Option<ExitStatus>,
    /// Its stdout, raw (empty when the test took the pipe).
    pub out: Log,
    /// Its stderr: the log, for every binary of ours.
    pub log: Log,
    /// The address from its `listening on` line, if it was started as a server.
    pub addr: Option<SocketAddr>,
    stdout: Option<ChildStdout>,
    feeder: Option<JoinHandle<()>>,
}

impl Proc {
    /// Starts our binary `name` with `args` and waits for its `listening on ADDR` line.
    pub fn start<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Proc {
        Spawn::bin(name).args(args).start()
    }

    /// [`Proc::start`] that reports failure instead of panicking.
    pub fn try_start<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Result<Proc, String> {
        Spawn::bin(name).args(args).try_start()
    }

    /// Starts our binary `name` with `args` without waiting for anything.
    pub fn spawn<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Proc {
        Spawn::bin(name).args(args).spawn()
    }

    /// Wraps a child that does not log its address (a peer such as redis): the caller knows
    /// it. Its pipes are not captured.
    pub fn adopt(child: Child, addr: SocketAddr) -> Proc {
        Proc {
            name: format!("pid {}", child.id()),
            child,
            exited: None,
            out: Log::none(),
            log: Log::none(),
            addr: Some(addr),
            stdout: None,
            feeder: None,
        }
    }

    fn wait_listening(&mut self) -> Result<SocketAddr, String> {
        let name = &self.name;
        let Some(rest) = self.log.wait_for("listening on ", PATIENCE) else {
            let _ = self.child.kill();
            return Err(format!(
                "{name} did not report its address within {PATIENCE:?}; log:\n{}",
                self.log.text()
            ));
        };
        let addr: String = rest["listening on ".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
            .collect();
        addr.parse().map_err(|e| {
            let _ = self.child.kill();
            format!("{name} logged a bad address {addr:?}: {e}")
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("{} did not print a listening address", self.name))
    }

    /// Connects a client to it.
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr()).expect("connect")
    }

    /// Connects and sends `line` and a newline: a tailsrv request (`0`, `-5`, `list`...).
    pub fn request(&self, line: impl AsRef<[u8]>) -> TcpStream {
        let mut s = self.connect();
        let mut req = line.as_ref().to_vec();
        req.push(b'\n');
        s.write_all(&req).unwrap();
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of file descriptors the process has open.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Sends `sig` to this process (and only this one; nothing once it has been reaped).
    pub fn signal(&self, sig: rustix::process::Signal) {
        if self.exited.is_some() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits for the process to exit, up to `timeout` (zero: just looks).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited.is_none() {
                self.exited = self.child.try_wait().unwrap();
            }
            if self.exited.is_some() || Instant::now() >= deadline {
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (within [`PATIENCE`]), for the stdin feeder and for the end of both
    /// pipes: the status, all of stdout, all of stderr.
    pub fn finish(self) -> (ExitStatus, Vec<u8>, String) {
        self.finish_within(PATIENCE)
    }

    /// [`Proc::finish`] within `timeout`.
    pub fn finish_within(mut self, timeout: Duration) -> (ExitStatus, Vec<u8>, String) {
        let Some(status) = self.wait_exit(timeout) else {
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.log.text()
            );
        };
        if let Some(f) = self.feeder.take() {
            f.join().expect("the stdin feeder panicked");
        }
        assert!(
            self.out.wait(PATIENCE, |_, closed| closed),
            "{}: stdout never closed",
            self.name
        );
        assert!(
            self.log.wait(PATIENCE, |_, closed| closed),
            "{}: stderr never closed",
            self.name
        );
        (status, self.out.bytes(), self.log.text())
    }

    /// Its stdout so far.
    pub fn output(&self) -> Vec<u8> {
        self.out.bytes()
    }

    /// Its stdout pipe, unread (started with [`Spawn::raw_stdout`]).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.stdout
            .take()
            .expect("stdout is captured (use Spawn::raw_stdout)")
    }

    /// Waits until the output satisfies `cond`; fails the test with context after
    /// [`PATIENCE`].
    pub fn wait_until(&self, what: &str, cond: impl Fn(&[u8]) -> bool) {
        if !self.out.wait(PATIENCE, |o, _| cond(o)) {
            panic!(
                "{}: timed out waiting for {what}; {} bytes of output; stderr:\n{}",
                self.name,
                self.out.bytes().len(),
                self.log.text()
            );
        }
    }

    /// Waits until it has written at least `n` bytes to stdout.
    pub fn wait_len(&self, n: usize) {
        self.wait_until(&format!("{n} bytes"), |o| o.len() >= n);
    }

    /// Waits until stderr contains `needle` `times` times; fails the test after
    /// [`PATIENCE`].
    pub fn wait_stderr(&self, needle: &str, times: usize) {
        assert!(
            self.log.wait_count(needle, times, PATIENCE),
            "{}: no {needle:?} x{times} in stderr:\n{}",
            self.name,
            self.log.text()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
