//! `lanyard-waypoint`: an optional L7 proxy for one namespace. Agents send it the traffic of
//! services (or workloads) bound to it with `istio.io/use-waypoint`, over HBONE; it routes by
//! VirtualService, applies DestinationRule policy and L7 AuthorizationPolicy, and forwards
//! over its own HBONE connections to the chosen endpoints.
//!
//! The waypoint knows nothing of eBPF, network namespaces or Kubernetes API clients.

pub mod admin;
pub mod authn;
pub mod body;
pub mod config;
pub mod forward;
pub mod h2c;
pub mod inbound;
pub mod lb;
pub mod local;
pub mod metrics;
pub mod otlp;
pub mod pool;
pub mod route;
pub mod tcp;
pub mod trace;
pub mod upstream;
pub mod workers;

pub type Secrets = lanyard_core::secrets::SecretManager<lanyard_core::ca::CaClient>;
