//! Inbound HBONE: mutual TLS as the pod's identity, then one tunnel per `CONNECT`, delivered
//! to the app from the client's own address.

use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;

use lanyard_core::hbone::{self, Copied, InboundRequest, Tunnel};
use lanyard_core::identity::Identity;
use lanyard_core::runtime::spawn_in;
use lanyard_core::tls;
use tokio::net::TcpStream;
use tracing::{debug, debug_span};

use lanyard_core::policy::authz::Reason;

use super::{Error, Peer, PodCtx, Tracked};
use crate::metrics::{Addr, ConnInfo, ConnRecord, Party, Reporter, Security};
use crate::socket;

pub(super) async fn serve_connection(pod: Arc<PodCtx>, _id: u64, tcp: TcpStream, peer: SocketAddr) {
    let inputs = &pod.inputs;
    let fail = |reason: &str, detail: &dyn std::fmt::Display| {
        inputs
            .metrics
            .hbone_handshake_failures
            .with_label_values(&[reason])
            .inc();
        debug!(reason, "HBONE connection refused: {detail}");
    };
    let cert = match inputs.secrets.fetch(&pod.identity).await {
        Ok(c) => c,
        Err(e) => return fail("no_certificate", &e),
    };
    let _ = tcp.set_nodelay(true);
    // Boxed: the TLS handshake state is large and only needed once per pooled connection.
    let accepted = Box::pin(tokio::time::timeout(
        inputs.config.handshake_timeout,
        tls::accept(tcp, &cert, &inputs.config.trust_domain),
    ))
    .await;
    let (tls, peer_id) = match accepted {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return fail("tls", &e),
        Err(_) => return fail("timeout", &"TLS handshake timed out"),
    };
    let src_ip = peer.ip();
    let settings = inputs.config.hbone;
    let result = hbone::serve(tls, settings, |req| {
        let id = pod.inputs.next_id();
        // Debug level, as the connection's span (see `accept_loop`).
        let span = debug_span!("tunnel", id, authority = %req.authority);
        spawn_in(
            span,
            handle_stream(pod.clone(), id, src_ip, peer_id.clone(), req),
        );
    })
    .await;
    if let Err(e) = result {
        debug!("HBONE connection ended: {e}");
    }
}

/// One tunnel. Admission, the app connection and the CONNECT answer run boxed, made here
/// rather than inside the returned future: an `async fn` keeps its arguments (the request's
/// headers among them) for its whole life, and only the copy's state should stay in the
/// task for the tunnel's life.
pub(super) fn handle_stream(
    pod: Arc<PodCtx>,
    id: u64,
    src_ip: IpAddr,
    peer_id: Identity,
    req: InboundRequest,
) -> impl Future<Output = ()> + Send {
    let admission = Box::pin(admit(pod, id, src_ip, peer_id, req));
    async move {
        let Some(mut a) = admission.await else {
            return;
        };
        let mut copied = Copied::default();
        // Here the TCP side is the server: what it sends goes to the client.
        let result = poll_fn(|cx| {
            if a.tracked.poll_revoked(cx).is_ready() {
                return Poll::Ready(Err(Error::Revoked));
            }
            a.tunnel
                .poll_copy(cx, &mut a.app, &mut copied)
                .map_err(Error::Tunnel)
        })
        .await;
        match result {
            Ok(()) => a
                .record
                .close(copied.tunnel_to_tcp, copied.tcp_to_tunnel, "-", None),
            Err(e) => {
                a.record.close(
                    copied.tunnel_to_tcp,
                    copied.tcp_to_tunnel,
                    e.response_flags(),
                    Some(&e),
                );
                socket::reset(a.app);
            }
        }
    }
}

/// A tunnel the pod accepted, connected to its app.
struct Admitted {
    record: ConnRecord,
    tracked: Tracked,
    app: TcpStream,
    tunnel: Tunnel,
}

/// Checks the tunnel against the pod's address and policy, connects to the app from the
/// client's address and answers the CONNECT; None when refused (answered and recorded).
async fn admit(
    pod: Arc<PodCtx>,
    id: u64,
    src_ip: IpAddr,
    peer_id: Identity,
    req: InboundRequest,
) -> Option<Admitted> {
    let inputs = &pod.inputs;
    let state = inputs.state.borrow().clone();
    let src_workload = match src_ip {
        IpAddr::V4(v4) => state.workload_by_ip(v4).cloned(),
        IpAddr::V6(_) => None,
    };
    let info = ConnInfo {
        reporter: Reporter::Destination,
        src: Party {
            addr: Some(Addr::Ip(src_ip)),
            workload: src_workload,
            principal: Some(peer_id.clone()),
        },
        dst: pod.party(Addr::Socket(req.authority)),
        security: Security::MutualTls,
        ..Default::default()
    };
    let mut record = ConnRecord::open(&inputs.metrics, info);

    if req.authority.ip() != IpAddr::V4(pod.ip) {
        let e = Error::AuthorityMismatch(req.authority);
        req.refuse(http::StatusCode::BAD_REQUEST);
        record.close(0, 0, e.response_flags(), Some(&e));
        return None;
    }
    let peer = Peer {
        ip: src_ip,
        identity: Some(peer_id),
    };
    match pod.check(&state, &peer, req.authority) {
        Ok(decision) => {
            if let Reason::AllowedBy(rule) = &decision.reason {
                record.info.policy = Some(rule.to_string().into());
            }
        }
        Err(denial) => {
            record.denied(&denial.policy, Some(denial.detail.clone()), denial.reason);
            req.refuse(http::StatusCode::UNAUTHORIZED);
            let e = Error::Denied(denial.detail);
            record.close(0, 0, e.response_flags(), Some(&e));
            return None;
        }
    }
    // Connections can outlive many config updates; each would pin its state.
    drop(state);
    let tracked = pod.track(id, peer, req.authority);
    let app = match pod.connect_app(req.authority, src_ip).await {
        Ok(s) => s,
        Err(e) => {
            req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
            record.close(0, 0, e.response_flags(), Some(&e));
            return None;
        }
    };
    match req.accept() {
        Ok(stream) => Some(Admitted {
            record,
            tracked,
            app,
            tunnel: Tunnel::new(stream),
        }),
        Err(e) => {
            let e = Error::Tunnel(e);
            record.close(0, 0, e.response_flags(), Some(&e));
            None
        }
    }
}
