//! An HBONE stream as a byte stream (`AsyncRead` + `AsyncWrite`), for protocols spoken
//! inside a tunnel: the waypoint serves and sends HTTP over these.

use std::io;
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

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let send = &mut this.stream.send;
        send.reserve_capacity(buf.len());
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    let frame = if n <= REUSE_MAX {
                        this.out.reserve(n);
                        this.out.extend_from_slice(&buf[..n]);
                        this.out.split().freeze()
                    } else {
                        Bytes::copy_from_slice(&buf[..n])
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
