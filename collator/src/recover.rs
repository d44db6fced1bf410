//! The restart check, before the first write to a file and under its lock: find where its
//! last complete write group ended and cut whatever a crash left after it, then start the
//! file's writer from there.
//!
//! The cut is [`logfile`]'s ([`logfile::cut_torn_tail`], the same for every writer of a framed
//! log): this module gives it what only the collator knows. The last group's end comes from
//! the file's extended attribute ([`group::marked_end`]) or, without one, from the journal's
//! `g` records ([`group::verified_end`]: the groups in the last `max_cut` bytes are checked);
//! the journal's `b` records of batches let a file of an older collator (no attribute, no `g`
//! records) be cut at a half-written batch. A crash leaves at most one group, so `max_cut` is
//! the queue plus one request: a longer torn tail is refused (wrong `--framing`, or a file
//! someone else wrote). Then the producers the journal remembers up to the cut are kept, the
//! journal is rewritten from them, and the group description the next run will read is
//! chosen: the attribute in `data` mode where the file system has them, else journal records.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Instant;

use logfile::group;

use crate::dedupe;
use crate::watermark::Watermark;
use crate::writer::{FileWriter, Opened, Settings};

/// Opens `path` for writing (created if absent), takes its exclusive lock, recovers its
/// tail with the journal at `journal`, rewrites the journal, and starts its writer.
pub fn open_writer(
    path: &Path,
    journal: &Path,
    watermark: Option<&Path>,
    settings: &Settings,
    fatal: async_channel::Sender<io::Error>,
    check: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<FileWriter> {
    let ctx = |what: &str, e: io::Error| logfile::context(path, what, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| ctx("opening", e))?;
    check(&file)?;
    logfile::lock_exclusive(&file, path, "collator")?;
    let started = Instant::now();
    let loaded = dedupe::load(journal)?;
    // A crash leaves at most one group: bounded by the queue and one request.
    let max_cut = settings.max_pending + settings.max_request + settings.max_message + (1 << 20);
    // A marker is read whatever the settings: it is how the last run described its groups.
    let marked = group::marked_end(&file).map_err(|e| ctx("recovering", e))?;
    let verified = match marked {
        Some(end) => Some(end),
        None => group::verified_end(&file, &loaded.groups, loaded.checkpoint, max_cut)
            .map_err(|e| ctx("recovering", e))?,
    };
    let r = logfile::cut_torn_tail(
        &file,
        settings.framing,
        settings.max_message,
        &loaded.batches,
        max_cut,
        verified,
    )
    .map_err(|e| ctx("recovering", e))?;
    let producers = loaded.producers(r.end);
    // In `data` mode, where the file system has extended attributes, the last group is
    // described by one on the file (synced with the data: one sync per group); elsewhere by
    // journal records.
    // The attribute saves a second sync per group, which only `data` mode has; elsewhere a
    // journal record (a small write, no sync) is cheaper than setting it.
    let marker = if !settings.xattr || !settings.sync.acks_after_sync() {
        // A marker left by an earlier run would be stale once groups are journalled.
        let _ = rustix::fs::fremovexattr(&file, group::MARKER);
        false
    } else {
        match group::write_marker(&file, r.end, r.end, 0) {
            Ok(()) => true,
            Err(e) => {
                log::info!(
                    path:% = path.display();
                    "no extended attribute on {} ({e}): write groups are journalled instead \
                     (a second fdatasync per group, in parallel)",
                    path.display()
                );
                false
            }
        }
    };
    // The checkpoint the new journal starts with must be on disk, the cut included.
    file.sync_all().map_err(|e| ctx("syncing", e))?;
    let journal = dedupe::Journal::rewrite(journal, &producers, r.end)?;
    log::info!(
        path:% = path.display(), offset = r.end, messages = r.count, cut = r.cut;
        "writing {} from byte {} (message {}), checked in {:.3}s",
        path.display(), r.end, r.count, started.elapsed().as_secs_f64()
    );
    let watermark = match watermark {
        // Only what is on disk (synced above) is published.
        Some(w) => Some(Watermark::create(w, r.end)?),
        None => None,
    };
    let opened = Opened {
        file,
        journal,
        end: r.end,
        count: r.count,
        producers,
        watermark,
        marker,
    };
    FileWriter::start(path, opened, settings.clone(), fatal)
}
