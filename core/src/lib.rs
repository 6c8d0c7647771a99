//! What the Lanyard agent and waypoint share.
//!
//! - [`config`]: config sources (a local file now) and per-object validation;
//! - [`state`]: the immutable, indexed mesh state built from them;
//! - [`identity`]: SPIFFE identities;
//! - [`tls`]: certificates and the mTLS configurations HBONE uses;
//! - [`ca`]: Istio's certificate service (protocol and client);
//! - [`secrets`]: per-identity certificates on a node: fetched, cached, renewed;
//! - [`hbone`]: HTTP/2 CONNECT tunnels, server and client;
//! - [`traffic`]: VirtualService and DestinationRule, validated and matched;
//! - [`heap`]: returning freed heap to the system; [`runtime`]: the async runtime;
//! - [`access_log`]: the JSON access-log lines of connections and requests, written in batches.
//!
//! Nothing here knows about eBPF, network namespaces or Kubernetes API clients.

pub mod access_log;
pub mod ca;
pub mod config;
pub mod hbone;
pub mod heap;
pub mod identity;
pub mod policy;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod tls;
pub mod traffic;
