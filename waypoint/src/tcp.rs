//! Opaque TCP through the waypoint: L4 authorization, `tcp` VirtualService routes with
//! weights, then a byte copy between the inbound tunnel and one to the chosen endpoint.

use lanyard_core::hbone::H2Io;
use lanyard_core::policy::authz::Request as AuthzRequest;
use lanyard_core::state::{MeshState, Waypoint};
use lanyard_core::traffic::virtual_service::{Destination, WeightedDestination};
use tracing::debug;

use crate::forward::Plan;
use crate::route::{pick_weighted, Downstream, Inputs, Target};

pub async fn forward(
    inputs: &Inputs,
    state: &MeshState,
    waypoint: &Waypoint,
    target: &Target,
    down: &Downstream,
    mut inbound: H2Io,
) {
    let svc = match target {
        Target::Service(s) => Some(s.as_ref()),
        Target::Workload(_) => None,
    };
    let principal = down.src_id.principal();
    let d = state.authorize_at_waypoint(
        waypoint,
        svc,
        &AuthzRequest {
            principal: Some(principal),
            source_namespace: Some(down.src_id.namespace()),
            source_service_account: Some(down.src_id.service_account()),
            source_ip: down.src_ip,
            destination_ip: down.authority.ip(),
            destination_port: down.authority.port(),
            http: None,
        },
    );
    if !d.allowed {
        debug!(policy = %d.policy(), "TCP connection denied");
        return;
    }
    let port = down.authority.port();
    let plan = match target {
        Target::Workload(w) => Plan::to_workload(inputs, w, port, None),
        Target::Service(s) => {
            let host = s.hostname(state.cluster_domain());
            let labels = match &down.src_ip {
                std::net::IpAddr::V4(ip) => state.workload_by_ip(*ip).map(|w| &w.labels),
                _ => None,
            };
            let routed = state
                .virtual_service_for(&host)
                .and_then(|vs| vs.tcp_route(port, labels))
                .map(|r| pick_weighted(&r.route).clone());
            let wd = match routed {
                Some(wd) => wd,
                None => WeightedDestination {
                    destination: Destination {
                        host,
                        subset: None,
                        port: Some(port),
                    },
                    weight: 1,
                    headers: Default::default(),
                },
            };
            Plan::to_service(inputs, state, &wd, None, port)
        }
    };
    let plan = match plan {
        Ok(p) => p,
        Err(l) => return debug!("TCP connection not routed: {}", l.body),
    };
    let addrs = plan.addrs();
    let Some(addr) = plan
        .cluster
        .pick(&addrs, &plan.lb, Some(&down.src_ip.to_string()), None)
    else {
        return debug!("TCP connection: no healthy upstream");
    };
    let mut outbound = match inputs.upstream.tunnel(addr, plan.connect_timeout).await {
        Ok(x) => x,
        Err(e) => return debug!("TCP connection to {addr}: {e}"),
    };
    match tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        Ok((up, down)) => debug!(up, down, %addr, "TCP connection done"),
        Err(e) => debug!(%addr, "TCP connection failed: {e}"),
    }
}
