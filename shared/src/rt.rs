//! The runtime seam: the only place that names the executor, and the one place that decides
//! which thread polls a woken task.
//!
//! The servers run on async-std's executor, as the project was asked to; async-std is
//! deprecated upstream in favour of smol, so everything that touches a file descriptor uses
//! async-io (the reactor both share) directly, and the executor is reached only through the
//! functions below. Moving to smol is a change to this file.
//!
//! # Where a woken task runs
//!
//! Tasks started with [`spawn`] are `async-task` tasks with a schedule function of our own.
//! A woken task normally goes to async-std's executor threads: it is queued for one of the
//! runners, a long-lived async-std task per executor thread that polls queued tasks in
//! turn. The exception is a thread that exists to wake tasks. The file watcher reads inotify
//! on a thread of its own and publishes a file's new length inside [`run_woken_here`]; the
//! collator's writer thread answers a written group inside it. Tasks woken inside that call
//! (the followers waiting for that file to grow, the connections waiting for their
//! acknowledgements) are polled right there, on that thread, once, in the order they were
//! woken, instead of being handed to an executor thread: "the kernel says the file grew" →
//! `sendfile` involves no thread hand-off at all, where the executor would cost one or two
//! cross-thread wake-ups (tens of µs each on a VM, see BENCHMARKS.md).
//!
//! Bounds, so that polling inline never costs the others:
//! - only the first half of the woken tasks, and at most [`INLINE`], are polled on the
//!   watcher's thread; the rest are handed to the executor *first*, so that the executor's
//!   threads send in parallel with the watcher's (with 10 followers, 5 are sent from each
//!   core; with 1,000, 8 from the watcher's thread and 992 by the executor's);
//! - inline polling stops after [`BUDGET`]; what is left goes to the executor;
//! - a task is polled inline at most once per call: if it wakes itself again (a yield, a
//!   wake that raced with its poll) it goes to the executor;
//! - polling a follower is a non-blocking `sendfile` (a slow client's socket is full: it
//!   returns at once), and a long backlog yields every few MiB, so no single poll is long.
//!
//! Nothing spins: the watcher's thread sleeps in `poll(2)` while files are quiet, and the
//! executor's threads in the reactor, as before.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_task::Runnable;
use event_listener::Event;

/// Runs a future to completion on the current thread, driving the executor's threads.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_std::task::block_on(future)
}

/// A task; awaiting it gives its output. Dropping it detaches the task (it keeps running).
pub struct Task<T>(Handle<T>);

enum Handle<T> {
    Ours(Option<async_task::Task<T>>),
    Blocking(async_std::task::JoinHandle<T>),
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Handle::Ours(Some(task)) => Pin::new(task).poll(cx),
            // Only taken in `drop`.
            Handle::Ours(None) => Poll::Pending,
            Handle::Blocking(handle) => Pin::new(handle).poll(cx),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Handle::Ours(task) = &mut self.0 {
            if let Some(task) = task.take() {
                task.detach();
            }
        }
    }
}

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
    }
}

/// Starts a task. It runs on the executor's threads, or on the watcher's when the watcher
/// wakes it (see the module docs).
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    // A panic in the task is printed by the panic hook and ends only that task (it reaches
    // whoever awaits its `Task`), never the thread that happened to poll it.
    let (runnable, task) = async_task::Builder::new()
        .propagate_panic(true)
        .spawn(|()| future, schedule);
    runnable.schedule();
    Task(Handle::Ours(Some(task)))
}

/// Runs blocking work (file-system walks, long preads, CPU-bound scans) on the blocking
/// pool, so it never holds an executor thread that other tasks are waiting for.
pub fn spawn_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    Task(Handle::Blocking(async_std::task::spawn_blocking(work)))
}

/// Woken tasks polled on the waking thread per [`run_woken_here`] call, at most.
///
/// A task polled there holds up the watcher (and so every other file's followers) for as
/// long as its poll lasts, so a task that may be polled there must never loop without
/// awaiting on something only the watcher can change: the indexer's scanner once did (a
/// short read made it rebuild, read the same stale length and rebuild again), and the
/// watcher never got to publish the length that would have ended the loop.
pub const INLINE: usize = 8;

/// How long [`run_woken_here`] polls woken tasks before it hands the rest to the executor.
pub const BUDGET: Duration = Duration::from_micros(500);

thread_local! {
    /// Inside [`run_woken_here`]: the tasks woken so far, to be polled on this thread.
    static WOKEN: RefCell<Option<Vec<Runnable>>> = const { RefCell::new(None) };
}

/// Calls `wake`, then polls the tasks it woke on this thread (within the bounds in the module
/// docs) before returning. For a thread that exists to wake tasks, such as the file
/// watcher's; tasks woken outside such a call go to the executor as usual.
pub fn run_woken_here<T>(wake: impl FnOnce() -> T) -> T {
    let outer = WOKEN.with(|w| w.borrow_mut().replace(Vec::new()));
    let out = wake();
    let woken = WOKEN
        .with(|w| std::mem::replace(&mut *w.borrow_mut(), outer))
        .unwrap_or_default();
    // Half here, half to the executor (whose threads run on the other core), up to INLINE.
    let inline = woken.len().div_ceil(2).min(INLINE);
    let mut woken = woken.into_iter();
    let here: Vec<Runnable> = woken.by_ref().take(inline).collect();
    to_executor(woken);
    let start = Instant::now();
    let mut here = here.into_iter();
    for runnable in here.by_ref() {
        trace::mark(trace::Point::Polled);
        runnable.run();
        if start.elapsed() > BUDGET {
            break;
        }
    }
    to_executor(here);
    out
}

/// Where a woken task goes: onto this thread's list inside [`run_woken_here`], else to the
/// executor.
fn schedule(runnable: Runnable) {
    let runnable = WOKEN.with(|w| match w.try_borrow_mut() {
        Ok(mut w) => match w.as_mut() {
            Some(list) => {
                list.push(runnable);
                None
            }
            None => Some(runnable),
        },
        Err(_) => Some(runnable),
    });
    if let Some(runnable) = runnable {
        to_executor(std::iter::once(runnable));
    }
}

/// The woken tasks waiting for an executor thread, and the runners that poll them: one
/// long-lived async-std task per executor thread, each taking tasks off the queue in turn.
/// A wake costs a queue push and, when a runner is idle, waking it: no allocation, and one
/// hand-off to the executor, as scheduling an async-std task directly would.
struct Runners {
    queue: Mutex<VecDeque<Runnable>>,
    /// Notified when tasks are queued; idle runners wait on it.
    queued: Event,
}

static RUNNERS: OnceLock<Runners> = OnceLock::new();

fn runners() -> &'static Runners {
    RUNNERS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..threads {
            drop(async_std::task::spawn(run_queued()));
        }
        Runners {
            queue: Mutex::default(),
            queued: Event::new(),
        }
    })
}

/// A runner: polls queued tasks in order; yields to the executor after [`RUN_IN_A_ROW`] so
/// that the executor's other tasks get their turn, and sleeps while the queue is empty.
async fn run_queued() {
    let runners = runners();
    loop {
        let mut ran = 0;
        while let Some(runnable) = runners.pop() {
            trace::mark(trace::Point::Polled);
            runnable.run();
            ran += 1;
            if ran == RUN_IN_A_ROW {
                ran = 0;
                futures_lite::future::yield_now().await;
            }
        }
        let listener = runners.queued.listen();
        if runners.is_empty() {
            listener.await;
        }
    }
}

/// Tasks a runner polls before it yields to the executor.
const RUN_IN_A_ROW: usize = 64;

impl Runners {
    fn pop(&self) -> Option<Runnable> {
        self.lock().pop_front()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Runnable>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Queues tasks for the runners and wakes as many idle runners as there are tasks.
fn to_executor(runnables: impl Iterator<Item = Runnable>) {
    let runners = runners();
    let n = {
        let mut queue = runners.lock();
        let before = queue.len();
        queue.extend(runnables);
        queue.len() - before
    };
    if n > 0 {
        runners.queued.notify_additional(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Tasks woken inside `run_woken_here` are polled before it returns, on the calling
    /// thread (half of them, the first woken; the other half on the executor).
    #[test]
    fn woken_tasks_run_on_the_waking_thread() {
        let event = Arc::new(event_listener::Event::new());
        let polled_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (event, polled_on) = (event.clone(), polled_on.clone());
            let listener = event.listen();
            tasks.push(spawn(async move {
                listener.await;
                polled_on.lock().unwrap().push(std::thread::current().id());
            }));
        }
        // Let the executor poll each task once, so that each is waiting on its listener.
        std::thread::sleep(Duration::from_millis(200));
        assert!(polled_on.lock().unwrap().is_empty());
        run_woken_here(|| event.notify(usize::MAX));
        let me = std::thread::current().id();
        let here = polled_on
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t == me)
            .count();
        // Half of them, at most INLINE.
        let half = INLINE.min(2);
        assert_eq!(
            here, half,
            "half of the woken tasks (at most INLINE) ran here"
        );
        block_on(async {
            for t in tasks {
                t.await;
            }
        });
        assert_eq!(polled_on.lock().unwrap().len(), 4);
    }

    /// Over [`INLINE`] woken tasks: the rest still run, on the executor.
    #[test]
    fn many_woken_tasks_all_run() {
        let event = Arc::new(event_listener::Event::new());
        let done = Arc::new(AtomicUsize::new(0));
        let n = INLINE * 10 + 1;
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (event, done) = (event.clone(), done.clone());
            let listener = event.listen();
            tasks.push(spawn(async move {
                listener.await;
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        std::thread::sleep(Duration::from_millis(200));
        run_woken_here(|| event.notify(usize::MAX));
        block_on(async {
            for t in tasks {
                t.await;
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), n);
    }
}

/// Timestamps along the path from "inotify has events" to "sendfile returned", for the
/// bench's latency breakdown (BENCHMARKS.md). Compiled in only with the `latency-trace`
/// feature; otherwise [`trace::mark`] is an empty inline function.
///
/// With the feature, each mark appends (point, CLOCK_MONOTONIC ns) to a buffer that a
/// thread writes every 20 ms as text lines `POINT NS` to the file named by `TAILSRV_TRACE`
/// (nothing is recorded when it is unset).
pub mod trace {
    /// A point on the path from a file's growth to a follower's socket.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Point {
        /// The watcher's thread returned from `poll`: inotify is readable.
        Readable,
        /// The watcher read the events.
        Read,
        /// The watcher published the new lengths (after `fstat` and the fingerprint read).
        Published,
        /// The watcher woke every waiting task.
        Notified,
        /// A task starts being polled (inline on the watcher's thread, or on the executor).
        Polled,
        /// A follower calls `sendfile`.
        SendStart,
        /// That `sendfile` returned.
        SendEnd,
    }

    impl Point {
        /// The name written to the trace file.
        pub fn name(self) -> &'static str {
            match self {
                Point::Readable => "readable",
                Point::Read => "read",
                Point::Published => "published",
                Point::Notified => "notified",
                Point::Polled => "polled",
                Point::SendStart => "send_start",
                Point::SendEnd => "send_end",
            }
        }
    }

    /// Records that `point` was reached now.
    #[cfg(not(feature = "latency-trace"))]
    #[inline(always)]
    pub fn mark(point: Point) {
        let _ = point;
    }

    /// Records that `point` was reached now.
    #[cfg(feature = "latency-trace")]
    pub fn mark(point: Point) {
        use std::io::Write;
        use std::sync::{Mutex, OnceLock};
        static MARKS: Mutex<Vec<(Point, u64)>> = Mutex::new(Vec::new());
        static WRITER: OnceLock<bool> = OnceLock::new();
        let on = *WRITER.get_or_init(|| {
            let Some(path) = std::env::var_os("TAILSRV_TRACE") else {
                return false;
            };
            let Ok(mut file) = std::fs::File::create(&path) else {
                return false;
            };
            std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let marks = std::mem::take(&mut *MARKS.lock().unwrap());
                let mut out = String::new();
                for (p, t) in marks {
                    out += &format!("{} {t}\n", p.name());
                }
                let _ = file.write_all(out.as_bytes());
            });
            true
        });
        if on {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
            MARKS.lock().unwrap().push((point, ns));
        }
    }
}
