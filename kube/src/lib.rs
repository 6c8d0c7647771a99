//! The Kubernetes config source: kube-rs watchers over the objects Lanyard reads, feeding the
//! same `Store` and `MeshState` as the file source, so that a cluster and a file holding the
//! same objects give the same mesh.
//!
//! - [`kinds`]: what is watched (group, version, plural) and for whom;
//! - [`prune`]: the fields kept of each object (the rest is dropped on arrival);
//! - [`source`]: the watchers, the merged object set, and state publication.
//!
//! Nothing here knows about eBPF or the data path; `lanyard-core` knows nothing of this crate.

pub mod kinds;
pub mod prune;
pub mod source;

pub use source::{KubeSource, SourceStatus};
