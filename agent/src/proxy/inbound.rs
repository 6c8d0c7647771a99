//! Inbound HBONE: mutual TLS as the pod's identity, then one tunnel per `CONNECT`, delivered
//! to the app from the client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lanyard_core::hbone::{self, copy_bidirectional, Copied, InboundRequest};
use lanyard_core::identity::Identity;
use lanyard_core::tls;
use tokio::net::TcpStream;
use tracing::{debug, debug_span, Instrument};

use lanyard_core::policy::authz::Reason;

use super::{Error, Peer, PodCtx};
use crate::metrics::{Addr, ConnInfo, ConnRecord, Party};
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
        handle_stream(pod.clone(), id, src_ip, peer_id.clone(), req).instrument(span)
    })
    .await;
    if let Err(e) = result {
        debug!("HBONE connection ended: {e}");
    }
}

async fn handle_stream(
    pod: Arc<PodCtx>,
    id: u64,
    src_ip: IpAddr,
    peer_id: Identity,
    req: InboundRequest,
) {
    let inputs = &pod.inputs;
    let state = inputs.state.borrow().clone();
    let src_workload = match src_ip {
        IpAddr::V4(v4) => state.workload_by_ip(v4).cloned(),
        IpAddr::V6(_) => None,
    };
    let info = ConnInfo {
        reporter: "destination",
        src: Party {
            addr: Some(Addr::Ip(src_ip)),
            workload: src_workload,
            principal: Some(peer_id.clone()),
        },
        dst: pod.party(Addr::Socket(req.authority)),
        security: "mutual_tls",
        ..Default::default()
    };
    let mut record = ConnRecord::open(&inputs.metrics, info);

    if req.authority.ip() != IpAddr::V4(pod.ip) {
        let e = Error::AuthorityMismatch(req.authority);
        req.refuse(http::StatusCode::BAD_REQUEST);
        return record.close(0, 0, e.response_flags(), Some(&e));
    }
    let peer = Peer {
        ip: src_ip,
        identity: Some(peer_id),
    };
    match pod.check(&state, &peer, req.authority) {
        Ok(decision) => {
            if let Reason::AllowedBy(rule) = &decision.reason {
                record.info.policy = Some(rule.to_string());
            }
        }
        Err(denial) => {
            record.denied(&denial.policy, Some(denial.detail.clone()), denial.reason);
            req.refuse(http::StatusCode::UNAUTHORIZED);
            let e = Error::Denied(denial.detail);
            return record.close(0, 0, e.response_flags(), Some(&e));
        }
    }
    // Connections can outlive many config updates; each would pin its state.
    drop(state);
    let tracked = pod.track(id, peer, req.authority);
    // Boxed: connect state is short-lived; only the copy stays inline for the stream's life.
    let mut app = match Box::pin(pod.connect_app(req.authority, src_ip)).await {
        Ok(s) => s,
        Err(e) => {
            req.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
            return record.close(0, 0, e.response_flags(), Some(&e));
        }
    };
    let stream = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            let e = Error::Tunnel(e);
            return record.close(0, 0, e.response_flags(), Some(&e));
        }
    };
    let mut copied = Copied::default();
    // Here the TCP side is the server: what it sends goes to the client.
    let result = tokio::select! {
        r = copy_bidirectional(&mut app, stream, &mut copied) => r.map_err(Error::Tunnel),
        _ = tracked.cancel.cancelled() => Err(Error::Revoked),
    };
    match result {
        Ok(()) => record.close(copied.tunnel_to_tcp, copied.tcp_to_tunnel, "-", None),
        Err(e) => {
            record.close(
                copied.tunnel_to_tcp,
                copied.tcp_to_tunnel,
                e.response_flags(),
                Some(&e),
            );
            socket::reset(app);
        }
    }
}
