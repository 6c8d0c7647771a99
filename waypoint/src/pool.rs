//! HTTP/1 connections to endpoints, kept per worker for reuse.
//!
//! A connection is taken from its endpoint's idle list for one request and goes back when the
//! response body has ended, from the task that served the request. Why not hyper-util's
//! pooled client (still used for HTTP/2 endpoints, whose connections are shared): for each
//! request it hashed a pool key, spawned a task to wait for the connection to become ready
//! again, and wrapped it in several layers: about 6 % of the waypoint's CPU at full load in a
//! call-graph profile. With this pool the waypoint served about a tenth more requests per
//! core (docs/benchmarks.md, session 21).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::upstream::{Body, Stream};

/// Idle connections past this many per endpoint are closed instead of kept: more than that
/// were only ever needed by a burst.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How many idle connections one request may find closed (the endpoint timed them out)
/// before it opens a new one.
const MAX_STALE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Connect(#[source] crate::upstream::Error),
    #[error("HTTP/1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

impl Error {
    /// Whether no connection to the endpoint could be made (Envoy's `UF`), as opposed to one
    /// that failed after it was up (`UC`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// One worker's idle HTTP/1 connections, by endpoint address.
#[derive(Default)]
pub struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// A connection in use by one request; [`PooledBody`] returns it when the response ends.
pub struct Lease {
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
    tx: SendRequest<Body>,
}

// === impl Http1Pool ===

impl Http1Pool {
    /// Sends `req` (origin-form URI, `Host` set) on an idle connection to `addr`, or on a new
    /// one that `connect` opens.
    pub async fn send<C, F>(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
        connect: C,
    ) -> Result<(Response<Incoming>, Lease), Error>
    where
        C: FnOnce() -> F,
        F: std::future::Future<Output = Result<Stream, crate::upstream::Error>>,
    {
        // An idle connection may have been closed by the endpoint since; a request that it
        // refused unsent goes on the next one.
        for _ in 0..MAX_STALE {
            let Some(mut tx) = self.checkout(addr) else {
                break;
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, tx))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Error::Http(e.into_error())),
                },
            }
        }
        let io = connect().await.map_err(Error::Connect)?;
        let (mut tx, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("upstream HTTP/1 connection ended: {e}");
            }
        });
        let resp = tx.send_request(req).await.map_err(Error::Http)?;
        Ok((resp, self.lease(addr, tx)))
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr, tx: SendRequest<Body>) -> Lease {
        Lease {
            pool: self.clone(),
            addr,
            tx,
        }
    }

    /// The most recently used connection to `addr` that can take a request. Closed ones are
    /// dropped; ones still finishing a response stay for later.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        list.retain(|i| !i.tx.is_closed());
        let i = list.iter().rposition(|i| i.tx.is_ready())?;
        Some(list.swap_remove(i).tx)
    }

    fn give_back(&self, addr: SocketAddr, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for `idle` or more, and forgets closed ones.
    pub fn sweep(&self, idle: Duration) {
        let mut lists = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        lists.retain(|_, list| {
            list.retain(|i| !i.tx.is_closed() && i.since.elapsed() < idle);
            !list.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap();
        idle.get(&addr).map_or(0, Vec::len)
    }
}

/// A response body that returns its connection to the pool once it has been read to the
/// end. A body dropped before its end takes the connection with it: hyper closes a
/// connection whose response was not read.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

// === impl PooledBody ===

impl PooledBody {
    /// `lease` None: the connection is not to be reused (`maxRequestsPerConnection: 1`).
    pub fn new(inner: Incoming, lease: Option<Lease>) -> Self {
        PooledBody { inner, lease }
    }

    fn release(&mut self) {
        if let Some(l) = self.lease.take() {
            l.pool.give_back(l.addr, l.tx);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A server may stop polling once the body says it is at its end (a known length,
        // a body-less status): that still counts as read to the end.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
#[path = "pool/tests.rs"]
mod tests;
