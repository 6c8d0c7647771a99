//! Copying between a TCP connection and an HBONE stream, both ways, with half-close.
//!
//! Idle connections hold no buffer: a read buffer is taken only once the socket is readable,
//! handed to HTTP/2 without a copy, and what is left of it is released when the socket has
//! nothing more to read. Backpressure is preserved: HTTP/2 capacity is
//! reserved before sending, and received data is released to the peer only once written.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::Error;

const READ_CHUNK: usize = 64 * 1024;

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
    let H2Stream { mut send, mut recv } = stream;
    let (r, w) = tcp.split();
    // Counters are updated as bytes move so that a failed tunnel still reports what it did.
    let (up, down) = (&mut copied.tcp_to_tunnel, &mut copied.tunnel_to_tcp);
    let result = tokio::try_join!(tcp_to_h2(r, &mut send, up), h2_to_tcp(&mut recv, w, down));
    if result.is_err() {
        send.send_reset(h2::Reason::CANCEL);
    }
    result.map(|_| ())
}

async fn tcp_to_h2(
    r: ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    total: &mut u64,
) -> Result<(), Error> {
    let mut buf = BytesMut::new();
    loop {
        r.readable().await?;
        buf.reserve(READ_CHUNK);
        let n = match r.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The unused rest of the last chunk would stay allocated for as long as the
                // connection idles (a keep-alive connection can idle for hours).
                buf = BytesMut::new();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            send.send_data(Bytes::new(), true)?;
            return Ok(());
        }
        *total += n as u64;
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let cap = poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or(Error::StreamClosed)??;
            if cap == 0 {
                continue;
            }
            send.send_data(data.split_to(cap.min(data.len())), false)?;
        }
    }
}

async fn h2_to_tcp(
    recv: &mut RecvStream,
    mut w: WriteHalf<'_>,
    total: &mut u64,
) -> Result<(), Error> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let n = chunk.len();
        w.write_all(&chunk).await?;
        *total += n as u64;
        recv.flow_control().release_capacity(n)?;
    }
    w.shutdown().await?;
    Ok(())
}
