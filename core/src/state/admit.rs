//! The admission decisions the data path makes, in one place so that the agent, the waypoint
//! and `lanyardctl explain` cannot disagree: L4 at a destination's node agent, and
//! AuthorizationPolicy at a waypoint.

use std::net::{IpAddr, SocketAddr};

use super::{MeshState, Service, Waypoint, Workload};
use crate::identity::Identity;
use crate::policy::authz::{evaluate, Decision, Request};
use crate::policy::peer::MtlsMode;

/// Who is connecting, as policy sees it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    /// None for plaintext.
    pub identity: Option<Identity>,
}

/// Why a connection is refused or closed by policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `ns/name` of the deciding policy (or `PeerAuthentication` for STRICT mTLS).
    pub policy: String,
    pub detail: String,
    /// A fixed label for metrics.
    pub reason: &'static str,
}

// === impl MeshState ===

impl MeshState {
    /// The decision for a connection from `peer` to `w` at `dst`, as the destination's node
    /// agent enforces it: PeerAuthentication for plaintext, then L4 AuthorizationPolicy.
    pub fn admit_inbound(
        &self,
        default: MtlsMode,
        w: &Workload,
        peer: &Peer,
        dst: SocketAddr,
    ) -> Result<Decision, Denial> {
        if peer.identity.is_none() && self.is_strict(w, dst.port(), default) {
            return Err(Denial {
                policy: "PeerAuthentication".into(),
                detail: "plaintext refused: STRICT mTLS".into(),
                reason: "strict_mtls",
            });
        }
        let req = Request {
            principal: peer.identity.as_ref().map(Identity::principal),
            source_namespace: peer.identity.as_ref().map(Identity::namespace),
            source_service_account: peer.identity.as_ref().map(Identity::service_account),
            source_ip: peer.ip,
            destination_ip: dst.ip(),
            destination_port: dst.port(),
            http: None,
        };
        let d = self.authorize_l4(w, &req);
        if d.allowed {
            Ok(d)
        } else {
            Err(Denial {
                policy: d.policy(),
                detail: d.reason.to_string(),
                reason: "authorization",
            })
        }
    }

    /// The AuthorizationPolicy decision of `waypoint` for a request to `svc` (a workload
    /// when None). `req.http` carries the request; the peer is the real client. The
    /// waypoint's HTTP path makes the same two calls itself, so that it can skip building
    /// the request's attributes when `waypoint_policies` is empty.
    pub fn authorize_at_waypoint(
        &self,
        waypoint: &Waypoint,
        svc: Option<&Service>,
        req: &Request<'_>,
    ) -> Decision {
        evaluate(
            self.waypoint_policies(waypoint, svc)
                .iter()
                .map(|p| p.as_ref()),
            req,
        )
    }

    /// The waypoint as a destination sees it: one of its instances, with the identity the
    /// waypoint's pods run as. None when the waypoint has no ready instance.
    pub fn waypoint_peer(&self, waypoint: &Waypoint) -> Option<Peer> {
        let svc = self
            .services
            .get(&(waypoint.namespace.clone(), waypoint.name.clone()))?;
        let port = svc.ports.first()?.port;
        let w = &self.endpoints(svc, port).first()?.workload;
        Some(Peer {
            ip: IpAddr::V4(w.ip?),
            identity: Some(w.identity(&self.trust_domain)),
        })
    }
}
