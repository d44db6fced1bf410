//! One starter per binary of the workspace: each says once how that binary is started under
//! test, and returns a [`Spawn`] to add flags to and start.
//!
//! Servers listen on a free port of [`crate::LOOPBACK`] (`-p 0 --bind 127.0.0.1`, changed with
//! [`Spawn::port`], [`Spawn::bind`], [`Spawn::default_bind`]) and take their PATH last:
//! `tailsrv(&path).arg("-v").start()`. The consumers log as text (`--log-format text`: the
//! tests look for messages that JSON would escape).

use std::ffi::OsStr;

use crate::Spawn;

/// tailsrv serving `path` (a file or a directory).
pub fn tailsrv(path: impl AsRef<OsStr>) -> Spawn {
    Spawn::server("tailsrv").target(path)
}

/// tailsrv-indexer on `path` (a log, or a directory with `--index-dir`).
pub fn indexer(path: impl AsRef<OsStr>) -> Spawn {
    Spawn::server("tailsrv-indexer").target(path)
}

/// tailsrv-collator writing `path` (a file, or a directory with `--journal-dir`).
pub fn collator(path: impl AsRef<OsStr>) -> Spawn {
    Spawn::server("tailsrv-collator").target(path)
}

/// tscat with `args` (the server addresses among them), logging as text.
pub fn tscat<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Spawn {
    Spawn::bin("tscat")
        .args(["--log-format", "text"])
        .args(args)
}

/// tsmirror with `args` (the server, the replica), logging as text.
pub fn tsmirror<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Spawn {
    Spawn::bin("tsmirror")
        .args(["--log-format", "text"])
        .args(args)
}

/// tswrite with `args` (the collator's address first); feed it with [`Spawn::input`],
/// [`Spawn::paced`] or [`Spawn::feed`].
pub fn tswrite<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Spawn {
    Spawn::bin("tswrite").args(args)
}

/// tsbridge with `args` (a subcommand first).
pub fn tsbridge<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Spawn {
    Spawn::bin("tsbridge").args(args)
}
