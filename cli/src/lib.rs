//! The command line every tailsrv binary shares, servers and consumers alike: the log flags
//! and the logger they install, `--framing`, and systemd readiness. It depends on `proto`,
//! clap and log only, so a consumer (`tscat`, `tsmirror`, `tswrite`, `tsbridge`) gets the same
//! flags as the servers without linking the servers' runtime, inotify or directory walker.
//!
//! - [`flags`]: [`LogArgs`] (`-v`/`-q`, `--log-format`, `--journald`; `RUST_LOG` as the
//!   fallback) and the [`framing`] value parser.
//! - [`logger`]: the logger on stderr (text on a terminal, JSON otherwise) or the journal.
//! - [`line`](mod@line): one record as one text or JSON line; [`time`]: its RFC 3339 timestamp.
//! - [`systemd`]: the journal sink and readiness ([`notify_ready`]), with the `systemd`
//!   feature.
//!
//! This replaces femme, which wrote to stdout (data, for tscat) and unwrapped its write
//! errors, so `tailsrv ... | head -1` died at its next log line.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod flags;
pub mod line;
pub mod logger;
pub mod systemd;
pub mod time;

pub use flags::{framing, LogArgs, LogFormat, OnGoneArgs};
pub use logger::ANNOUNCE;
pub use systemd::notify_ready;
