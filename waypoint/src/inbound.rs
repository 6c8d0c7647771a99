//! Inbound HBONE: mutual TLS as the waypoint's identity, then per `CONNECT` either HTTP
//! (served by hyper, HTTP/1.1 or HTTP/2 detected from the preface) or opaque TCP, as the
//! destination port's protocol says.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use lanyard_core::hbone::{self, H2Io, InboundRequest};
use lanyard_core::identity::Identity;
use lanyard_core::runtime::spawn_in;
use lanyard_core::state::Protocol;
use lanyard_core::tls;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, warn, Instrument};

use crate::route::{self, Downstream, Inputs, Target};
use crate::tcp;

pub async fn serve(listener: TcpListener, inputs: Arc<Inputs>, secrets: crate::Secrets) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accepting: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let inputs = inputs.clone();
        let secrets = secrets.clone();
        tokio::spawn(
            async move { connection(inputs, secrets, tcp, peer).await }
                .instrument(info_span!("hbone", %peer)),
        );
    }
}

async fn connection(
    inputs: Arc<Inputs>,
    secrets: crate::Secrets,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let config = &inputs.config;
    let cert = match secrets.fetch(&config.identity).await {
        Ok(c) => c,
        Err(e) => return warn!("no certificate for the waypoint identity: {e}"),
    };
    let _ = tcp.set_nodelay(true);
    let accepted = tokio::time::timeout(
        config.handshake_timeout,
        tls::accept(tcp, &cert, &config.trust_domain),
    )
    .await;
    let (tls, peer_id) = match accepted {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return debug!("TLS refused: {e}"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    let result = hbone::serve(tls, config.hbone, |req| {
        let span = info_span!("tunnel", authority = %req.authority, src = %peer_id);
        spawn_in(span, tunnel(inputs.clone(), peer, peer_id.clone(), req));
    })
    .await;
    if let Err(e) = result {
        debug!("HBONE connection ended: {e}");
    }
}

async fn tunnel(inputs: Arc<Inputs>, peer: SocketAddr, src_id: Identity, req: InboundRequest) {
    let state = inputs.state.borrow().clone();
    let authority = req.authority;
    let Some(target) = Target::resolve(&state, authority) else {
        debug!("refused: {authority} is neither a service nor a workload");
        return req.refuse(http::StatusCode::BAD_REQUEST);
    };
    let protocol = match &target {
        Target::Service(s) => s
            .port(authority.port())
            .map_or(Protocol::Tcp, |p| p.protocol()),
        // Workload-addressed traffic: the protocol of a service port that targets it.
        Target::Workload(_) => Protocol::Http1,
    };
    let stream = match req.accept() {
        Ok(s) => s,
        Err(e) => return debug!("accepting tunnel: {e}"),
    };
    let down = Arc::new(Downstream {
        src_ip: peer.ip(),
        src_id,
        authority,
        protocol: "http",
    });
    match protocol {
        Protocol::Tcp => {
            tcp::forward(
                &inputs,
                &state,
                &inputs.config.waypoint,
                &target,
                &down,
                H2Io::new(stream),
            )
            .await
        }
        Protocol::Http1 | Protocol::Http2 => {
            let io = TokioIo::new(H2Io::new(stream));
            let svc = service_fn(move |r| route::handle(inputs.clone(), down.clone(), r));
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
                debug!("HTTP connection ended: {e}");
            }
        }
    }
}
