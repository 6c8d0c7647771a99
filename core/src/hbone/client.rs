//! The HBONE client side: one HTTP/2 connection over TLS, many `CONNECT` streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tracing::debug;

use super::cork::{cork, drained};
use super::{Error, H2Stream, Settings};

/// One tunnel to open on a connection.
pub struct ConnectRequest {
    pub authority: SocketAddr,
    pub headers: HeaderMap,
}

/// A live HBONE client connection. Clones share the connection.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    /// Bounds the `CONNECT`s awaiting their answer. h2 queues each frame in a per-connection
    /// slab that grows to its peak and never shrinks, on both peers: a burst of a connection's
    /// full 256 opens at once would size those slabs for 256 frames for its whole life.
    opening: Arc<Semaphore>,
    closed: watch::Receiver<bool>,
}

/// Performs the HTTP/2 handshake over an established TLS session and drives the
/// connection (with keepalive pings) on its own task.
pub async fn handshake<IO>(io: IO, settings: Settings) -> Result<Connection, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, drain) = cork(io);
    let handshake = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_send_buffer_size(settings.max_send_buffer)
        .enable_push(false)
        .handshake::<_, Bytes>(io);
    let (send, mut conn) = drained(&drain, handshake).await?;
    let (closed_tx, closed) = watch::channel(false);
    let mut ping = conn.ping_pong();
    tokio::spawn(async move {
        let keepalive = async {
            let Some(ping) = ping.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(settings.keepalive_interval).await;
                match tokio::time::timeout(
                    settings.keepalive_timeout,
                    ping.ping(h2::Ping::opaque()),
                )
                .await
                {
                    Ok(Ok(_)) => {}
                    _ => return "keepalive ping unanswered",
                }
            }
        };
        let reason = tokio::select! {
            r = drained(&drain, &mut conn) => match r { Ok(()) => "closed", Err(_) => "failed" },
            r = keepalive => r,
        };
        debug!(reason, "HBONE client connection ended");
        let _ = closed_tx.send(true);
    });
    Ok(Connection {
        send,
        active: Arc::new(AtomicUsize::new(0)),
        opening: Arc::new(Semaphore::new(settings.max_opening as usize)),
        closed,
    })
}

// === impl Connection ===

impl Connection {
    /// Counts a stream against this connection from now on (before it is opened), so that a
    /// pool choosing connections sees streams that are about to open.
    pub fn reserve(&self) -> StreamGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.active.clone())
    }

    /// Opens a tunnel; a non-200 answer is an error carrying the status.
    pub async fn connect(&self, req: ConnectRequest) -> Result<(H2Stream, StreamGuard), Error> {
        let guard = self.reserve();
        self.open(req, guard).await
    }

    /// Opens a tunnel on a stream reserved with [`Connection::reserve`].
    pub async fn open(
        &self,
        req: ConnectRequest,
        guard: StreamGuard,
    ) -> Result<(H2Stream, StreamGuard), Error> {
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(req.authority.to_string());
        if let Some(h) = builder.headers_mut() {
            h.extend(req.headers);
        }
        let request = builder.body(())?;
        // Never closed, so a permit always comes; it is released once the answer is in.
        let _opening = self.opening.acquire().await;
        let mut send = self.send.clone().ready().await?;
        let (response, send_stream) = send.send_request(request, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused(response.status()));
        }
        Ok((
            H2Stream {
                send: send_stream,
                recv: response.into_body(),
            },
            guard,
        ))
    }

    /// Streams open on this connection now.
    pub fn active_streams(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether another stream fits: fewer than `max` are open, and fewer than the peer
    /// allows (its SETTINGS can say less than we would use; a stream past that limit
    /// would wait inside HTTP/2 for another to end, which for a tunnel can be hours).
    pub fn has_room(&self, max: usize) -> bool {
        let active = self.active_streams();
        active < max && active < self.send.current_max_send_streams()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// Counts a stream as active on its connection until dropped.
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
