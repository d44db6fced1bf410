//! tailsrv-indexer: a sidecar that maps message numbers to byte offsets in a tailsrv log.
//!
//! tailsrv only knows bytes; consumers think in messages. The indexer tails the same file,
//! keeps a persistent index of where every K-th message starts, and answers `offset-of N`,
//! `count` and `message-at B` on its own port (grammar in `proto::query`), so a client asks
//! the indexer for an offset and then streams from tailsrv. Neither process needs the other.
//! Like tailsrv, it can be given a directory instead: queries then name the file, and each
//! file is indexed from its first query on. Given a segmented log's directory, it indexes
//! the log as one, across its segments, with global numbers.
//!
//! - `server`: what is indexed; the skeleton in `shared::server` binds, accepts and stops.
//! - `directory`: directory mode, one index per file, started on demand.
//! - `segmented`: a segmented log (`logfile::segments`) as one log: an index per segment,
//!   queries routed by the segments' names, retention's deletions followed.
//! - `scanner`: follows the log (`shared::watch`), splits it (`proto::framing`) and keeps
//!   the index current, resuming from the index file after a restart.
//! - `bulk`: the cold build of a newline or NUL log, on every core.
//! - `index`: the in-memory index shared with queries, and the lookups.
//! - `cache`: a bounded cache of decoded strides, so repeated lookups skip the log.
//! - `store`: the crash-safe index file format.
//! - `query`: one query connection's life.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod bulk;
mod cache;
mod directory;
mod index;
mod query;
mod scanner;
mod segmented;
mod server;
mod store;

pub use index::Params;
pub use server::{check_index, run, Config, Source};
