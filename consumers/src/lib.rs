//! What the consumer binaries (`tscat`, `tsmirror`) share beyond the client library: their
//! stderr logger. The logic itself is in the `client` crate; the binaries parse flags.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod stderr_log;
