//! One socket write per turn of an HBONE connection, however many streams had frames.
//!
//! h2 flushes its codec after every DATA frame of 256 bytes or more, and tokio-rustls turns
//! each flush into a TLS record and a `writev`. A waypoint turn that answers five requests
//! would make five system calls, each also running the peer's receive path on this CPU
//! (loopback and veth deliver inline). So h2 writes into a [`Corked`] buffer, whose flush
//! is a no-op, and the task driving the connection writes the buffer out once h2's poll
//! returns ([`Drain`]). Everything h2 writes happens inside that poll: stream handles only
//! queue frames and wake the connection's task.
//!
//! Writes of [`PASS_THROUGH`] bytes or more (bulk transfers' frames) skip the buffer once
//! it is empty, so they cost no extra copy. The buffer holds at most [`LIMIT`] bytes: past
//! that h2's write waits for the socket, as it would without the cork.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this long go straight to the socket when nothing is buffered.
pub const PASS_THROUGH: usize = 16 * 1024;
/// The most a connection buffers between drains.
pub const LIMIT: usize = 64 * 1024;
/// A drained buffer keeps its allocation up to this size, so request-sized turns reuse it;
/// a bigger one (after a burst) is freed rather than held by an idle connection.
const KEEP: usize = 16 * 1024;

/// Wraps `io`: h2 gets the [`Corked`] half, the connection's driver the [`Drain`] half.
pub fn cork<IO>(io: IO) -> (Corked<IO>, Drain<IO>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: Vec::new(),
        sent: 0,
        failed: None,
    }));
    (Corked(shared.clone()), Drain(shared))
}

struct Shared<IO> {
    io: IO,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    sent: usize,
    /// A drain's write error, returned by h2's next write or flush.
    failed: Option<io::Error>,
}

/// The half h2 reads and writes.
pub struct Corked<IO>(Arc<Mutex<Shared<IO>>>);

/// The half that writes the buffer out, after each poll of the HTTP/2 connection.
pub struct Drain<IO>(Arc<Mutex<Shared<IO>>>);

fn lock<IO>(m: &Mutex<Shared<IO>>) -> MutexGuard<'_, Shared<IO>> {
    // Only our own poll functions take the lock, and none panics while holding it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl Shared ===

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    /// Writes out what is buffered; Ready once all of it is with the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes, writing the buffer out if it would pass the limit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        if self.buf.len() + len > LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

// === impl Drain ===

impl<IO: AsyncWrite + Unpin> Drain<IO> {
    /// Writes out the turn's frames and flushes `io` (TLS may hold a record back). An error
    /// is kept for h2's next write, and the task woken so that h2 sees it and ends the
    /// connection the way it ends one whose socket failed.
    pub fn poll(&self, cx: &mut Context<'_>) {
        let mut s = lock(&self.0);
        if s.failed.is_some() {
            return;
        }
        let result = match s.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut s.io).poll_flush(cx),
            other => other,
        };
        if let Poll::Ready(Err(e)) = result {
            s.failed = Some(e);
            cx.waker().wake_by_ref();
        }
    }
}

/// Polls `fut` (h2's handshake, connection or `accept`), then writes out what that poll
/// buffered.
pub async fn drained<IO, F>(drain: &Drain<IO>, fut: F) -> F::Output
where
    IO: AsyncWrite + Unpin,
    F: Future,
{
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        let out = fut.as_mut().poll(cx);
        drain.poll(cx);
        out
    })
    .await
}

// === impl Corked ===

impl<IO: AsyncRead + Unpin> AsyncRead for Corked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Corked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let mut s = lock(&self.0);
        ready!(s.poll_room(cx, len))?;
        if s.buf.is_empty() && len >= PASS_THROUGH {
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(LIMIT - s.buf.len());
            s.buf.extend_from_slice(&b[..take]);
            n += take;
            if take < b.len() {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// The drain after h2's poll does the flushing.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.0).failed.take() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        if let Some(e) = s.failed.take() {
            return Poll::Ready(Err(e));
        }
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
