//! Server infrastructure, written once for every tailsrv server (tailsrv, tailsrv-indexer,
//! tailsrv-collator):
//!
//! - [`server`]: the skeleton: listen flags, signals, the watcher, the accept loop, shutdown.
//! - [`rt`]: the runtime seam, the one file that names the executor.
//! - [`watch`]: the file watcher (one inotify instance) that tells everyone when a followed
//!   file grows, appears, shrinks or goes away.
//! - [`segments`]: a segmented log followed as one log: the segment table all its readers
//!   share (segments listed once per change, sealed files opened once, shared, closed after).
//! - [`tree`]: directory mode's rule of which paths may be served, and the listing.
//! - [`net`]: listening sockets, per-connection options, bounded request lines, refusals and
//!   graceful close.
//!
//! The wire grammars live in `proto`, the client side in `client`, the flags and the logger
//! every binary takes in `cli`: a program that only consumes streams depends on neither
//! inotify nor this crate.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod net;
pub mod rt;
pub mod segments;
pub mod server;
pub mod tree;
pub mod watch;
