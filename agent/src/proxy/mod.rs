//! The data path. Each enrolled pod gets three listeners inside its own network namespace:
//!
//! | port  | bound to    | what arrives                                             |
//! |-------|-------------|----------------------------------------------------------|
//! | 15001 | 127.0.0.1   | the pod's outbound connections (connect4 redirect)       |
//! | 15006 | 0.0.0.0     | plaintext inbound from outside the mesh (sk_lookup)      |
//! | 15008 | 0.0.0.0     | HBONE from other pods' agents                            |
//!
//! Outbound connections leave from the pod's namespace (so peers see the pod's IP), and
//! inbound ones reach the app from the real client's address.

mod inbound;
mod inbound_plaintext;
mod outbound;
pub mod pool;

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use lanyard_core::ca::CaClient;
use lanyard_core::hbone;
use lanyard_core::identity::Identity;
use lanyard_core::policy::authz::Decision;
use lanyard_core::secrets::{self, SecretManager};
pub use lanyard_core::state::{Denial, Peer};
use lanyard_core::state::{MeshState, Workload};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::capture::maps::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::capture::netns::Netns;
use crate::capture::{self, Capture};
use crate::config::Config;
use crate::metrics::{Addr, Metrics, Party};
use crate::socket;
use crate::workers::Workers;

/// What every pod proxy shares.
pub struct ProxyInputs {
    pub config: Arc<Config>,
    pub state: watch::Receiver<Arc<MeshState>>,
    pub secrets: SecretManager<CaClient>,
    pub pool: Arc<pool::Pool>,
    pub metrics: Arc<Metrics>,
    pub capture: Arc<Capture>,
    pub workers: Workers,
    conn_ids: AtomicU64,
}

impl ProxyInputs {
    pub fn new(
        config: Arc<Config>,
        state: watch::Receiver<Arc<MeshState>>,
        secrets: SecretManager<CaClient>,
        metrics: Arc<Metrics>,
        capture: Arc<Capture>,
        workers: Workers,
    ) -> Self {
        let pool = pool::Pool::new(
            config.hbone,
            config.connect_timeout,
            config.handshake_timeout,
            config.pool_idle_timeout,
        );
        Self {
            config,
            state,
            secrets,
            pool: Arc::new(pool),
            metrics,
            capture,
            workers,
            conn_ids: AtomicU64::new(1),
        }
    }

    fn next_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no original destination recorded for {0}")]
    NoOriginalDestination(SocketAddr),
    #[error("service {service} has no ready endpoint for port {port}")]
    NoHealthyUpstream { service: String, port: u16 },
    #[error(transparent)]
    Identity(#[from] secrets::Error),
    // Boxed: these are large and rare, and errors travel through every connection's future.
    #[error(transparent)]
    Pool(Box<pool::Error>),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, Box<socket::Error>),
    #[error("tunnel: {0}")]
    Tunnel(#[from] hbone::Error),
    #[error("copying: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Denied(String),
    #[error("closed: a policy update denies this connection")]
    Revoked,
    #[error("HBONE authority {0} is not this pod's address")]
    AuthorityMismatch(SocketAddr),
    #[error("connection to the agent's own port {0}")]
    AgentPort(u16),
    #[error("IPv6 is not supported yet ({0})")]
    Ipv6(SocketAddr),
}

impl From<pool::Error> for Error {
    fn from(e: pool::Error) -> Self {
        Error::Pool(Box::new(e))
    }
}

impl Error {
    /// Envoy-style response flags, as Istio's metrics carry them.
    pub fn response_flags(&self) -> &'static str {
        match self {
            Error::NoHealthyUpstream { .. } => "UH",
            Error::Denied(_) | Error::Revoked => "DENY",
            Error::NoOriginalDestination(_)
            | Error::AuthorityMismatch(_)
            | Error::AgentPort(_)
            | Error::Ipv6(_) => "NR",
            Error::Identity(_) | Error::Pool(_) | Error::Connect(..) => "UF",
            Error::Tunnel(_) | Error::Io(_) => "UC",
        }
    }
}

/// The pod a proxy serves, fixed at enrollment.
pub struct PodCtx {
    pub inputs: Arc<ProxyInputs>,
    pub workload: Arc<Workload>,
    pub ip: Ipv4Addr,
    pub identity: Identity,
    pub netns: Netns,
    /// Source ports for connections to the app from clients' addresses.
    source_ports: socket::SourcePorts,
    /// Inbound connections in progress, re-checked when policies change.
    live: Mutex<HashMap<u64, Arc<LiveConn>>>,
}

/// An inbound connection as a policy re-check sees it. Shared by the registry and the
/// connection's task: a flag and a waker, rather than a cancellation token whose wait
/// future would take about 80 bytes of every idle connection's task.
struct LiveConn {
    peer: Peer,
    dst: SocketAddr,
    revoked: AtomicBool,
    waker: AtomicWaker,
}

/// Keeps a connection registered for re-checks while alive.
pub struct Tracked {
    pub pod: Arc<PodCtx>,
    id: u64,
    conn: Arc<LiveConn>,
}

// === impl Tracked ===

impl Tracked {
    /// Ready once a policy update has denied the connection.
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.conn.revoked.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.conn.waker.register(cx.waker());
        // Checked again: a revocation between the first check and the registration woke
        // the waker that was registered before.
        if self.conn.revoked.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn revoked(&self) {
        poll_fn(|cx| self.poll_revoked(cx)).await
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.pod
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl PodCtx {
    /// The pod as the state now knows it (labels can change after enrollment).
    fn current<'s>(&'s self, state: &'s MeshState) -> &'s Workload {
        state
            .workload_by_uid(&self.workload.uid)
            .map(|w| w.as_ref())
            .unwrap_or(&self.workload)
    }

    /// PeerAuthentication (for plaintext) then AuthorizationPolicy, at L4.
    pub fn check(
        &self,
        state: &MeshState,
        peer: &Peer,
        dst: SocketAddr,
    ) -> Result<Decision, Denial> {
        state.admit_inbound(
            self.inputs.config.mtls_mode.into(),
            self.current(state),
            peer,
            dst,
        )
    }
}

impl PodCtx {
    /// Registers an inbound connection for re-checks on policy updates.
    pub fn track(self: &Arc<Self>, id: u64, peer: Peer, dst: SocketAddr) -> Tracked {
        let conn = Arc::new(LiveConn {
            peer,
            dst,
            revoked: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, conn.clone());
        Tracked {
            pod: self.clone(),
            id,
            conn,
        }
    }

    /// Closes every live connection the current policies no longer allow.
    pub fn revalidate(&self, state: &MeshState) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (id, c) in live.iter() {
            if let Err(denial) = self.check(state, &c.peer, c.dst) {
                tracing::warn!(target: "access", id, pod = %self.workload.name, src = %c.peer.ip, dst = %c.dst,
                    policy = %denial.policy, "closing live connection: {}", denial.detail);
                let labels = [
                    self.workload.canonical_name(),
                    &self.workload.namespace,
                    &denial.policy,
                    "revoked",
                ];
                self.inputs.metrics.denied.with_label_values(&labels).inc();
                c.revoked.store(true, Ordering::Release);
                c.waker.wake();
            }
        }
    }

    /// Opens a connection to this pod's app at `dst` from the client's own address.
    async fn connect_app(&self, dst: SocketAddr, client: IpAddr) -> Result<TcpStream, Error> {
        let (SocketAddr::V4(dst), IpAddr::V4(client)) = (dst, client) else {
            return Err(Error::Ipv6(dst));
        };
        let capture = &self.inputs.capture;
        let timeout = self.inputs.config.connect_timeout;
        socket::connect_as(
            &self.netns,
            &self.source_ports,
            dst,
            client,
            timeout,
            |local| capture.exempt(local, dst),
        )
        .await
        .map_err(|e| Error::Connect(SocketAddr::V4(dst), Box::new(e)))
    }

    /// This pod as one end of a connection, at `addr`.
    fn party(&self, addr: Addr) -> Party {
        Party {
            addr: Some(addr),
            workload: Some(self.workload.clone()),
            principal: Some(self.identity.clone()),
        }
    }
}

/// A running pod proxy. Dropping it stops capture for the pod and closes its listeners;
/// connections already established run to completion.
pub struct PodProxy {
    pub ctx: Arc<PodCtx>,
    tasks: Vec<AbortHandle>,
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        self.ctx
            .inputs
            .capture
            .unenroll(self.ctx.netns.cookie(), self.ctx.ip);
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Socket(#[from] socket::Error),
    #[error(transparent)]
    Capture(#[from] capture::Error),
}

// === impl PodProxy ===

impl PodProxy {
    /// Binds the pod's listeners, then enrolls it in capture, then starts serving.
    pub fn start(
        inputs: Arc<ProxyInputs>,
        workload: Arc<Workload>,
        ip: Ipv4Addr,
        netns: Netns,
    ) -> Result<Self, StartError> {
        socket::prepare_return_path(&netns)?;
        let source_ports = socket::SourcePorts::of(&netns)?;
        // The pod's listeners, and so all of its connections, live on one worker: its runtime
        // is the one they register with.
        let worker = inputs.workers.next().clone();
        let (outbound, plaintext, hbone) = {
            let _on_worker = worker.enter();
            let outbound = socket::listen(
                &netns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)),
            )?;
            let plaintext = socket::listen(
                &netns,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT)),
            )?;
            let hbone = socket::listen(
                &netns,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT)),
            )?;
            (outbound, plaintext, hbone)
        };
        inputs.capture.enroll(&netns, ip, &plaintext)?;
        let identity = workload.identity(&inputs.config.trust_domain);
        inputs.secrets.prefetch(&identity);
        let ctx = Arc::new(PodCtx {
            inputs,
            workload,
            ip,
            identity,
            netns,
            source_ports,
            live: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            worker
                .spawn(accept_loop(
                    ctx.clone(),
                    outbound,
                    "outbound",
                    outbound::handle,
                ))
                .abort_handle(),
            worker
                .spawn(accept_loop(
                    ctx.clone(),
                    plaintext,
                    "inbound_plaintext",
                    inbound_plaintext::handle,
                ))
                .abort_handle(),
            worker
                .spawn(accept_loop(
                    ctx.clone(),
                    hbone,
                    "inbound",
                    inbound::serve_connection,
                ))
                .abort_handle(),
        ];
        Ok(Self { ctx, tasks })
    }
}

/// Accepts on `listener` until the pod proxy stops, handing each connection to `handle` on
/// its own task, inside a span naming the direction, connection id, pod and peer.
async fn accept_loop<F, Fut>(
    pod: Arc<PodCtx>,
    listener: TcpListener,
    direction: &'static str,
    handle: F,
) where
    F: Fn(Arc<PodCtx>, u64, TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Accept errors (e.g. out of file descriptors) must not spin at full speed.
                tracing::warn!(direction, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = pod.inputs.next_id();
        // Debug level: at the default level nothing inside a connection logs (its access-log
        // line carries its own fields), and an enabled span costs every idle connection a
        // few hundred bytes in the subscriber's registry.
        let span =
            tracing::debug_span!("conn", direction, id, pod = %pod.workload.name, peer = %peer);
        lanyard_core::runtime::spawn_in(span, handle(pod.clone(), id, stream, peer));
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, Fut: Future, F: FnOnce(A, B, C, D) -> Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn future_size5<A, B, C, D, E, Fut: Future, F: FnOnce(A, B, C, D, E) -> Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Each proxied connection keeps its task's future for its whole life (10k idle
    /// connections: 10k of them), so setup state must not stay inline. Was 768 B outbound
    /// and 1072 B inbound before setup moved out of them, then 528 and 464 B until the
    /// record's labels became enums, the copy lost a second buffer handle, and the outbound
    /// setup's result stopped outliving its `let` (a partly moved value keeps its slot).
    ///
    /// tokio allocates a task in steps of 128 B, with about 104 B of its own (tokio 1.54:
    /// header, scheduler handle, id, stage tag, trailer), so up to 408 B makes a 512 B task.
    /// heaptrack showed it: the 528 B outbound future made 640 B tasks, and 768 B ones
    /// while a (disabled) 40 B span was kept with it.
    #[test]
    fn connection_tasks_stay_small() {
        const BUDGET: usize = 408;
        let outbound = future_size(super::outbound::handle);
        let inbound = future_size5(super::inbound::handle_stream);
        eprintln!("outbound {outbound} B, inbound {inbound} B");
        assert!(outbound <= BUDGET, "outbound task future: {outbound} B");
        assert!(inbound <= BUDGET, "inbound task future: {inbound} B");
    }
}
