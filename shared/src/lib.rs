//! The pieces every tailsrv binary shares, each written once:
//!
//! - [`header`]: the one-line request a client sends to tailsrv, and how it is read off a socket.
//! - [`watch`]: the file watcher (one inotify instance) that tells everyone when a followed
//!   file grows, appears, shrinks or goes away.
//! - [`tree`]: directory mode's rule of which paths may be served (inside the root, not
//!   ignored, regular files), and the listing.
//! - [`sendfile`]: moving file bytes to a socket with `sendfile(2)`, driven by readiness.
//! - [`net`]: listening sockets (big backlog, dual-stack) and per-connection socket options.
//! - [`logging`]: the logger (stderr, text or JSON lines; or journald), levels from `-v`/`-q`/`RUST_LOG`.
//! - [`framing`]: message boundaries (newline, nul, u32be, varint) found incrementally in a byte stream.
//! - [`consumer`]: resumable consumers (blocking I/O): reconnect and fail over at the exact
//!   byte, whole messages, checkpoints in a state file; the logic of `tscat` and `tsmirror`.
//!
//! Everything here is runtime-agnostic: it uses async-io's reactor directly, so the binaries
//! decide which executor (async-std today) runs the futures.

pub mod consumer;
pub mod framing;
pub mod header;
pub mod logging;
pub mod net;
pub mod sendfile;
pub mod tree;
pub mod watch;
