//! Turns a full set of documents into validated resources, one object at a time.
//!
//! An invalid object is rejected alone. If an earlier version of the same object was valid,
//! that version keeps serving: a typo must never silently drop a pod or widen access.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::k8s::Namespace as K8sNamespace;

use super::object::{self, Object, ObjectRef, Parsed, Rejection};
use crate::policy::authn::{self, RequestAuthentication};
use crate::policy::authz::AuthorizationPolicy;
use crate::policy::peer::PeerAuthentication;
use crate::policy::wire;
use crate::state::{EndpointSlice, Namespace, Service, ServiceEntry, Workload};
use crate::traffic::{DestinationRule, VirtualService};

/// A validated object in our internal form.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Namespace(Namespace),
    Workload(Workload),
    Service(Service),
    EndpointSlice(Arc<EndpointSlice>),
    ServiceEntry(Arc<ServiceEntry>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    RequestAuthentication(Arc<RequestAuthentication>),
    VirtualService(Arc<VirtualService>),
    DestinationRule(Arc<DestinationRule>),
}

/// What one update produced: every resource that serves, and every rejection.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub resources: BTreeMap<ObjectRef, Resource>,
    pub rejections: Vec<Rejection>,
}

#[derive(Debug)]
pub struct Store {
    /// Resolves short host names in traffic objects.
    cluster_domain: String,
    last_good: BTreeMap<ObjectRef, Resource>,
}

// === impl Store ===

impl Default for Store {
    fn default() -> Self {
        Store::new("cluster.local")
    }
}

impl Store {
    pub fn new(cluster_domain: &str) -> Self {
        Store {
            cluster_domain: cluster_domain.to_string(),
            last_good: BTreeMap::new(),
        }
    }

    /// Applies the complete current set of documents (objects absent from it are deleted).
    pub fn update(&mut self, docs: impl IntoIterator<Item = serde_json::Value>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for doc in docs {
            let rejection = match object::parse(doc) {
                Parsed::Ignored => continue,
                Parsed::Object(oref, obj) => match convert(&oref, &obj, &self.cluster_domain) {
                    Ok(resource) => {
                        snapshot.resources.insert(oref, resource);
                        continue;
                    }
                    Err(r) => r,
                },
                Parsed::Rejected(r) => r,
            };
            if let Some(previous) = self.last_good.get(&rejection.object) {
                snapshot
                    .resources
                    .insert(rejection.object.clone(), previous.clone());
                snapshot.rejections.push(Rejection {
                    message: format!("{}; keeping its last valid version", rejection.message),
                    ..rejection
                });
            } else {
                snapshot.rejections.push(rejection);
            }
        }
        self.last_good = snapshot.resources.clone();
        snapshot
    }
}

fn convert(oref: &ObjectRef, obj: &Object, cluster_domain: &str) -> Result<Resource, Rejection> {
    match obj {
        Object::Namespace(ns) => Ok(Resource::Namespace(namespace(ns))),
        Object::Pod(pod) => Workload::try_from_pod(oref, pod).map(Resource::Workload),
        Object::Service(svc) => Service::try_from_k8s(oref, svc).map(Resource::Service),
        Object::EndpointSlice(s) => {
            EndpointSlice::try_from_k8s(oref, s).map(|s| Resource::EndpointSlice(Arc::new(s)))
        }
        Object::ServiceEntry(e) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            ServiceEntry::validate(ns, &oref.name, &e.metadata.labels, &e.spec)
                .map(|e| Resource::ServiceEntry(Arc::new(e)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
        Object::AuthorizationPolicy(p) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            wire::authorization_policy(ns, &oref.name, &p.metadata.annotations, &p.spec)
                .map(|p| Resource::AuthorizationPolicy(Arc::new(p)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
        Object::PeerAuthentication(p) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            wire::peer_authentication(ns, &oref.name, &p.spec)
                .map(|p| Resource::PeerAuthentication(Arc::new(p)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
        Object::RequestAuthentication(p) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            authn::request_authentication(ns, &oref.name, &p.spec)
                .map(|p| Resource::RequestAuthentication(Arc::new(p)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
        Object::VirtualService(v) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            VirtualService::validate(ns, &oref.name, &v.spec, cluster_domain)
                .map(|v| Resource::VirtualService(Arc::new(v)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
        Object::DestinationRule(d) => {
            let ns = oref.namespace.as_deref().unwrap_or_default();
            DestinationRule::validate(ns, &oref.name, &d.spec, cluster_domain)
                .map(|d| Resource::DestinationRule(Arc::new(d)))
                .map_err(|(field, msg)| Rejection::new(oref, field, msg))
        }
    }
}

fn namespace(ns: &K8sNamespace) -> Namespace {
    Namespace {
        name: ns.metadata.name.clone().unwrap_or_default(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": port}]}]},
               "status": {"podIP": "10.0.0.1"}})
    }

    #[test]
    fn invalid_object_is_rejected_alone() {
        let mut store = Store::default();
        let s = store.update([pod("good", json!(80)), pod("bad", json!(-1))]);
        assert_eq!(s.resources.len(), 1);
        assert_eq!(s.rejections.len(), 1);
        assert_eq!(
            s.rejections[0].to_string(),
            "Pod default/bad: spec.containers[0].ports[0].containerPort: -1 is not a port number"
        );
    }

    #[test]
    fn a_broken_policy_keeps_its_last_valid_version_rather_than_widening_access() {
        let policy = |ns: &str| {
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "allow-ui", "namespace": "demo"},
                   "spec": {"rules": [{"from": [{"source": {"namespaces": [ns]}}]}]}})
        };
        let mut store = Store::default();
        let first = store.update([policy("ui")]);
        assert!(first.rejections.is_empty());
        let second = store.update([policy("bad*ns*")]);
        assert_eq!(
            first.resources, second.resources,
            "the valid version keeps enforcing"
        );
        let r = &second.rejections[0];
        assert_eq!(r.object.to_string(), "AuthorizationPolicy demo/allow-ui");
        assert_eq!(r.field, "spec.rules[0].from[0].source.namespaces[0]");
    }

    #[test]
    fn keeps_last_good_version_of_a_broken_object() {
        let mut store = Store::default();
        let first = store.update([pod("a", json!(80))]);
        let second = store.update([pod("a", json!("x"))]);
        assert_eq!(first.resources, second.resources);
        assert!(second.rejections[0]
            .message
            .contains("keeping its last valid version"));
        // Deleting it for real removes it.
        assert!(store.update([]).resources.is_empty());
    }
}
