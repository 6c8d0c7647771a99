//! Inbound plaintext: connections from outside the mesh, steered here by sk_lookup with the
//! original destination kept as the local address. Refused under STRICT mTLS; otherwise
//! delivered to the app from the client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info_span, Instrument};

use super::{accept_backoff, Error, PodCtx};
use crate::capture::maps::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::config::MtlsMode;
use crate::metrics::{ConnInfo, ConnRecord};
use crate::socket;

pub async fn run(pod: Arc<PodCtx>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                accept_backoff(e).await;
                continue;
            }
        };
        let id = pod.inputs.next_id();
        let span = info_span!("inbound_plaintext", id, pod = %pod.workload.name);
        tokio::spawn(handle(pod.clone(), stream, peer).instrument(span));
    }
}

async fn handle(pod: Arc<PodCtx>, mut client: TcpStream, peer: SocketAddr) {
    let inputs = &pod.inputs;
    let Ok(orig) = client.local_addr() else {
        return;
    };
    let state = inputs.state.borrow().clone();
    let mut info = ConnInfo {
        reporter: "destination",
        src_addr: peer.to_string(),
        dst_addr: orig.to_string(),
        security: "none",
        ..Default::default()
    };
    if let IpAddr::V4(v4) = peer.ip() {
        if let Some(w) = state.workload_by_ip(v4) {
            info.src_workload = w.canonical_name().to_string();
            info.src_namespace = w.namespace.clone();
        }
    }
    pod.describe(&mut info, false);
    let record = ConnRecord::open(&inputs.metrics, info);

    let refused = if [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT].contains(&orig.port()) {
        Some(Error::AgentPort(orig.port()))
    } else if inputs.config.mtls_mode == MtlsMode::Strict {
        Some(Error::StrictMtls)
    } else {
        None
    };
    if let Some(e) = refused {
        record.close(0, 0, e.response_flags(), Some(&e));
        return socket::reset(client);
    }
    let mut app = match pod.connect_app(orig, peer.ip()).await {
        Ok(s) => s,
        Err(e) => {
            record.close(0, 0, e.response_flags(), Some(&e));
            return socket::reset(client);
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut app).await {
        Ok((from_client, to_client)) => record.close(from_client, to_client, "-", None),
        Err(e) => {
            let e = Error::Io(e);
            record.close(0, 0, e.response_flags(), Some(&e));
            socket::reset(client);
            socket::reset(app);
        }
    }
}
