//! The runtime seam: the only place that names the executor.
//!
//! The servers run on async-std's executor, as the project was asked to; async-std is
//! deprecated upstream in favour of smol, so everything that touches a file descriptor uses
//! async-io (the reactor both share) directly, and the executor is reached only through the
//! three functions below. Moving to smol is a change to this file.

use std::future::Future;

/// Runs a future to completion on the current thread, driving the executor's threads.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_std::task::block_on(future)
}

/// A task running on the executor; awaiting it gives its output. Dropping it detaches the
/// task (it keeps running).
pub type Task<T> = async_std::task::JoinHandle<T>;

/// Starts a task on the executor's threads.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    async_std::task::spawn(future)
}

/// Runs blocking work (file-system walks, long preads, CPU-bound scans) on the blocking
/// pool, so it never holds an executor thread that other tasks are waiting for.
pub fn spawn_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    async_std::task::spawn_blocking(work)
}
