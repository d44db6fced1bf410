//! The end-to-end tests: the real binaries over real sockets on 127.0.0.1, one module per
//! binary or concern, all in this one test executable (ripgrep's layout: one link instead of
//! one per file, on a 2-core CI). The harness they share is the `tests` crate (`tests/src/`).
//!
//! Run one module or one test: `cargo test -p tests --test e2e powerloss::` or
//! `cargo test -p tests --test e2e tscat::exit_at_end`. A new test file goes here as a module.
//!
//! Every test runs on a thread of this one process, next to others: a test changes nothing
//! process-wide (environment, working directory, signal dispositions, capabilities, a lowered
//! open-file limit). What must differ for a server is set in its child only
//! (`Spawn::current_dir`, `Spawn::fd_limit`, a thread of its own for capabilities: see
//! `truncation.rs`).

mod bridge;
mod cli;
mod collator;
mod directory;
mod framing_rules;
mod halfclose;
mod indexer;
mod indexer_dir;
mod logging;
mod newcomer;
mod on_gone;
mod powerloss;
mod refusals;
mod segments_collator;
mod segments_indexer;
mod segments_tailsrv;
mod tailsrv;
mod truncation;
mod tscat;
mod tsmirror;
mod tswrite;
