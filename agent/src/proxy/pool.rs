//! Pooled HBONE connections, keyed by who connects, to whom, and where: a connection carries
//! streams for one source workload IP and identity, to one destination address that must
//! prove one identity. At most `max_streams` streams ride one connection.
//!
//! Dials are single-flight per key: when a burst of connections arrives, one dial runs and the
//! others wait for it and share its connection, rather than each opening its own.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_core::hbone::{self, ConnectRequest, Connection, H2Stream, StreamGuard};
use lanyard_core::identity::Identity;
use lanyard_core::tls::{self, WorkloadCert};
use tokio::sync::watch;

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
    #[error("connection to {0} failed for a concurrent request: {1}")]
    SharedDial(SocketAddrV4, Arc<str>),
}

struct Entry {
    conn: Connection,
    last_used: Instant,
}

/// What waiters of an in-flight dial learn: `Some(Err)` when it failed; the channel closing
/// without an error means it succeeded (look again).
type DialOutcome = Option<Arc<str>>;

#[derive(Default)]
struct Slot {
    conns: Vec<Entry>,
    dialing: Option<watch::Receiver<DialOutcome>>,
}

enum Next {
    Ready(Connection, StreamGuard),
    Wait(watch::Receiver<DialOutcome>),
    Dial(watch::Sender<DialOutcome>),
}

pub struct Pool {
    settings: hbone::Settings,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    slots: Mutex<HashMap<PoolKey, Slot>>,
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
            slots: Mutex::new(HashMap::new()),
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
        let (conn, guard) = loop {
            match self.next(key) {
                Next::Ready(conn, guard) => break (conn, guard),
                Next::Wait(mut rx) => {
                    // Err: the dialer finished (sender dropped); look again.
                    if rx.changed().await.is_ok() {
                        if let Some(e) = rx.borrow().clone() {
                            return Err(Error::SharedDial(key.dst, e));
                        }
                    }
                }
                Next::Dial(tx) => {
                    // Boxed: dialing is rare and its TLS/HTTP/2 handshake state is large.
                    let dialed = Box::pin(self.dial(key, netns, cert)).await;
                    let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                    let slot = slots.entry(key.clone()).or_default();
                    slot.dialing = None;
                    match dialed {
                        Ok(conn) => {
                            let guard = conn.reserve();
                            slot.conns.push(Entry {
                                conn: conn.clone(),
                                last_used: Instant::now(),
                            });
                            break (conn, guard);
                        }
                        Err(e) => {
                            let _ = tx.send(Some(e.to_string().into()));
                            return Err(e);
                        }
                    }
                }
            }
        };
        conn.open(req, guard)
            .await
            .map_err(|e| Error::Hbone(key.dst, e))
    }

    /// A connection with room, or the dial to wait for, or the right to dial.
    fn next(&self, key: &PoolKey) -> Next {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(key.clone()).or_default();
        slot.conns.retain(|e| !e.conn.is_closed());
        let max = self.settings.max_streams as usize;
        if let Some(entry) = slot.conns.iter_mut().find(|e| e.conn.has_room(max)) {
            entry.last_used = Instant::now();
            // Reserved before the lock is released, so a burst spreads over connections.
            return Next::Ready(entry.conn.clone(), entry.conn.reserve());
        }
        if let Some(rx) = &slot.dialing {
            return Next::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        slot.dialing = Some(rx);
        Next::Dial(tx)
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
        hbone::handshake(tls, self.settings)
            .await
            .map_err(|e| Error::Hbone(key.dst, e))
    }

    /// Drops connections that are closed, or idle past the timeout. Dropping the last
    /// handle lets the HTTP/2 connection close once its streams are done.
    pub fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| {
            slot.conns.retain(|e| {
                !e.conn.is_closed()
                    && (e.conn.active_streams() > 0 || e.last_used.elapsed() < self.idle_timeout)
            });
            !slot.conns.is_empty() || slot.dialing.is_some()
        });
    }

    /// Connections held, for the admin API.
    pub fn size(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|s| s.conns.len()).sum()
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
