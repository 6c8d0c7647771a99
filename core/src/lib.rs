//! What the Lanyard agent and waypoint share.
//!
//! - [`config`]: config sources (a local file now) and per-object validation;
//! - [`state`]: the immutable, indexed mesh state built from them;
//! - [`identity`]: SPIFFE identities;
//! - [`tls`]: certificates and the mTLS configurations HBONE uses;
//! - [`ca`]: Istio's certificate service (protocol and client);
//! - [`secrets`]: per-identity certificates on a node: fetched, cached, renewed;
//! - [`hbone`]: HTTP/2 CONNECT tunnels, server and client;
//! - [`traffic`]: VirtualService and DestinationRule, validated and matched.
//!
//! Nothing here knows about eBPF, network namespaces or Kubernetes API clients.

pub mod ca;
pub mod config;
pub mod hbone;
pub mod identity;
pub mod policy;
pub mod secrets;
pub mod state;
pub mod tls;
pub mod traffic;
