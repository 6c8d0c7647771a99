//! HTTP/1.1 `Upgrade: h2c` (RFC 7540 §3.2): the waypoint answers 101 and continues the
//! connection as HTTP/2, with the upgrading request as stream 1. hyper's HTTP/2 server has
//! no way to adopt a stream it did not read, so the request is handed to it as if the
//! client had sent it: the connection it serves starts with the client's preface and
//! SETTINGS, then a HEADERS frame for stream 1 written here, then whatever the client sends.
//! Every request, the first included, goes through the same routing and policy as any other.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::forward;
use crate::local;
use crate::route::{self, Downstream, Inputs};
use crate::upstream::Body;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE: the stream-1 HEADERS must fit in one frame.
const MAX_FRAME: usize = 16_384;
/// How long the client may take to send its preface after the 101.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes over `req` if it is an h2c upgrade the waypoint can accept: returns the 101 and
/// serves the rest of the connection as HTTP/2. Otherwise None, and the offer is ignored
/// (HTTP/1.1 lets a server do that).
pub fn upgrade(
    inputs: &Arc<Inputs>,
    down: &Arc<Downstream>,
    req: &mut Request<Incoming>,
) -> Option<Response<Body>> {
    let block = offer(req).then(|| header_block(req)).flatten()?;
    let upgraded = hyper::upgrade::on(req);
    let (inputs, down) = (inputs.clone(), down.clone());
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return debug!("h2c upgrade: {e}"),
        };
        let io = match tokio::time::timeout(PREFACE_TIMEOUT, start(io, block)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return debug!("h2c upgrade: {e}"),
            Err(_) => return debug!("h2c upgrade: no HTTP/2 preface within {PREFACE_TIMEOUT:?}"),
        };
        let svc = service_fn(move |r| route::handle(inputs.clone(), down.clone(), r));
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
        if let Err(e) = served {
            debug!("HTTP/2 connection after h2c upgrade ended: {e}");
        }
    });
    let mut resp = Response::new(local::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    Some(resp)
}

/// An HTTP/1.1 request offering h2c with its settings, and no body: a body would have to
/// become DATA frames within a flow-control window the client has not granted yet.
fn offer<B: hyper::body::Body>(req: &Request<B>) -> bool {
    let h = req.headers();
    let lists = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    let settings = h.get_all("http2-settings").iter().collect::<Vec<_>>();
    req.version() == Version::HTTP_11
        && lists(header::UPGRADE, "h2c")
        && lists(header::CONNECTION, "http2-settings")
        && settings.len() == 1
        && valid_settings(settings[0])
        && req.body().is_end_stream()
}

/// A SETTINGS payload in base64url (token68: `=` padding allowed): six bytes per setting.
fn valid_settings(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    let end = b.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&b[..end])
        .is_ok_and(|s| s.len() % 6 == 0)
}

/// The request as an HTTP/2 HEADERS frame for stream 1, with END_STREAM; None if it does
/// not fit in one frame.
fn header_block<B>(req: &Request<B>) -> Option<Bytes> {
    let mut block = BytesMut::new();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| Some(req.headers().get(header::HOST)?.as_bytes().to_vec()))?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    literal(&mut block, b":method", req.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":authority", &authority);
    literal(&mut block, b":path", path.as_bytes());
    // HTTP/2 forbids the HTTP/1.1 request's hop-by-hop headers; `Host` became :authority.
    let mut headers = req.headers().clone();
    forward::strip_hop_by_hop(&mut headers, true);
    headers.remove(header::HOST);
    headers.remove("http2-settings");
    for (name, value) in &headers {
        literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
    }
    if block.len() > MAX_FRAME {
        return None;
    }
    let mut frame = BytesMut::with_capacity(9 + block.len());
    frame.put_uint(block.len() as u64, 3);
    frame.put_u8(0x1); // HEADERS
    frame.put_u8(0x1 | 0x4); // END_STREAM | END_HEADERS
    frame.put_u32(1);
    frame.put(block);
    Some(frame.freeze())
}

/// An HPACK "literal header field without indexing, new name", strings not Huffman coded:
/// neither side's dynamic table changes, so the client's later header blocks decode as it
/// meant them.
fn literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut BytesMut, s: &[u8]) {
    // A 7-bit prefix integer (RFC 7541 §5.1), Huffman flag clear.
    let mut n = s.len();
    if n < 127 {
        out.put_u8(n as u8);
    } else {
        out.put_u8(127);
        n -= 127;
        while n >= 128 {
            out.put_u8((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.put_u8(n as u8);
    }
    out.put_slice(s);
}

/// Reads the client's preface and first SETTINGS frame, and returns the connection as
/// hyper's HTTP/2 server must see it: those, then stream 1's HEADERS, then the rest.
async fn start<I>(mut io: I, headers: Bytes) -> io::Result<Prefixed<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 preface",
        ));
    }
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await?;
    let len = (&head[..3]).get_uint(3) as usize;
    if head[3] != 0x4 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client's first frame is not SETTINGS",
        ));
    }
    let mut prefix = BytesMut::with_capacity(24 + 9 + len + headers.len());
    prefix.put_slice(PREFACE);
    prefix.put_slice(&head);
    prefix.resize(24 + 9 + len, 0);
    io.read_exact(&mut prefix[24 + 9..]).await?;
    prefix.put(headers);
    Ok(Prefixed {
        prefix: prefix.freeze(),
        io,
    })
}

/// `io` with `prefix` read first.
struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
