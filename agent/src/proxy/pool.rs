//! Pooled HBONE connections, keyed by who connects, to whom, and where: a connection carries
//! streams for one source workload IP and identity, to one destination address that must
//! prove one identity. At most `max_streams` streams ride one connection.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_core::hbone::{self, ConnectRequest, Connection, H2Stream, StreamGuard};
use lanyard_core::identity::Identity;
use lanyard_core::tls::{self, WorkloadCert};

use crate::capture::maps::MARK_AGENT;
use crate::capture::netns::Netns;
use crate::socket;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_ip: Ipv4Addr,
    pub src_id: Identity,
    pub dst_id: Identity,
    pub dst: SocketAddrV4,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, socket::Error),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddrV4, tls::Error),
    #[error("TLS handshake with {0} timed out")]
    HandshakeTimeout(SocketAddrV4),
    #[error("HBONE with {0}: {1}")]
    Hbone(SocketAddrV4, hbone::Error),
}

struct Entry {
    conn: Connection,
    last_used: Instant,
}

pub struct Pool {
    settings: hbone::Settings,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    conns: Mutex<HashMap<PoolKey, Vec<Entry>>>,
}

// === impl Pool ===

impl Pool {
    pub fn new(
        settings: hbone::Settings,
        connect_timeout: Duration,
        handshake_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            settings,
            connect_timeout,
            handshake_timeout,
            idle_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a tunnel, on a pooled connection when one has room.
    pub async fn connect(
        &self,
        key: &PoolKey,
        netns: &Netns,
        cert: &WorkloadCert,
        req: ConnectRequest,
    ) -> Result<(H2Stream, StreamGuard), Error> {
        let conn = match self.checkout(key) {
            Some(conn) => conn,
            None => self.dial(key, netns, cert).await?,
        };
        conn.connect(req)
            .await
            .map_err(|e| Error::Hbone(key.dst, e))
    }

    fn checkout(&self, key: &PoolKey) -> Option<Connection> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let entries = conns.get_mut(key)?;
        entries.retain(|e| !e.conn.is_closed());
        let max = self.settings.max_streams as usize;
        let entry = entries.iter_mut().find(|e| e.conn.active_streams() < max)?;
        entry.last_used = Instant::now();
        Some(entry.conn.clone())
    }

    async fn dial(
        &self,
        key: &PoolKey,
        netns: &Netns,
        cert: &WorkloadCert,
    ) -> Result<Connection, Error> {
        let tcp = socket::connect(
            netns,
            SocketAddr::V4(key.dst),
            MARK_AGENT,
            self.connect_timeout,
        )
        .await
        .map_err(|e| Error::Connect(key.dst, e))?;
        let tls =
            tokio::time::timeout(self.handshake_timeout, tls::connect(tcp, cert, &key.dst_id))
                .await
                .map_err(|_| Error::HandshakeTimeout(key.dst))?
                .map_err(|e| Error::Tls(key.dst, e))?;
        let conn = hbone::handshake(tls, self.settings)
            .await
            .map_err(|e| Error::Hbone(key.dst, e))?;
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(key.clone()).or_default().push(Entry {
            conn: conn.clone(),
            last_used: Instant::now(),
        });
        Ok(conn)
    }

    /// Drops connections that are closed, or idle past the timeout. Dropping the last
    /// handle lets the HTTP/2 connection close once its streams are done.
    pub fn sweep(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, entries| {
            entries.retain(|e| {
                !e.conn.is_closed()
                    && (e.conn.active_streams() > 0 || e.last_used.elapsed() < self.idle_timeout)
            });
            !entries.is_empty()
        });
    }

    /// Connections held, for the admin API.
    pub fn size(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().map(Vec::len).sum()
    }

    pub fn run_sweeper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                self.sweep();
            }
        })
    }
}
