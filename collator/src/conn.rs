//! One producer's connection: read request headers and bodies, validate and frame them, hand
//! them to the file's writer, and answer in request order.
//!
//! Two tasks per connection. The reader parses a request, reads its body, checks it
//! ([`proto::framing::check_message`], [`proto::framing::check_batch`]) and submits it; what
//! it gets back (an answer, or a channel the writer will answer on) goes into a queue that
//! the answerer drains in order, writing one line per request. So requests pipeline freely
//! and the answers still come back in the order asked.
//!
//! **Back-pressure and memory:** a body is read only once its length fits in the collator's
//! body budget ([`crate::budget`], `--max-pending` bytes for all connections and files, held until
//! the body is written), and the reader also stops while this connection has more than its
//! share of bytes in flight ([`conn_limit`]) or while the file's queue is full, so a fast
//! producer fills its socket buffers, not the collator's memory. A connection's read buffer
//! starts at 4 KiB and grows to 64 KiB only while reads fill it; its answer queue grows in
//! small blocks.
//!
//! **Bad input:** a body that does not match its header is refused and the connection goes
//! on (the body's bytes are consumed either way, so the next header is where it should be).
//! An unparseable header, one over [`MAX_HEADER`], one that does not complete in time, or a
//! body that stalls (nothing for `--header-timeout` seconds) gets one error line, after the
//! answers owed, and the connection is closed. A body over the limit is answered `too-big`
//! at once, then skipped.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use event_listener::Event;
use futures_lite::future;
use proto::collate::{Answer, Command, Request, MAX_HEADER};
use proto::framing::{check_batch, check_message};
use proto::{Code, Refusal};
use shared::{net, rt};

use crate::ctx::Ctx;
use crate::writer::{FileWriter, Submitted};

/// Read buffer per connection (at most; it starts at [`SMALL`] and grows while reads fill
/// it); also the largest group of lines written at once in line mode.
const BUF: usize = 64 << 10;

/// A connection's first read buffer: idle connections cost little.
const SMALL: usize = 4 << 10;

/// Bytes one connection may have in flight: a quarter of the file's queue, at least one
/// request.
fn conn_limit(ctx: &Ctx) -> u64 {
    (ctx.settings.max_pending / 4).max(ctx.settings.max_request)
}

/// Answers one connection may have queued before its reader waits (pipelined requests). The
/// queue is unbounded underneath and grows in small blocks, so an idle connection does not
/// pay for the room a pipelining one needs.
const MAX_ANSWERS: u64 = 1024;

/// Queues an answer for the answerer, waiting while [`MAX_ANSWERS`] are queued.
async fn queue(
    tx: &async_channel::Sender<Pending>,
    inflight: &InFlight,
    p: Pending,
) -> Result<(), ()> {
    loop {
        let listener = inflight.freed.listen();
        if inflight.answers.load(Ordering::SeqCst) < MAX_ANSWERS {
            break;
        }
        listener.await;
    }
    inflight.answers.fetch_add(1, Ordering::SeqCst);
    tx.send(p).await.map_err(|_| ())
}

/// What the answerer writes next.
enum Pending {
    Ready(Vec<u8>),
    Wait(async_channel::Receiver<crate::writer::Reply>, u64),
}

/// Bytes in flight on this connection.
#[derive(Default)]
struct InFlight {
    bytes: AtomicU64,
    /// Answers queued for the answerer (at most [`MAX_ANSWERS`]).
    answers: AtomicU64,
    freed: Event,
}

/// The connection's input, buffered: headers, bodies and lines are cut from it.
struct Input {
    sock: Arc<Async<TcpStream>>,
    ctx: Arc<Ctx>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum HeaderError {
    Eof,
    Refused(Refusal),
}

impl Input {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more; `Ok(0)` at the producer's FIN, an `Interrupted` error once the collator
    /// is shutting down (nothing more is read: what was read is answered, then the
    /// connection is closed).
    async fn fill(&mut self) -> io::Result<usize> {
        let stopping = self.ctx.stopping();
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > BUF {
                // A long line made it grow: give the memory back.
                self.buf = vec![0; BUF];
            }
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; SMALL];
        } else if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let (buf, end) = (&mut self.buf, self.end);
        let free = buf.len() - end;
        let read = self.sock.read_with(|s| (&*s).read(&mut buf[end..]));
        let stop = async {
            stopping.await;
            Err(io::ErrorKind::Interrupted.into())
        };
        let n = future::or(read, stop).await?;
        self.end += n;
        if n == free && self.buf.len() < BUF {
            // Reads fill it: a busy producer gets the full buffer.
            self.buf.resize(BUF, 0);
        }
        Ok(n)
    }

    /// [`Input::fill`], or a `TimedOut` error if no byte comes within `stall`.
    async fn fill_within(&mut self, stall: Duration) -> io::Result<usize> {
        let deadline = async {
            Timer::after(stall).await;
            Err(io::ErrorKind::TimedOut.into())
        };
        future::or(self.fill(), deadline).await
    }

    /// The next header line (without `\n`), complete within `timeout`.
    async fn header(&mut self, timeout: Duration) -> Result<Vec<u8>, HeaderError> {
        let read = async {
            loop {
                if let Some(i) = memchr::memchr(b'\n', self.buffered()) {
                    let line = self.buffered()[..i].to_vec();
                    self.start += i + 1;
                    return Ok(line);
                }
                if self.end - self.start >= MAX_HEADER {
                    return Err(HeaderError::Refused(Refusal::new(
                        Code::TooLong,
                        format!("request header longer than {MAX_HEADER} bytes without a newline"),
                    )));
                }
                match self.fill().await {
                    Ok(0) | Err(_) => return Err(HeaderError::Eof),
                    Ok(_) => {}
                }
            }
        };
        let deadline = async {
            Timer::after(timeout).await;
            Err(HeaderError::Refused(Refusal::new(
                Code::Timeout,
                format!(
                    "no complete request header within {}s",
                    timeout.as_secs_f64()
                ),
            )))
        };
        future::or(read, deadline).await
    }

    /// Waits until at least one byte is buffered; false at FIN.
    async fn wait_byte(&mut self) -> bool {
        while self.start == self.end {
            match self.fill().await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    /// Exactly `n` bytes of body, read straight into it past what is buffered; a
    /// `TimedOut` error if the producer sends nothing for `stall`.
    async fn exact(&mut self, n: u64, stall: Duration) -> io::Result<Vec<u8>> {
        let n = n as usize;
        let mut out = vec![0u8; n];
        let mut got = n.min(self.end - self.start);
        out[..got].copy_from_slice(&self.buf[self.start..self.start + got]);
        self.start += got;
        while got < n {
            let stopping = self.ctx.stopping();
            let dst = &mut out[got..];
            let read = self.sock.read_with(|s| (&*s).read(dst));
            let stop = async {
                stopping.await;
                Err(io::ErrorKind::Interrupted.into())
            };
            let deadline = async {
                Timer::after(stall).await;
                Err(io::ErrorKind::TimedOut.into())
            };
            match future::or(read, future::or(stop, deadline)).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                r => got += r,
            }
        }
        Ok(out)
    }

    /// Reads and drops `n` bytes (the body of a refused request).
    async fn skip(&mut self, mut n: u64, stall: Duration) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end && self.fill_within(stall).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = n.min((self.end - self.start) as u64);
            self.start += take as usize;
            n -= take;
        }
        Ok(())
    }
}

/// The refusal for a body that stopped coming.
fn stalled(len: u64, stall: Duration) -> Refusal {
    Refusal::new(
        Code::Timeout,
        format!(
            "the body of {len} bytes stalled: nothing for {}s",
            stall.as_secs_f64()
        ),
    )
}

/// Serves one producer until it hangs up, sends a bad header, or the socket fails.
pub async fn serve(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let Some(sock) = net::register(stream, peer) else {
        return;
    };
    let sock = Arc::new(sock);
    let inflight = Arc::new(InFlight::default());
    let (tx, rx) = async_channel::unbounded::<Pending>();
    let answerer = rt::spawn(answer_loop(sock.clone(), rx, inflight.clone()));
    let _live = ctx.connection();
    let mut input = Input {
        sock: sock.clone(),
        ctx: ctx.clone(),
        buf: Vec::new(),
        start: 0,
        end: 0,
    };
    let last = read_loop(&ctx, &mut input, &tx, &inflight).await;
    if let Some(refusal) = &last {
        log::debug!(client:% = peer; "closing: {refusal}");
        let _ = queue(&tx, &inflight, Pending::Ready(refusal.render())).await;
    }
    drop(tx);
    answerer.await;
    if last.is_some() || ctx.is_stopping() {
        // Drain the producer's input so that closing sends no reset, which could destroy
        // answers it has not read yet.
        net::finish(&sock, b"", net::LINGER).await;
    } else {
        let _ = sock.get_ref().shutdown(std::net::Shutdown::Write);
    }
}

/// Reads requests until FIN (`None`) or a header error (`Some`, to be sent before closing).
async fn read_loop(
    ctx: &Ctx,
    input: &mut Input,
    tx: &async_channel::Sender<Pending>,
    inflight: &InFlight,
) -> Option<Refusal> {
    let settings = &ctx.settings;
    let mut first = true;
    loop {
        // The first header must come within the timeout; later ones may be a long time
        // coming (a producer idles between requests), the timeout runs from their first byte.
        if !first && !input.wait_byte().await {
            return None;
        }
        let line = match input.header(ctx.header_timeout).await {
            Ok(l) => l,
            Err(HeaderError::Eof) => return None,
            Err(HeaderError::Refused(r)) => return Some(r),
        };
        first = false;
        if proto::trim_line(&line).is_empty() {
            continue; // A blank line from a person at nc.
        }
        let request = match Request::parse(ctx.mode(), &line) {
            Ok(r) => r,
            Err(r) => return Some(r),
        };
        let send = |p: Pending| async {
            let _ = queue(tx, inflight, p).await;
        };
        let refuse = |r: Refusal| Pending::Ready(r.render());
        match request.command {
            Command::End => {
                let end = match ctx.writer(request.path.as_deref(), false).await {
                    Ok(Some(w)) => Answer::End(w.end()).render(),
                    Ok(None) => Answer::End(ctx.empty_end()).render(),
                    Err(r) => r.render(),
                };
                send(Pending::Ready(end)).await;
            }
            Command::Msg { len } | Command::Batch { len, .. } => {
                let limit = match request.command {
                    Command::Msg { .. } => settings.max_message,
                    _ => settings.max_request,
                };
                let stall = ctx.header_timeout;
                if len > limit {
                    // Answered before the body is skipped: a producer that sends less (or
                    // hangs up) still learns why.
                    send(refuse(Refusal::new(
                        Code::TooBig,
                        format!("a body of {len} bytes is over the limit of {limit}"),
                    )))
                    .await;
                    match input.skip(len, stall).await {
                        Ok(()) => continue,
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Some(stalled(len, stall))
                        }
                        Err(_) => return None,
                    }
                }
                // The body is read only once it fits in the memory budget.
                let stop = async {
                    ctx.stopping().await;
                    None
                };
                let permit =
                    future::or(async { Some(ctx.budget.acquire(len).await) }, stop).await?;
                let body = match input.exact(len, stall).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        return Some(stalled(len, stall))
                    }
                    Err(_) => return None,
                };
                let framed = match request.command {
                    Command::Msg { .. } => {
                        check_message(settings.framing, &body, settings.max_message).map(|()| {
                            let mut out = Vec::with_capacity(body.len() + 10);
                            settings.framing.encode(&body, &mut out);
                            (out, 1)
                        })
                    }
                    Command::Batch { count, .. } => {
                        check_batch(settings.framing, &body, count, settings.max_message)
                            .map(|()| (body, count))
                    }
                    _ => unreachable!(),
                };
                let (data, count) = match framed {
                    Ok(f) => f,
                    Err(r) => {
                        send(refuse(r)).await;
                        continue;
                    }
                };
                let writer = match ctx.writer(request.path.as_deref(), true).await {
                    Ok(Some(w)) => w,
                    Ok(None) => unreachable!("created"),
                    Err(r) => {
                        send(refuse(r)).await;
                        continue;
                    }
                };
                wait_for_room(ctx, inflight).await;
                let hold: Box<dyn Send> = Box::new(permit);
                send(submit(&writer, data, count, request.producer, Some(hold), inflight).await)
                    .await;
            }
            Command::Lines => {
                let writer = match ctx.writer(request.path.as_deref(), true).await {
                    Ok(Some(w)) => w,
                    Ok(None) => unreachable!("created"),
                    Err(r) => return Some(r),
                };
                lines(ctx, input, &writer, tx, inflight).await;
                return None;
            }
        }
    }
}

async fn wait_for_room(ctx: &Ctx, inflight: &InFlight) {
    let limit = conn_limit(ctx);
    loop {
        let listener = inflight.freed.listen();
        if inflight.bytes.load(Ordering::SeqCst) < limit {
            return;
        }
        listener.await;
    }
}

async fn submit(
    writer: &FileWriter,
    data: Vec<u8>,
    count: u64,
    producer: Option<proto::collate::Producer>,
    hold: Option<Box<dyn Send>>,
    inflight: &InFlight,
) -> Pending {
    let len = data.len() as u64;
    match writer.submit(data, count, producer, hold).await {
        Submitted::Done(Ok(ack)) => Pending::Ready(Answer::Ok(ack).render()),
        Submitted::Done(Err(r)) => Pending::Ready(r.render()),
        Submitted::Wait(rx) => {
            inflight.bytes.fetch_add(len, Ordering::SeqCst);
            Pending::Wait(rx, len)
        }
    }
}

/// Line mode: every `\n` line is a message, each read's complete lines one group, until FIN
/// (an unterminated last line is a message too). A line over `--max-message` is refused and
/// skipped up to its newline.
async fn lines(
    ctx: &Ctx,
    input: &mut Input,
    writer: &FileWriter,
    tx: &async_channel::Sender<Pending>,
    inflight: &InFlight,
) {
    let settings = &ctx.settings;
    let mut discarding = false;
    let mut eof = false;
    loop {
        // Lines that came with the header (or a previous read) are written before reading.
        if memchr::memchr(b'\n', input.buffered()).is_none() {
            eof = match input.fill().await {
                Ok(n) => n == 0,
                // Shutting down or a broken socket: the unterminated line is not a message.
                Err(_) => return,
            };
        }
        let data = input.buffered();
        let complete = if eof {
            data.len()
        } else {
            memchr::memrchr(b'\n', data).map_or(0, |i| i + 1)
        };
        let mut group = Vec::with_capacity(complete + complete / 8);
        let mut count = 0u64;
        let mut refusals = Vec::new();
        for line in data[..complete].split(|&b| b == b'\n') {
            if std::mem::take(&mut discarding) || line.is_empty() {
                continue;
            }
            match check_message(settings.framing, line, settings.max_message) {
                Ok(()) => {
                    settings.framing.encode(line, &mut group);
                    count += 1;
                }
                Err(r) => refusals.push(r),
            }
        }
        // `split` yields an empty last piece after a final `\n`: nothing to discard there.
        input.start += complete;
        if !eof && input.end - input.start > settings.max_message as usize + 1 {
            refusals.push(Refusal::new(
                Code::TooBig,
                format!("a line over the limit of {} bytes", settings.max_message),
            ));
            input.start = input.end;
            discarding = true;
        }
        if count > 0 {
            wait_for_room(ctx, inflight).await;
            let permit: Box<dyn Send> = Box::new(ctx.budget.acquire(group.len() as u64).await);
            let p = submit(writer, group, count, None, Some(permit), inflight).await;
            if queue(tx, inflight, p).await.is_err() {
                return;
            }
        }
        for r in refusals {
            if queue(tx, inflight, Pending::Ready(r.render()))
                .await
                .is_err()
            {
                return;
            }
        }
        if eof {
            return;
        }
    }
}

/// Writes the answers in request order until the reader is done and every answer is out.
async fn answer_loop(
    sock: Arc<Async<TcpStream>>,
    rx: async_channel::Receiver<Pending>,
    inflight: Arc<InFlight>,
) {
    let mut out = Vec::with_capacity(4096);
    let mut broken = false;
    while let Ok(p) = rx.recv().await {
        inflight.answers.fetch_sub(1, Ordering::SeqCst);
        inflight.freed.notify(usize::MAX);
        let line = match p {
            Pending::Ready(line) => line,
            Pending::Wait(reply, len) => {
                if reply.is_empty() && !out.is_empty() {
                    // Do not hold answers back while waiting for a later one.
                    if !broken && write_all(&sock, &out).await.is_err() {
                        broken = true;
                    }
                    out.clear();
                }
                let r = reply.recv().await;
                inflight.bytes.fetch_sub(len, Ordering::SeqCst);
                inflight.freed.notify(usize::MAX);
                match r {
                    Ok(Ok(ack)) => Answer::Ok(ack).render(),
                    Ok(Err(refusal)) => refusal.render(),
                    Err(_) => Refusal::new(Code::Io, "the writer stopped").render(),
                }
            }
        };
        out.extend_from_slice(&line);
        // Answers that are ready together go out in one write.
        if rx.is_empty() || out.len() > 64 << 10 {
            if !broken && write_all(&sock, &out).await.is_err() {
                broken = true;
            }
            out.clear();
        }
    }
    if !out.is_empty() && !broken {
        let _ = write_all(&sock, &out).await;
    }
}

async fn write_all(sock: &Async<TcpStream>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = sock.write_with(|s| (&*s).write(buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}
