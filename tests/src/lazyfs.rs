//! LazyFS for the power-loss tests (`tests/tests/e2e/powerloss.rs`; `cargo test -p tests --test
//! e2e powerloss::` runs them alone): a FUSE file system with its own page cache, so a test can
//! drop every byte that was not `fsync`ed (a power loss) or tear one write in parts. Each test
//! mounts its own, so they run beside each other and beside the other tests of the executable.
//!
//! [`LazyFs::mount`] mounts a private LazyFS (its own config, fault FIFO, backing directory and
//! small cache) on a temp directory; dropping it unmounts and kills the LazyFS process by pid.
//! Faults follow `../shared/tools/lazyfs/USAGE.md` (beside the repository): [`LazyFs::power_loss`] stops the
//! processes writing, clears the cache, then kills them, as a real power loss would;
//! [`LazyFs::torn_op`] arms a torn write, after which LazyFS kills itself and
//! [`LazyFs::restart`] mounts it again on the same backing directory.
//!
//! The binary comes from `TAILSRV_LAZYFS` (what `.ci/run` exports), else `target/lazyfs/lazyfs`
//! or `/tmp/lazyfs-bin/lazyfs`; its `libpcache.so.0` sits beside it. Without LazyFS or
//! `/dev/fuse` a test is skipped with a message saying why, except under `CI`, where that is a
//! failure.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::PATIENCE;

/// Page-cache size of each LazyFS: allocated up front (512 MiB takes ~3 s), enough for the
/// tests' small files.
const CACHE: &str = "64mb";

/// A mounted LazyFS. Unmounted and killed when dropped.
pub struct LazyFs {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// How many times it was restarted.
    restarts: usize,
}

/// Where a LazyFS binary is, or why there is none.
fn find_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TAILSRV_LAZYFS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TAILSRV_LAZYFS={} is not a file", p.display()))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        workspace.join("target/lazyfs/lazyfs"),
        PathBuf::from("/tmp/lazyfs-bin/lazyfs"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no LazyFS binary (set TAILSRV_LAZYFS, or build it: \
                 ../shared/tools/lazyfs/build.sh target/lazyfs; looked in {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Why LazyFS cannot run here, if it cannot.
fn unavailable() -> Result<PathBuf, String> {
    let bin = find_binary()?;
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    let fusermount = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !fusermount.is_ok_and(|s| s.success()) {
        return Err("fusermount3 is not installed (apt-get install fuse3)".into());
    }
    Ok(bin)
}

/// Skips (returns `None`, printing why) or, under `CI`, fails the test `test`.
fn skip(test: &str, why: &str) -> Option<LazyFs> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: LazyFS is required under CI: {why}");
    }
    eprintln!("SKIPPED {test}: LazyFS unavailable: {why}");
    None
}

fn mounted(mnt: &Path) -> bool {
    let target = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split(' ');
            let _dev = f.next();
            f.next() == Some(&*target) && f.next().is_some_and(|t| t.starts_with("fuse"))
        })
    })
}

impl LazyFs {
    /// Mounts a fresh LazyFS for `test`, or skips it (see the module docs).
    pub fn mount(test: &str) -> Option<LazyFs> {
        let bin = match unavailable() {
            Ok(b) => b,
            Err(why) => return skip(test, &why),
        };
        // LazyFS ignores a `--config-path` whose value contains "-o" in any case (it takes it
        // for a mount option), so the directory's name must not (`tailsrv-lazyfs-O4x...`
        // did, now and then): underscores, and a new name if the random part makes one.
        let fine =
            |d: &tempfile::TempDir| !d.path().to_string_lossy().to_lowercase().contains("-o");
        let Some(dir) = (0..20)
            .map(|_| {
                tempfile::Builder::new()
                    .prefix("tailsrv_lazyfs_")
                    .tempdir()
                    .expect("tempdir")
            })
            .find(fine)
        else {
            return skip(
                test,
                "the temp directory's path contains \"-o\" (set TMPDIR)",
            );
        };
        for d in ["root", "mnt"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let config = format!(
            "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\n\
             custom_size=\"{CACHE}\"\nblocks_per_page=1\n[filesystem]\n\
             log_all_operations=false\nlogfile=\"\"\n",
            dir.path().join("faults.fifo").display()
        );
        std::fs::write(dir.path().join("lazyfs.toml"), config).unwrap();
        let mut fs = LazyFs {
            bin,
            dir,
            child: None,
            restarts: 0,
        };
        match fs.start() {
            Ok(()) => Some(fs),
            Err(why) => skip(test, &why),
        }
    }

    /// Starts the LazyFS process and waits until its mount is there.
    fn start(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let lib = self.bin.parent().unwrap().to_owned();
        let mut child = Command::new(&self.bin)
            .arg(self.mnt())
            .arg("--config-path")
            .arg(self.dir.path().join("lazyfs.toml"))
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.root().display()))
            .arg("-f")
            .env("LD_LIBRARY_PATH", lib)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        let deadline = Instant::now() + PATIENCE;
        while !(mounted(&self.mnt()) && self.log().contains("waiting for fault commands")) {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "lazyfs exited ({status}) before mounting; its log:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "lazyfs did not mount in time; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The mount point: where the processes under test read and write.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The backing directory: what "the disk" holds (LazyFS's view of `path` is the same
    /// name under [`LazyFs::mnt`]).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("lazyfs.log")
    }

    /// Everything LazyFS logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The LazyFS process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the LazyFS process is still running (a torn write kills it).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits up to `timeout` for LazyFS to die (after a torn write); true if it did.
    pub fn wait_dead(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Writes one fault command to the FIFO (bounded: a LazyFS that stopped reading it fails
    /// the test instead of hanging it).
    pub fn fault(&self, command: &str) {
        let fifo = self.dir.path().join("faults.fifo");
        let line = format!("{command}\n");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = File::options()
                .write(true)
                .open(&fifo)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(PATIENCE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("writing {command:?} to the LazyFS FIFO: {e}"),
            Err(_) => panic!(
                "LazyFS did not read its FIFO within {PATIENCE:?} ({command:?}); log:\n{}",
                self.log()
            ),
        }
    }

    /// Drops every unsynced byte (`lazyfs::clear-cache`) and waits until LazyFS says it did.
    pub fn clear_cache(&mut self) {
        let before = self.log().matches("cache is cleared").count();
        self.fault("lazyfs::clear-cache");
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches("cache is cleared").count() <= before {
            assert!(
                Instant::now() < deadline,
                "LazyFS did not clear its cache; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A power loss under the processes `pids`: SIGSTOP them (they write nothing more), drop
    /// the unsynced bytes, SIGKILL them. The caller reaps them (`Proc::wait_exit`). LazyFS is
    /// restarted if the fault killed it.
    pub fn power_loss(&mut self, pids: &[u32]) {
        self.power_loss_with(pids, || {});
    }

    /// Like [`LazyFs::power_loss`], running `at_stop` while the processes are stopped and the
    /// cache is still intact (to read what they had published, e.g. `FILE.synced`).
    pub fn power_loss_with(&mut self, pids: &[u32], at_stop: impl FnOnce()) {
        for &p in pids {
            signal(p, Signal::STOP);
        }
        at_stop();
        self.clear_cache();
        for &p in pids {
            signal(p, Signal::KILL);
        }
        if !self.alive() {
            self.restart();
        }
    }

    /// Arms a torn write: the next write to `path` (a path under [`LazyFs::mnt`] or
    /// [`LazyFs::root`], or relative to them) is split into `parts` equal parts, only the
    /// 1-based parts in `persist` reach the disk, then LazyFS kills itself.
    pub fn torn_op(&self, path: &Path, parts: usize, persist: &[usize]) {
        let rel = path
            .strip_prefix(self.mnt())
            .or_else(|_| path.strip_prefix(self.root()))
            .unwrap_or(path);
        let persist: Vec<String> = persist.iter().map(usize::to_string).collect();
        let command = format!(
            "lazyfs::torn-op::file={}::parts={parts}::persist={}",
            self.root().join(rel).display(),
            persist.join(",")
        );
        // LazyFS arms the fault after reading it: wait for that, or the write it is meant
        // for could slip through first.
        let armed = format!("configured successfully '{command}'");
        let before = self.log().matches(&armed).count();
        self.fault(&command);
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches(&armed).count() <= before {
            assert!(
                Instant::now() < deadline,
                "LazyFS did not arm {command:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Unmounts, kills LazyFS if it still runs, and mounts it again on the same backing
    /// directory (an empty cache: what a reboot finds).
    pub fn restart(&mut self) {
        self.stop();
        self.restarts += 1;
        if let Err(why) = self.start() {
            panic!("restarting LazyFS: {why}");
        }
    }

    /// How many times it was restarted.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    fn stop(&mut self) {
        let mnt = self.mnt();
        let quiet = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if mounted(&mnt) {
            let _ = quiet(Command::new("fusermount3").arg("-u").arg(&mnt))
                || quiet(Command::new("fusermount3").arg("-uz").arg(&mnt))
                || quiet(Command::new("umount").arg("-l").arg(&mnt));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A dead FUSE daemon's mount can linger a moment after its process is gone.
        let deadline = Instant::now() + PATIENCE;
        while mounted(&mnt) && Instant::now() < deadline {
            let _ = quiet(Command::new("umount").arg("-l").arg(&mnt));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `sig` to the process `pid` (one of ours).
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process(p, sig);
    }
}
