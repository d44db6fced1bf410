//! tailsrv-collator: the write side. Producers append whole messages over TCP and are told
//! where each landed (byte offset and message number), with the durability they chose.
//!
//! It is the file's only writer and runs beside tailsrv (which streams the file) and
//! tailsrv-indexer (which numbers its messages): three small processes on one file make a
//! Kafka-lite. The message numbers it answers are the indexer's, because both count the
//! complete messages of the same file with the same framing.
//!
//! - [`conn`]: one producer's connection: the protocol ([`proto::collate`]), validation
//!   ([`proto::framing`]), answers in request order, back-pressure.
//! - [`ctx`]: what every connection shares (settings, files and writers, live connections)
//!   and the drain at shutdown; [`budget`]: the memory budget for request bodies.
//! - [`writer`]: one file's writer thread: group commit (one `pwritev` and at most one
//!   `fdatasync` for everything queued), failures cut back or stop the collator.
//! - [`recover`]: the restart check: the last complete write group found (an extended
//!   attribute or the journal), the torn tail cut ([`logfile::cut_torn_tail`]), the writer
//!   started.
//! - [`dedupe`]: idempotent producers and the journal they (and the restart check) rely on.
//! - [`watermark`]: the synced length, published in `FILE.synced` for tailsrv's
//!   `--serve-up-to-synced`.
//! - [`segmented`]: segmented logs ([`logfile::segments`]): opening one, rolling, retention
//!   on its own thread, and the test-only fault points.
//! - [`server`]: locking, set-up, serving on the shared skeleton, draining on SIGTERM.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod budget;
mod conn;
mod ctx;
mod dedupe;
mod recover;
mod segmented;
mod server;
mod watermark;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use logfile::segments::{Retention, Rolling};
pub use segmented::{parse_bytes, FAULT_VAR};
pub use server::run;
pub use writer::{Settings, SyncMode};

/// What the collator writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// One file; its journal is `FILE.collator` beside it.
    File(PathBuf),
    /// A segmented log ([`logfile::segments`]): created if absent (or an empty directory),
    /// opened if it holds the marker. Its journal is `DIR.collator` and its synced length
    /// `DIR.synced`, beside the directory.
    Segmented {
        /// The log's directory.
        dir: PathBuf,
        /// When to start a new segment.
        rolling: Rolling,
        /// Which old segments to delete.
        retention: Retention,
    },
    /// The files of a directory, named by each request; journals under `journal_dir`.
    Dir {
        /// The directory.
        root: PathBuf,
        /// Where the journals go (outside `root`).
        journal_dir: PathBuf,
    },
}

/// Everything `tailsrv-collator` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// What is written.
    pub target: Target,
    /// Where to listen.
    pub addr: SocketAddr,
    /// Framing, sync mode and limits.
    pub settings: Settings,
    /// How long a request header may take.
    pub header_timeout: Duration,
}
