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
use crate::segmented::{self, Active};
use crate::watermark::Watermark;
use crate::writer::{FileWriter, Opened, Settings};

/// Opens `path` for writing (created if absent), takes its exclusive lock, recovers its
/// tail with the journal at `journal`, rewrites the journal, and starts its writer. With
/// `segment`, `path` is a segmented log's active segment: only it is checked, and offsets
/// are the log's (see [`crate::segmented`]).
pub fn open_writer(
    path: &Path,
    journal: &Path,
    watermark: Option<&Path>,
    settings: &Settings,
    fatal: async_channel::Sender<io::Error>,
    check: impl FnOnce(&File) -> io::Result<()>,
    segment: Option<Active>,
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
    // The file's first byte in the log, and the messages before it; the journal's offsets
    // are the log's, the restart check's the file's.
    let (base, before) = segment
        .as_ref()
        .map_or((0, 0), |s| (s.name().base, s.name().first_message));
    let local = segmented::Local::of(&loaded, base);
    // A crash leaves at most one group: bounded by the queue and one request.
    let max_cut = settings.max_pending + settings.max_request + settings.max_message + (1 << 20);
    // A marker is read whatever the settings: it is how the last run described its groups.
    let marked = group::marked_end(&file).map_err(|e| ctx("recovering", e))?;
    let verified = match marked {
        Some(end) => Some(end),
        None => group::verified_end(&file, &local.groups, local.checkpoint, max_cut)
            .map_err(|e| ctx("recovering", e))?,
    };
    let r = logfile::cut_torn_tail(
        &file,
        settings.framing,
        settings.max_message,
        &local.batches,
        max_cut,
        verified,
    )
    .map_err(|e| ctx("recovering", e))?;
    let (end, count) = (base + r.end, before + r.count);
    let producers = loaded.producers(end);
    // In `data` mode, where the file system has extended attributes, the last group is
    // described by one on the file (synced with the data: one sync per group); elsewhere by
    // journal records.
    // The attribute saves a second sync per group, which only `data` mode has; elsewhere a
    // journal record (a small write, no sync) is cheaper than setting it.
    let marker = if !settings.xattr || !settings.sync.acks_after_sync() {
        // A marker left by an earlier run is removed below, once the new checkpoint is on
        // disk (it would be stale once groups are journalled).
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
    let journal = dedupe::Journal::rewrite(journal, &producers, end)?;
    if !marker {
        // Not before: until the checkpoint above was on disk, an earlier `data` run's marker
        // was all that described its groups, and a crash in between (a restart in another
        // `--sync` mode) would have cut them all back to the old checkpoint.
        let _ = rustix::fs::fremovexattr(&file, group::MARKER);
    }
    log::info!(
        path:% = path.display(), offset = end, messages = count, cut = r.cut;
        "writing {} from byte {} (message {}), checked in {:.3}s",
        path.display(), end, count, started.elapsed().as_secs_f64()
    );
    let watermark = match watermark {
        // Only what is on disk (synced above) is published.
        Some(w) => Some(Watermark::create(w, end)?),
        None => None,
    };
    // A segmented log's writer is named by its directory: its segments come and go.
    let name = segment.as_ref().map_or(path, Active::dir).to_owned();
    let opened = Opened {
        file,
        journal,
        end,
        count,
        producers,
        watermark,
        marker,
        base,
        segment,
    };
    FileWriter::start(&name, opened, settings.clone(), fatal)
}
