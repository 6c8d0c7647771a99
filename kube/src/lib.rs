//! The Kubernetes config source: kube-rs watchers over the objects Lanyard reads, feeding the
//! same `Store` and `MeshState` as the file source, so that a cluster and a file holding the
//! same objects give the same mesh.
//!
//! - [`kinds`]: what is watched (group, version, plural) and for whom;
//! - [`prune`]: the fields kept of each object (the rest is dropped on arrival);
//! - [`source`]: the watchers, the merged object set, and state publication;
//! - [`events`]: rejected objects posted as Kubernetes Events (by one component);
//! - [`start`]: starting the file or the Kubernetes source, as a binary's flags say;
//! - [`metrics`]: the source's health on a registry;
//! - `testing` (feature): an in-process API server for tests;
//! - `schema` (feature): offline validation of manifests against Kubernetes and CRD schemas.
//!
//! Nothing here knows about eBPF or the data path; `lanyard-core` knows nothing of this crate.

pub mod events;
pub mod kinds;
pub mod metrics;
pub mod prune;
#[cfg(feature = "schema")]
pub mod schema;
pub mod source;
pub mod start;
#[cfg(feature = "testing")]
pub mod testing;

pub use source::{KubeSource, Scope, SourceStatus};
pub use start::{start, start_with, ConfigSource, Running};
