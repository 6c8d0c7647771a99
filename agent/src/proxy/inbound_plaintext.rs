//! Inbound plaintext: connections from outside the mesh, steered here by sk_lookup with the
//! original destination kept as the local address. PeerAuthentication STRICT refuses them;
//! otherwise AuthorizationPolicy decides (without a principal), and the connection reaches the
//! app from the client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{Error, Peer, PodCtx};
use crate::capture::maps::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::metrics::{Addr, ConnInfo, ConnRecord, Party, Reporter, Security};
use crate::socket;

pub(super) async fn handle(pod: Arc<PodCtx>, id: u64, mut client: TcpStream, peer: SocketAddr) {
    let inputs = &pod.inputs;
    let Ok(orig) = client.local_addr() else {
        return;
    };
    let state = inputs.state.borrow().clone();
    let src_workload = match peer.ip() {
        IpAddr::V4(v4) => state.workload_by_ip(v4).cloned(),
        IpAddr::V6(_) => None,
    };
    let info = ConnInfo {
        reporter: Reporter::Destination,
        src: Party {
            addr: Some(Addr::Socket(peer)),
            workload: src_workload,
            principal: None,
        },
        dst: pod.party(Addr::Socket(orig)),
        security: Security::None,
        ..Default::default()
    };
    let mut record = ConnRecord::open(&inputs.metrics, info);

    if [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT].contains(&orig.port()) {
        let e = Error::AgentPort(orig.port());
        record.close(0, 0, e.response_flags(), Some(&e));
        return socket::reset(client);
    }
    let who = Peer {
        ip: peer.ip(),
        identity: None,
    };
    if let Err(denial) = pod.check(&state, &who, orig) {
        record.denied(&denial.policy, Some(denial.detail.clone()), denial.reason);
        let e = Error::Denied(denial.detail);
        record.close(0, 0, e.response_flags(), Some(&e));
        return socket::reset(client);
    }
    // Connections can outlive many config updates; each would pin its state.
    drop(state);
    let tracked = pod.track(id, who, orig);
    let mut app = match Box::pin(pod.connect_app(orig, peer.ip())).await {
        Ok(s) => s,
        Err(e) => {
            record.close(0, 0, e.response_flags(), Some(&e));
            return socket::reset(client);
        }
    };
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut app) => r.map_err(Error::Io),
        _ = tracked.revoked() => Err(Error::Revoked),
    };
    match result {
        Ok((from_client, to_client)) => record.close(from_client, to_client, "-", None),
        Err(e) => {
            record.close(0, 0, e.response_flags(), Some(&e));
            socket::reset(client);
            socket::reset(app);
        }
    }
}
