//! Files on disk that must survive a crash, written one way by every program here: the
//! collator's log and journal, the indexer's index files, the consumers' state files,
//! tsmirror's replica and tsbridge's output. Each mechanism exists once:
//!
//! - [`replace()`] (module `replace`): the durable atomic replace of a small file (temporary,
//!   `fsync`, rename, directory `fsync`; every error reported), and [`sync_dir`] alone for a
//!   file just created in place.
//! - [`lock_exclusive`] (module `lock`): the single-writer rule, a non-blocking exclusive
//!   `flock` that fails at once saying who holds it.
//! - [`cut_torn_tail`] ([`tail`]): before appending to a log that was not closed cleanly, cut
//!   what a crash left after the last complete write (a partial message, a zero run, a
//!   half-written batch or group) in any framing; [`cut_zero_tail`] for a byte copy whose
//!   framing is unknown.
//! - [`group`]: the write-group descriptions (`START END CRC`, an extended attribute or journal
//!   records) that tell a restart where the last complete group ends.
//! - [`segments`]: a segmented log, one log as a directory of segment files named by their
//!   global base offset and first message number, rolled and deleted by whole segments.
//!
//! No async runtime: the servers call these from blocking threads, the consumers directly.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod group;
mod lock;
mod replace;
pub mod tail;

pub mod segments;

pub use lock::lock_exclusive;
pub use replace::{context, replace, replace_with, sibling, sync_dir};
pub use tail::{cut_torn_tail, cut_zero_tail, Recovered};
