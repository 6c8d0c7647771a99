//! The policy engine the agent (L4) and the waypoint (L7) share: AuthorizationPolicy and
//! PeerAuthentication with Istio's semantics, validated from their wire form; and
//! RequestAuthentication (which JWTs are accepted), enforced at waypoints.

pub mod authn;
pub mod authz;
pub mod matcher;
pub mod peer;
pub mod wire;

#[cfg(test)]
mod tests;
