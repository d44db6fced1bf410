//! tailsrv: `tail -f` as a TCP server.
//!
//! One process follows one append-only file. Each client sends one header line naming where
//! it wants to start ([`shared::header`]), then receives the file's bytes from there on,
//! following the file as it grows, until it hangs up.
//!
//! - [`server`]: binding, the accept loop (fd exhaustion, client limit), shutdown on signals
//!   and when the file goes away.
//! - [`client`]: the life of one client: header, wait, `sendfile`, repeat.
//!
//! The file itself is watched by [`shared::watch`], once for all clients.

pub mod client;
pub mod server;

pub use server::{run, Config};
