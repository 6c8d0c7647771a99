//! An HBONE stream as a byte stream (`AsyncRead` + `AsyncWrite`), for protocols spoken
//! inside a tunnel: the waypoint serves and sends HTTP over these.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::H2Stream;

pub struct H2Io {
    stream: H2Stream,
    /// Received but not yet read.
    pending: Bytes,
    /// What writes are copied into, frame by frame. Once h2 has sent the earlier frames
    /// and dropped them, the next write reuses this allocation: a request or response
    /// costs no malloc/free pair here (writes past `REUSE_MAX` get their own buffer, so
    /// what a stream keeps is bounded).
    out: BytesMut,
    shut_down: bool,
}

const REUSE_MAX: usize = 16 * 1024;

impl H2Io {
    pub fn new(stream: H2Stream) -> Self {
        H2Io {
            stream,
            pending: Bytes::new(),
            out: BytesMut::new(),
            shut_down: false,
        }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.stream.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Released as soon as buffered here: what we hold is bounded by one frame.
                    let _ = this.stream.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl H2Io {
    /// Sends as much of `bufs` as the stream has capacity for, as one DATA frame.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.stream.send;
        send.reserve_capacity(len);
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(len);
                    let frame = if n <= REUSE_MAX {
                        self.out.reserve(n);
                        put_prefix(&mut self.out, bufs, n);
                        self.out.split().freeze()
                    } else {
                        let mut own = BytesMut::with_capacity(n);
                        put_prefix(&mut own, bufs, n);
                        own.freeze()
                    };
                    send.send_data(frame, false).map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE stream closed",
                    )))
                }
            }
        }
    }
}

/// Copies the first `n` bytes of `bufs` into `out`.
fn put_prefix(out: &mut BytesMut, bufs: &[IoSlice<'_>], mut n: usize) {
    for b in bufs {
        let take = b.len().min(n);
        out.extend_from_slice(&b[..take]);
        n -= take;
        if n == 0 {
            break;
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, &[IoSlice::new(buf)])
    }

    /// Vectored: hyper then queues a message's head and body as they are (its "queue"
    /// strategy) instead of first copying the body behind the head, and the one copy into
    /// the DATA frame is the only one.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut_down {
            self.shut_down = true;
            self.stream
                .send
                .send_data(Bytes::new(), true)
                .map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
