//! Serving a segmented log (`logfile::segments`) as one log: global offsets, the stream
//! crossing segment boundaries, refusals below the log start.
//!
//! Why apart from `client`: a single file's follower is one file, one watch and one epoch,
//! and its state is kept as small as it is (`the_serve_future_stays_small`). A segmented
//! log's follower walks from segment to segment; its state and loop live here, boxed, so a
//! single file's follower carries none of it.
//!
//! - Placement ([`start`]): `N` is a global offset; below the log start it is refused with
//!   `error: gone: ...` naming the start; `-N` counts back from the global end (never below
//!   the start); `last N lines` scans back across segments. ` ok` is answered `ok N LEN
//!   [START]`: LEN the global end, START the log start when it is not 0.
//! - Following ([`follow`]): the active segment is followed exactly as a single file (its
//!   `FileWatch`: growth, epoch, short reads), and also waits for the directory to change.
//!   Once a later segment exists the active one is sealed: the follower sends it up to its
//!   sealed length (next base − base) and moves on to the segment holding its next byte. A
//!   sealed segment is read from the file the table shares ([`shared::segments`]); a
//!   follower holds only its current segment open, so a segment retention deletes under it
//!   is still finished. If the next segment was deleted before the follower got there, the
//!   connection is closed (the client reconnects and is told `gone`); a sealed segment that
//!   is not as long as its name says closes it with an error, never with wrong bytes.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use async_io::Async;
use futures_lite::{future, AsyncWriteExt};
use proto::request::{Confirmation, StreamRequest};
use proto::{Code, Refusal, Start};
use shared::net;
use shared::segments::{Piece, SegmentedLog};
use shared::watch::FileWatch;

use crate::client::End;
use crate::sendfile::{send_range, Cursor, Sent};

/// Everything a segmented log's follower keeps while it streams.
pub(crate) struct LogStreaming {
    log: SegmentedLog,
    at: At,
    /// Directory mode: the path as the client sent it, for the log.
    path: Option<Box<str>>,
}

/// The segment a follower reads now, with its offset in that segment's file.
enum At {
    /// The active segment (it may have been sealed since).
    Active { base: u64, cur: Cursor<FileWatch> },
    /// A sealed segment, global bytes `base..end`.
    Sealed {
        base: u64,
        end: u64,
        cur: Cursor<Arc<File>>,
    },
}

impl At {
    /// A cursor at global `offset` in `piece` (the piece holding it).
    fn new(piece: Piece, offset: u64) -> At {
        match piece {
            Piece::Active { base, watch } => {
                let epoch = watch.epoch();
                At::Active {
                    base,
                    cur: Cursor {
                        watch,
                        offset: offset - base,
                        epoch,
                    },
                }
            }
            Piece::Sealed { base, end, file } => At::Sealed {
                base,
                end,
                cur: Cursor {
                    watch: file,
                    offset: offset - base,
                    epoch: 0,
                },
            },
        }
    }

    /// The next global byte to send.
    fn offset(&self) -> u64 {
        match self {
            At::Active { base, cur } => base + cur.offset,
            At::Sealed { base, cur, .. } => base + cur.offset,
        }
    }
}

impl LogStreaming {
    pub(crate) fn shown(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }

    /// The next global byte to send.
    pub(crate) fn offset(&self) -> u64 {
        self.at.offset()
    }
}

/// What a client is told when the log cannot be followed or placed in: its kind, not our
/// paths (those are in the server's log).
pub(crate) fn refusal(e: &io::Error) -> Refusal {
    match e.kind() {
        io::ErrorKind::InvalidData => Refusal::new(
            Code::Io,
            "the segmented log's segments do not match their names (see the server's log)",
        ),
        _ => shared::watch::follow_refusal(e),
    }
}

/// The `gone` refusal for a start below the log start.
fn below_start(offset: u64, start: u64) -> Refusal {
    Refusal::new(
        Code::Gone,
        format!(
            "byte {offset} was deleted by retention: the log starts at byte {start} \
             (ask for {start} or later; `-0 ok` answers `ok N LEN START` without a refusal)"
        ),
    )
}

/// Places the client in the log (refusing a start below it) and confirms if asked. `shown`:
/// directory mode, the path as sent (refusals name it).
pub(crate) async fn start(
    sock: &Async<TcpStream>,
    peer: SocketAddr,
    log: SegmentedLog,
    req: StreamRequest,
    shown: Option<&str>,
) -> Option<Box<LogStreaming>> {
    let placed = place(&log, req.start).map_err(|e| match e {
        Placing::Refused(r) => r,
        Placing::Failed(e) => {
            log::warn!(client:% = peer, path = shown.unwrap_or(""); "cannot place in the segmented log: {e}");
            refusal(&e)
        }
    });
    let (at, confirmation) = match placed {
        Ok(placed) => placed,
        Err(why) => {
            let refusal = match shown {
                Some(shown) => Refusal::new(why.code, format!("{shown:?}: {}", why.reason)),
                None => why,
            };
            log::debug!(client:% = peer, path = shown.unwrap_or(""); "refused: {refusal}");
            net::refuse(sock, &refusal).await;
            return None;
        }
    };
    if req.confirm {
        let mut writer = sock;
        if writer.write_all(&confirmation.render()).await.is_err() {
            return None;
        }
    }
    Some(Box::new(LogStreaming {
        log,
        at,
        path: shown.map(Into::into),
    }))
}

/// Why a client could not be placed.
enum Placing {
    Refused(Refusal),
    Failed(io::Error),
}

impl From<io::Error> for Placing {
    fn from(e: io::Error) -> Placing {
        Placing::Failed(e)
    }
}

/// Resolves `start` against the log as it is now.
fn place(log: &SegmentedLog, start: Start) -> Result<(At, Confirmation), Placing> {
    // The active segment's epoch before the length the start is resolved against (as for a
    // single file: a truncation in between is noticed by the first wait).
    let active = log.piece(u64::MAX)?;
    let bounds = log.bounds()?;
    let offset = match start {
        Start::Byte(n) if n < bounds.start => {
            return Err(Placing::Refused(below_start(n, bounds.start)))
        }
        Start::Byte(n) => n,
        Start::FromEnd(n) => bounds.end.saturating_sub(n).max(bounds.start),
        Start::LastLines(_) => {
            let held = bounds.end - bounds.start;
            let read = |buf: &mut [u8], at: u64| log.read_at(buf, bounds.start + at);
            start
                .resolve_in(held, read)
                .map_or(bounds.end, |at| bounds.start + at)
        }
    };
    let piece = match (active, log.piece(offset)?) {
        (_, None) => return Err(Placing::Refused(below_start(offset, bounds.start))),
        // Still the active segment seen first: keep the epoch read before the length.
        (Some(a @ Piece::Active { .. }), Some(p @ Piece::Active { .. }))
            if a.base() == p.base() =>
        {
            a
        }
        (_, Some(p)) => p,
    };
    let confirmation = Confirmation {
        offset,
        len: bounds.end,
        start: bounds.start,
    };
    Ok((At::new(piece, offset), confirmation))
}

/// A placed client's life: follow the log until the stream ends, then say why in the log.
pub(crate) async fn serve(sock: Async<TcpStream>, peer: SocketAddr, mut s: Box<LogStreaming>) {
    log::debug!(client:% = peer, path = s.shown(), offset = s.offset(); "client connected");
    let end = follow(&sock, &mut s).await;
    crate::client::report(peer, s.shown(), s.offset(), &end);
}

/// Streams the log from where the client was placed until it leaves, across segments.
async fn follow(sock: &Async<TcpStream>, at: &mut LogStreaming) -> End {
    future::or(stream(sock, at), crate::client::hung_up(sock)).await
}

/// The sending half of [`follow`].
async fn stream(sock: &Async<TcpStream>, s: &mut LogStreaming) -> End {
    let LogStreaming { log, at, .. } = s;
    loop {
        match at {
            At::Active { base, cur } => {
                // Read before asking whether the segment is sealed: a roll after the answer
                // changes it, and the wait below ends.
                let seen = log.changes();
                let sealed = match log.sealed_end(*base) {
                    Ok(sealed) => sealed,
                    Err(e) => return End::Unreadable(e),
                };
                if let Some(end) = sealed {
                    // Sealed: its length is known from the names, whatever the watch has
                    // published yet.
                    match send_range(sock, cur, end - *base).await {
                        Ok(Sent::All) => {}
                        Ok(Sent::Truncated) if cur.watch.epoch() != cur.epoch => {
                            return End::Truncated
                        }
                        Ok(Sent::Truncated) => {
                            let what = cur.watch.path().display().to_string();
                            return short_segment(&what, end - *base);
                        }
                        Ok(Sent::Unreadable(e)) => return End::Unreadable(e),
                        Err(e) => return End::Socket(e),
                    }
                } else {
                    let (watch, offset, epoch) = (&cur.watch, cur.offset, cur.epoch);
                    let grew = watch.wait_until(|w| w.len() > offset || w.epoch() != epoch);
                    future::or(grew, log.wait_changed(seen)).await;
                    // The length before the epoch, as for a single file.
                    let limit = watch.len();
                    if watch.epoch() != epoch {
                        return End::Truncated;
                    }
                    if log.changes() != seen {
                        continue; // perhaps sealed: ask again
                    }
                    match send_range(sock, cur, limit).await {
                        Ok(Sent::All) => continue,
                        Ok(Sent::Truncated) => return End::Truncated,
                        Ok(Sent::Unreadable(e)) => return End::Unreadable(e),
                        Err(e) => return End::Socket(e),
                    }
                }
            }
            At::Sealed { base, end, cur } => match send_range(sock, cur, *end - *base).await {
                Ok(Sent::All) => {}
                Ok(Sent::Truncated) => {
                    let what = format!("at byte {base} of {}", log.dir().display());
                    return short_segment(&what, *end - *base);
                }
                Ok(Sent::Unreadable(e)) => return End::Unreadable(e),
                Err(e) => return End::Socket(e),
            },
        }
        // The segment is done: on to the one holding the next byte.
        let offset = at.offset();
        match log.piece(offset) {
            Ok(Some(piece)) => *at = At::new(piece, offset),
            Ok(None) => return End::Behind(log.bounds().map_or(offset, |b| b.start)),
            Err(e) => return End::Unreadable(e),
        }
    }
}

/// A sealed segment ended before its sealed length: it changed, and its bytes cannot be
/// trusted any more.
fn short_segment(what: &str, len: u64) -> End {
    End::Unreadable(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "sealed segment {what} is shorter than the {len} bytes its name says: a sealed \
             segment must never change"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a segmented log's follower keeps beyond a file follower's serve future (which
    /// `the_serve_future_stays_small` bounds): its boxed follow loop, holding its socket and
    /// its boxed state. Printed, and bounded so that growth is noticed.
    #[test]
    fn a_log_follower_stays_small() {
        let tmp = std::env::temp_dir().join(format!("tailsrv-seg-size-{}", std::process::id()));
        let dir = tmp.join("log");
        logfile::segments::Log::create(&dir, &logfile::segments::Marker::default()).unwrap();
        let watcher = shared::watch::Watcher::new().unwrap();
        let log = SegmentedLog::open(&watcher.follower(), &dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        let (at, _) = match place(&log, Start::Byte(0)) {
            Ok(placed) => placed,
            Err(_) => panic!("placing at 0 failed"),
        };
        let state = Box::new(LogStreaming {
            log,
            at,
            path: None,
        });
        let future = serve(Async::new(stream).unwrap(), peer, state);
        let (loop_size, state_size) = (
            std::mem::size_of_val(&future),
            std::mem::size_of::<LogStreaming>(),
        );
        eprintln!("log follower: {loop_size} bytes of loop, {state_size} of state");
        assert!(loop_size + state_size <= 1024, "{loop_size} + {state_size}");
        drop(future);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
