//! The waypoint's side toward endpoints: HTTP clients whose connections are HBONE streams.
//!
//! HTTP connections are kept per endpoint (`<pod ip>:<port>`, HTTP/1 in `pool.rs`); each new
//! HTTP connection is one `CONNECT` stream on a shared, mutually-authenticated HTTP/2
//! connection to that pod's agent on 15008, presenting the waypoint's own identity and
//! requiring the pod's. An endpoint that is not a captured pod (a ServiceEntry's or
//! EndpointSlice's external address, a pod outside the mesh) gets plain TCP instead.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection as HyperConnection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanyard_core::ca::CaClient;
use lanyard_core::hbone::{self, ConnectRequest, Connection, H2Io, StreamGuard};
use lanyard_core::identity::Identity;
use lanyard_core::secrets::{self, SecretManager};
use lanyard_core::state::MeshState;
use lanyard_core::tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Config;
use crate::pool::{self, Http1Pool, Lease};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not a mesh workload address")]
    UnknownEndpoint(IpAddr),
    #[error("bad endpoint URI {0}")]
    BadUri(http::Uri),
    #[error("waypoint identity: {0}")]
    Identity(#[from] secrets::Error),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, tls::Error),
    #[error("HBONE with {0}: {1}")]
    Hbone(SocketAddr, hbone::Error),
}

/// Why an attempt got no response from its endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Http1(#[from] pool::Error),
    #[error("HTTP/2: {0}")]
    Http2(hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether no connection to the endpoint could be made (`UF`, not `UC`).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Http1(e) => e.is_connect(),
            SendError::Http2(e) => e.is_connect(),
        }
    }
}

/// The waypoint's connections toward endpoints, one set per worker. HTTP/1 connections are
/// pooled by [`Http1Pool`]; HTTP/2 ones by hyper-util's client, of which each DestinationRule
/// `connectTimeout` gets its own (as each Envoy cluster has its pool). All share the HBONE
/// connections underneath.
pub struct Upstream {
    config: Arc<Config>,
    http1: Arc<Http1Pool>,
    http2: Client<Connector, Body>,
    http2_by_connect_timeout: Mutex<HashMap<Duration, Client<Connector, Body>>>,
    inner: Arc<ConnectorInner>,
    pool: Arc<HbonePool>,
}

impl Upstream {
    pub fn new(
        config: Arc<Config>,
        state: watch::Receiver<Arc<MeshState>>,
        secrets: SecretManager<CaClient>,
    ) -> Self {
        let pool = Arc::new(HbonePool {
            conns: Mutex::new(HashMap::new()),
        });
        let inner = Arc::new(ConnectorInner {
            config: config.clone(),
            state,
            secrets,
            pool: pool.clone(),
        });
        Upstream {
            http1: Arc::new(Http1Pool::default()),
            http2: Self::http2_client(&config, &inner, config.connect_timeout),
            http2_by_connect_timeout: Mutex::new(HashMap::new()),
            config,
            inner,
            pool,
        }
    }

    fn http2_client(
        config: &Config,
        inner: &Arc<ConnectorInner>,
        connect_timeout: Duration,
    ) -> Client<Connector, Body> {
        let connector = Connector {
            inner: inner.clone(),
            connect_timeout,
        };
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_only(true)
            .build(connector)
    }

    /// The HTTP/2 client whose new connections must be up within `connect_timeout` (the
    /// waypoint's default when None).
    fn http2(&self, connect_timeout: Option<Duration>) -> Client<Connector, Body> {
        let Some(t) = connect_timeout.filter(|t| *t != self.config.connect_timeout) else {
            return self.http2.clone();
        };
        // Bounded by the distinct timeouts that DestinationRules name.
        let mut map = self
            .http2_by_connect_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(t)
            .or_insert_with(|| Self::http2_client(&self.config, &self.inner, t))
            .clone()
    }

    /// Sends `req` (origin-form URI, `Host` set) to the endpoint at `addr`, whose port
    /// speaks HTTP/2 when `h2`. A new connection must be up within `connect_timeout`. The
    /// lease, for HTTP/1, is the connection to give back once the response body has ended.
    pub async fn send(
        &self,
        h2: bool,
        addr: SocketAddr,
        connect_timeout: Option<Duration>,
        mut req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), SendError> {
        if h2 {
            // hyper-util's client keys its pool by the absolute URI.
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(uri) = format!("http://{addr}{pq}").parse() {
                *req.uri_mut() = uri;
            }
            let resp = self
                .http2(connect_timeout)
                .request(req)
                .await
                .map_err(SendError::Http2)?;
            return Ok((resp, None));
        }
        let (resp, lease) = self
            .http1
            .send(addr, req, || self.tunnel(addr, connect_timeout))
            .await?;
        Ok((resp, Some(lease)))
    }

    /// Opens a byte stream to `addr`: an HTTP/1 connection's, or opaque TCP's.
    pub async fn tunnel(
        &self,
        addr: SocketAddr,
        connect_timeout: Option<Duration>,
    ) -> Result<Stream, Error> {
        let t = connect_timeout.unwrap_or(self.config.connect_timeout);
        tokio::time::timeout(t, self.inner.connect(addr))
            .await
            .map_err(|_| Error::ConnectTimeout(addr))?
    }

    /// Drops HTTP/1 and HBONE connections that are closed or idle.
    pub fn sweep(&self, idle: Duration) {
        self.http1.sweep(idle);
        let mut conns = self.pool.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, list| {
            list.retain(|(c, used)| {
                !c.is_closed() && (c.active_streams() > 0 || used.elapsed() < idle)
            });
            !list.is_empty()
        });
    }
}

/// HBONE connections by destination pod address.
struct HbonePool {
    conns: Mutex<HashMap<SocketAddr, Vec<(Connection, Instant)>>>,
}

/// Dials endpoints for hyper-util's HTTP/2 client: a whole connection (TCP, and for a mesh
/// pod TLS and the CONNECT stream) must be up within `connect_timeout`.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
    connect_timeout: Duration,
}

struct ConnectorInner {
    config: Arc<Config>,
    state: watch::Receiver<Arc<MeshState>>,
    secrets: SecretManager<CaClient>,
    pool: Arc<HbonePool>,
}

impl ConnectorInner {
    async fn connect(&self, authority: SocketAddr) -> Result<Stream, Error> {
        let IpAddr::V4(ip) = authority.ip() else {
            return Err(Error::UnknownEndpoint(authority.ip()));
        };
        let expected = {
            let state = self.state.borrow();
            state
                .workload_by_ip(ip)
                .filter(|w| state.is_captured(w))
                .map(|w| w.identity(state.trust_domain()))
        };
        let Some(expected) = expected else {
            return Ok(Stream::Plain(self.tcp(authority).await?));
        };
        let hbone_addr = SocketAddr::new(authority.ip(), hbone::HBONE_DEFAULT_PORT);
        let conn = match self.pooled(hbone_addr) {
            Some(c) => c,
            None => {
                let c = self.dial(hbone_addr, &expected).await?;
                let mut conns = self.pool.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns
                    .entry(hbone_addr)
                    .or_default()
                    .push((c.clone(), Instant::now()));
                c
            }
        };
        let (stream, guard) = conn
            .connect(ConnectRequest {
                authority,
                headers: http::HeaderMap::new(),
            })
            .await
            .map_err(|e| Error::Hbone(authority, e))?;
        Ok(Stream::Hbone(H2Io::new(stream), guard))
    }

    fn pooled(&self, addr: SocketAddr) -> Option<Connection> {
        let max = self.config.hbone.max_streams as usize;
        let mut conns = self.pool.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        list.retain(|(c, _)| !c.is_closed());
        let (c, used) = list.iter_mut().find(|(c, _)| c.has_room(max))?;
        *used = Instant::now();
        Some(c.clone())
    }

    /// Callers bound the time: the connector's or tunnel's connect timeout covers it.
    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn dial(&self, addr: SocketAddr, expected: &Identity) -> Result<Connection, Error> {
        let cert = self.secrets.fetch(&self.config.identity).await?;
        let tcp = self.tcp(addr).await?;
        let tls = tokio::time::timeout(
            self.config.handshake_timeout,
            tls::connect(tcp, &cert, expected),
        )
        .await
        .map_err(|_| Error::ConnectTimeout(addr))?
        .map_err(|e| Error::Tls(addr, e))?;
        hbone::handshake(tls, self.config.hbone)
            .await
            .map_err(|e| Error::Hbone(addr, e))
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = EndpointIo;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<EndpointIo, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let inner = self.inner.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let authority: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| Error::BadUri(uri.clone()))?;
            let io = tokio::time::timeout(timeout, inner.connect(authority))
                .await
                .map_err(|_| Error::ConnectTimeout(authority))??;
            Ok(EndpointIo {
                io: TokioIo::new(io),
            })
        })
    }
}

/// A byte stream to one endpoint.
pub enum Stream {
    /// A CONNECT stream, counted on its pooled HTTP/2 connection while it lives.
    Hbone(H2Io, StreamGuard),
    Plain(TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Hbone(io, _) => Pin::new(io).poll_read(cx, buf),
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Hbone(io, _) => Pin::new(io).poll_write(cx, buf),
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Hbone(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Hbone(io, _) => io.is_write_vectored(),
            Stream::Plain(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Hbone(io, _) => Pin::new(io).poll_flush(cx),
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Hbone(io, _) => Pin::new(io).poll_shutdown(cx),
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// One HTTP connection's byte stream, as hyper's client reads and writes it.
pub struct EndpointIo {
    io: TokioIo<Stream>,
}

impl HyperConnection for EndpointIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for EndpointIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for EndpointIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
