//! tailsrv: `tail -f` as a TCP server.
//!
//! One process follows one append-only file (a plain file, or a segmented log's directory),
//! or the files and segmented logs of a directory. Each client sends
//! one request line naming where it wants to start (grammar in `proto::request`), then
//! receives the file's bytes from there on, following the file as it grows, until it hangs up.
//!
//! - `server`: what is served, the client limit; the skeleton in `shared::server` does the
//!   binding, accepting and stopping.
//! - `client`: the life of one client: request, wait, `sendfile`, repeat.
//! - `sendfile`: moving file bytes to a socket on readiness, without copying.
//! - `hangup`: noticing a client that is gone (reset, failed), not one that only half-closed.
//! - `synced`: `--serve-up-to-synced`, streaming only up to the collator's synced length.
//! - `segmented`: a segmented log (`logfile::segments`, a directory of segments) served as
//!   one log: global offsets, `gone` below the log start, the stream crossing segments.
//!
//! The file itself is watched by `shared::watch`, once for all clients.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod client;
mod hangup;
mod segmented;
mod sendfile;
mod server;
mod synced;

pub use server::{run, Config};
