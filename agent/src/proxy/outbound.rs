//! Outbound: a captured connection from the pod, to a mesh workload over HBONE, or through
//! unchanged when the destination is outside the mesh.

use std::future::{poll_fn, Future};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use lanyard_core::hbone::{ConnectRequest, Copied, StreamGuard, Tunnel, HBONE_DEFAULT_PORT};
use lanyard_core::identity::Identity;
use lanyard_core::state::{EndpointSource, MeshState, Service, Waypoint, Workload};
use rand::Rng;
use tokio::net::TcpStream;
use tracing::debug;

use super::pool::PoolKey;
use super::{Error, PodCtx};
use crate::capture::maps::MARK_AGENT;
use crate::metrics::{Addr, ConnInfo, ConnRecord, Party, Reporter, Security};
use crate::socket;

/// Where a connection goes once resolved.
struct Target {
    /// The address the app's bytes reach: an endpoint, or (through a waypoint) the address
    /// the app dialed, VIP included.
    addr: SocketAddrV4,
    workload: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    /// Whether the destination is captured: then HBONE, else plain TCP.
    meshed: bool,
    /// The waypoint instance the tunnel goes to instead, with `addr` as its authority.
    waypoint: Option<Arc<Workload>>,
}

/// A ready instance of `wp`: an endpoint of the waypoint's Service.
fn waypoint_instance(state: &MeshState, wp: &Waypoint) -> Result<Arc<Workload>, Error> {
    let host = format!(
        "{}.{}.svc.{}",
        wp.name,
        wp.namespace,
        state.cluster_domain()
    );
    let none = || Error::NoHealthyUpstream {
        service: host.clone(),
        port: HBONE_DEFAULT_PORT,
    };
    let svc = state.service_by_host(&host).ok_or_else(none)?;
    let port = svc
        .port(HBONE_DEFAULT_PORT)
        .or_else(|| svc.ports.first())
        .ok_or_else(none)?;
    let eps = state.endpoints(svc, port.port);
    if eps.is_empty() {
        return Err(none());
    }
    Ok(eps[rand::rng().random_range(0..eps.len())].workload.clone())
}

fn resolve(state: &MeshState, orig: SocketAddrV4) -> Result<Target, Error> {
    if let Some(svc) = state.service_by_vip(*orig.ip()) {
        // Bound to a waypoint: the waypoint chooses the endpoint (and applies L7 policy).
        if let Some(wp) = state.waypoint_for_service(svc) {
            return Ok(Target {
                addr: orig,
                workload: None,
                service: Some(svc.clone()),
                meshed: true,
                waypoint: Some(waypoint_instance(state, &wp)?),
            });
        }
        // A passthrough entry (resolved by the client) names the destination, nothing more.
        let passthrough = matches!(svc.endpoints, EndpointSource::Passthrough);
        if svc.port(orig.port()).is_some() && !passthrough {
            let eps = state.endpoints(svc, orig.port());
            if eps.is_empty() {
                return Err(Error::NoHealthyUpstream {
                    service: svc.hostname(state.cluster_domain()),
                    port: orig.port(),
                });
            }
            let ep = &eps[rand::rng().random_range(0..eps.len())];
            let ip = ep
                .workload
                .ip
                .expect("endpoints only hold workloads with an IP");
            return Ok(Target {
                addr: SocketAddrV4::new(ip, ep.port),
                meshed: state.is_captured(&ep.workload),
                workload: Some(ep.workload.clone()),
                service: Some(svc.clone()),
                waypoint: None,
            });
        }
    }
    let workload = state.workload_by_ip(*orig.ip()).cloned();
    let waypoint = match workload
        .as_ref()
        .and_then(|w| state.waypoint_for_workload(w))
    {
        Some(wp) => Some(waypoint_instance(state, &wp)?),
        None => None,
    };
    Ok(Target {
        addr: orig,
        meshed: waypoint.is_some() || workload.as_ref().is_some_and(|w| state.is_captured(w)),
        workload,
        service: None,
        waypoint,
    })
}

/// One outbound connection. Where it goes is decided here, synchronously, before the
/// returned future exists: none of the decision's locals (the mesh state among them) stay
/// in the task for the connection's life.
pub(super) fn handle(
    pod: Arc<PodCtx>,
    _id: u64,
    mut app: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let admitted = admit(&pod, peer);
    async move {
        let Some((_, route)) = &admitted else {
            return socket::reset(app);
        };
        let mut copied = Copied::default();
        let result = match *route {
            // Setup (certificate, pooled dial, CONNECT) runs boxed: its state is large and
            // short-lived, and would otherwise stay inline in every connection's task.
            // Bound in a `let`, so that the setup's result is gone before the copy starts.
            Route::Hbone { addr, ref peer } => 'tunnel: {
                let (mut tunnel, _guard) = match Box::pin(open_tunnel(&pod, addr, peer)).await {
                    Ok(t) => t,
                    Err(e) => break 'tunnel Err(e),
                };
                poll_fn(|cx| tunnel.poll_copy(cx, &mut app, &mut copied))
                    .await
                    .map_err(Error::from)
            }
            // Boxed: a plain TCP copy's state is larger, and would size every task.
            Route::Passthrough(addr) => {
                Box::pin(passthrough(&pod, &mut app, addr, &mut copied)).await
            }
        };
        // Taken apart only now: moving the record out earlier would give it a second slot
        // in the task's state, as captured values keep theirs for the task's whole life.
        let Some((record, _)) = admitted else {
            unreachable!("checked above")
        };
        match result {
            Ok(()) => record.close(copied.tcp_to_tunnel, copied.tunnel_to_tcp, "-", None),
            Err(e) => {
                debug!("outbound failed: {e}");
                record.close(
                    copied.tcp_to_tunnel,
                    copied.tunnel_to_tcp,
                    e.response_flags(),
                    Some(&e),
                );
                socket::reset(app);
            }
        }
    }
}

/// How a resolved connection leaves.
enum Route {
    /// A tunnel to `addr` through the peer's agent (or its waypoint), which must prove `id`.
    Hbone {
        addr: SocketAddrV4,
        peer: HbonePeer,
    },
    Passthrough(SocketAddrV4),
}

struct HbonePeer {
    ip: Ipv4Addr,
    id: Identity,
}

/// Resolves the original destination and opens the connection's record; `None` when it
/// cannot go anywhere (the failure is recorded).
fn admit(pod: &PodCtx, peer: SocketAddr) -> Option<(ConnRecord, Route)> {
    let inputs = &pod.inputs;
    let state = inputs.state.borrow().clone();
    let mut info = ConnInfo {
        reporter: Reporter::Source,
        src: pod.party(Addr::Socket(SocketAddr::from((pod.ip, peer.port())))),
        security: Security::Unknown,
        ..Default::default()
    };
    let orig = match peer {
        SocketAddr::V4(v4) => inputs.capture.original_destination(pod.netns.cookie(), v4),
        SocketAddr::V6(_) => None,
    };
    let target = orig
        .ok_or(Error::NoOriginalDestination(peer))
        .and_then(|orig| resolve(&state, orig));
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            info.dst.addr = orig.map(|o| Addr::Socket(o.into()));
            ConnRecord::open(&inputs.metrics, info).close(0, 0, e.response_flags(), Some(&e));
            return None;
        }
    };
    // Through a waypoint, the peer this connection reaches (and proves its identity) is the
    // waypoint; the waypoint reports the request's real destination.
    let peer = target.waypoint.as_ref().or(target.workload.as_ref());
    let peer_id = peer
        .filter(|_| target.meshed)
        .map(|w| w.identity(state.trust_domain()));
    info.dst = Party {
        addr: Some(Addr::Socket(target.addr.into())),
        workload: peer.cloned(),
        principal: peer_id.clone(),
    };
    info.dst_service = target.service.clone();
    info.security = if target.meshed {
        Security::MutualTls
    } else {
        Security::Unknown
    };
    let record = ConnRecord::open(&inputs.metrics, info);
    let route = match (peer, peer_id) {
        (Some(w), Some(id)) => match w.ip {
            Some(ip) => Route::Hbone {
                addr: target.addr,
                peer: HbonePeer { ip, id },
            },
            None => {
                let e = Error::NoHealthyUpstream {
                    service: w.name.clone(),
                    port: HBONE_DEFAULT_PORT,
                };
                record.close(0, 0, e.response_flags(), Some(&e));
                return None;
            }
        },
        _ => Route::Passthrough(target.addr),
    };
    Some((record, route))
}

/// A tunnel to `addr` through `peer`, on a pooled connection.
async fn open_tunnel(
    pod: &PodCtx,
    addr: SocketAddrV4,
    peer: &HbonePeer,
) -> Result<(Tunnel, StreamGuard), Error> {
    let inputs = &pod.inputs;
    let cert = inputs.secrets.fetch(&pod.identity).await?;
    let key = PoolKey {
        src_ip: pod.ip,
        src_id: pod.identity.clone(),
        dst_id: peer.id.clone(),
        dst: SocketAddrV4::new(peer.ip, HBONE_DEFAULT_PORT),
    };
    let req = ConnectRequest {
        authority: SocketAddr::V4(addr),
        headers: Default::default(),
    };
    let (stream, guard) = inputs.pool.connect(&key, &pod.netns, &cert, req).await?;
    Ok((Tunnel::new(stream), guard))
}

async fn passthrough(
    pod: &PodCtx,
    app: &mut TcpStream,
    addr: SocketAddrV4,
    copied: &mut Copied,
) -> Result<(), Error> {
    let timeout = pod.inputs.config.connect_timeout;
    let mut upstream = socket::connect(&pod.netns, SocketAddr::V4(addr), MARK_AGENT, timeout)
        .await
        .map_err(|e| Error::Connect(SocketAddr::V4(addr), Box::new(e)))?;
    let result = tokio::io::copy_bidirectional(app, &mut upstream).await;
    if let Ok((up, down)) = result {
        (copied.tcp_to_tunnel, copied.tunnel_to_tcp) = (up, down);
    }
    result.map(|_| ()).map_err(|e| {
        socket::reset(upstream);
        Error::Io(e)
    })
}
