//! Copying between a TCP connection and an HBONE stream, both ways, with half-close.
//!
//! This runs for the whole life of every proxied connection, so its state is kept small: one
//! hand-written poll loop instead of two composed futures, and no buffer while idle. A read
//! buffer is taken only once the socket is readable, handed to HTTP/2 without a copy, and
//! what is left of it is released when the socket has nothing more to read. Backpressure is
//! preserved: HTTP/2 capacity is reserved before sending, and received data is released to
//! the peer only once written.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Error;

/// A DATA frame's header, sent in the same TLS write as its payload.
const FRAME_HEADER: usize = 9;
/// What one read from the TCP side asks for: the payload of one DATA frame, and so of one
/// write to the TLS session. With 64 KiB reads (frame plus header just over rustls's default
/// 64 KiB send buffer), each frame went out as two writes, the second a TLS record of 9
/// bytes. A first read asks for 64 KiB less the header (four full TLS records); once a read
/// fills its buffer (a bulk transfer), the next ask for 256 KiB less the header. Paired runs
/// on one host: 1.18-1.30 CPU-s per GB against 1.31-1.67 with every read 64 KiB less the
/// header (docs/benchmarks.md, session 18).
const FIRST_READ: usize = 64 * 1024 - FRAME_HEADER;
const BULK_READ: usize = 256 * 1024 - FRAME_HEADER;
const _: () = assert!(BULK_READ + FRAME_HEADER <= crate::tls::SEND_BUFFER_LIMIT);

/// The two halves of an established HBONE stream.
pub struct H2Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

/// Bytes moved by a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// From the TCP side into the tunnel.
    pub tcp_to_tunnel: u64,
    /// From the tunnel out to the TCP side.
    pub tunnel_to_tcp: u64,
}

/// Runs until both directions have finished (each side half-closed) or one fails. On
/// failure the HBONE stream is reset; the caller resets the TCP side.
pub async fn copy_bidirectional(
    tcp: &mut TcpStream,
    stream: H2Stream,
    copied: &mut Copied,
) -> Result<(), Error> {
    let mut tunnel = Tunnel::new(stream);
    poll_fn(|cx| tunnel.poll_copy(cx, tcp, copied)).await
}

/// The copy's state, for callers that poll it inline with other work (a revocation signal)
/// rather than await a nested future: each nested `async fn` keeps its moved-in arguments
/// for its whole life, which for a tunnel is the connection's.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    up: Up,
    down: Down,
}

// === impl Tunnel ===

impl Tunnel {
    pub fn new(stream: H2Stream) -> Self {
        Tunnel {
            send: stream.send,
            recv: stream.recv,
            up: Up::default(),
            down: Down::default(),
        }
    }

    /// Ready when both directions have finished or one failed; on failure the HBONE stream
    /// is reset. Counters are updated as bytes move, so that a failed tunnel still reports
    /// what it did.
    pub fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
        copied: &mut Copied,
    ) -> Poll<Result<(), Error>> {
        let result = (|| {
            let up = self
                .up
                .poll(cx, tcp, &mut self.send, &mut copied.tcp_to_tunnel)?;
            let down = self
                .down
                .poll(cx, tcp, &mut self.recv, &mut copied.tunnel_to_tcp)?;
            if up.is_ready() && down.is_ready() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })();
        if let Poll::Ready(Err(_)) = &result {
            self.send.send_reset(h2::Reason::CANCEL);
        }
        result
    }
}

/// TCP to HTTP/2: read a chunk, then send it as capacity allows.
#[derive(Default)]
struct Up {
    /// Read but not yet given to HTTP/2; each part sent is split off without a copy.
    buf: BytesMut,
    /// The last read filled its buffer: more is probably waiting.
    bulk: bool,
    done: bool,
}

impl Up {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
        send: &mut SendStream<Bytes>,
        total: &mut u64,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.buf.is_empty() {
                send.reserve_capacity(self.buf.len());
                let cap = match ready!(send.poll_capacity(cx)) {
                    Some(cap) => cap?,
                    None => return Poll::Ready(Err(Error::StreamClosed)),
                };
                let n = cap.min(self.buf.len());
                if n > 0 {
                    send.send_data(self.buf.split_to(n).freeze(), false)?;
                }
                continue;
            }
            // Checked before a buffer is taken, so that an idle connection holds none.
            if tcp.poll_read_ready(cx)?.is_pending() {
                return self.idle();
            }
            self.buf
                .reserve(if self.bulk { BULK_READ } else { FIRST_READ });
            // tokio's `poll_read`, unlike `try_read_buf`, takes a short read as proof that the
            // socket is drained: a request-sized message then costs one `recvfrom`, not a
            // second one that fails with EAGAIN (and a second buffer for it).
            let n = match read_buf(cx, tcp, &mut self.buf) {
                Poll::Pending => return self.idle(),
                Poll::Ready(r) => r?,
            };
            if n == 0 {
                send.send_data(Bytes::new(), true)?;
                self.done = true;
            } else {
                *total += n as u64;
                self.bulk = self.buf.len() == self.buf.capacity();
            }
        }
    }

    fn idle(&mut self) -> Poll<Result<(), Error>> {
        // The unused rest of the last chunk would stay allocated for as long as the
        // connection idles (a keep-alive connection can idle for hours).
        self.buf = BytesMut::new();
        self.bulk = false;
        Poll::Pending
    }
}

/// Reads into `buf`'s spare capacity; the number of bytes read.
fn read_buf(
    cx: &mut Context<'_>,
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(Pin::new(tcp).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// HTTP/2 to TCP: write each received chunk, releasing flow control as it is written.
#[derive(Default)]
struct Down {
    chunk: Bytes,
    done: bool,
}

impl Down {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut TcpStream,
        recv: &mut RecvStream,
        total: &mut u64,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.chunk.advance(n);
                *total += n as u64;
                recv.flow_control().release_capacity(n)?;
            }
            match ready!(recv.poll_data(cx)) {
                Some(chunk) => self.chunk = chunk?,
                None => {
                    ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
                    self.done = true;
                }
            }
        }
    }
}
