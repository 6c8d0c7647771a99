//! Traffic objects in the mesh state: which VirtualService and DestinationRule govern a host,
//! which endpoints a subset selects, and which waypoint a service or workload uses.

use super::Map;
use std::sync::Arc;

use super::{Endpoint, MeshState, Service, Workload};
use crate::policy::authn::RequestAuthentication;
use crate::policy::authz::{AuthorizationPolicy, Scope};
use crate::traffic::{DestinationRule, VirtualService};

/// `istio.io/use-waypoint` on a namespace, service or pod names the waypoint its traffic goes
/// through; `none` opts a service or pod out of its namespace's waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Names the namespace of that waypoint when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";

/// A waypoint, named the way the label names it: the Service `name` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
}

/// What a waypoint looks up per request, indexed once per state.
#[derive(Debug, Default)]
pub(super) struct TrafficIndex {
    hosts: Map<String, HostTraffic>,
    authz: TargetIndex<AuthorizationPolicy>,
    authn: TargetIndex<RequestAuthentication>,
}

#[derive(Debug)]
struct HostTraffic {
    virtual_service: Option<Arc<VirtualService>>,
    destination_rules: Vec<Arc<DestinationRule>>,
}

/// The kinds a waypoint policy's targetRefs may name; others never apply to a waypoint.
const TARGET_KINDS: [&str; 3] = ["GatewayClass", "Gateway", "Service"];

/// Policies naming one object, per kind (in `TARGET_KINDS` order).
type ByKind<P> = [Vec<Arc<P>>; 3];

/// Policies by the object their targetRefs name: namespace → name → per kind.
#[derive(Debug)]
struct TargetIndex<P> {
    by_ns: Map<String, Map<String, ByKind<P>>>,
}

impl<P> Default for TargetIndex<P> {
    fn default() -> Self {
        TargetIndex {
            by_ns: Map::default(),
        }
    }
}

// === impl TargetIndex ===

impl<P> TargetIndex<P> {
    fn insert(&mut self, ns: &str, kind: &str, name: &str, p: &Arc<P>) {
        let Some(k) = TARGET_KINDS.iter().position(|t| *t == kind) else {
            return;
        };
        let list = &mut self
            .by_ns
            .entry(ns.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()[k];
        // A policy naming the same target twice still applies once.
        if !list.iter().any(|q| Arc::ptr_eq(q, p)) {
            list.push(p.clone());
        }
    }

    fn get(&self, ns: &str, kind: usize, name: &str) -> &[Arc<P>] {
        self.by_ns
            .get(ns)
            .and_then(|by_name| by_name.get(name))
            .map_or(&[], |kinds| &kinds[kind])
    }

    /// The root namespace's GatewayClass policies, the waypoint's Gateway policies, then the
    /// service's.
    fn for_waypoint(
        &self,
        root: &str,
        waypoint: &Waypoint,
        svc: Option<&Service>,
    ) -> Applicable<'_, P> {
        Applicable([
            self.get(root, 0, "istio-waypoint"),
            self.get(&waypoint.namespace, 1, &waypoint.name),
            svc.map_or(&[], |svc| self.get(&svc.namespace, 2, &svc.name)),
        ])
    }
}

/// The policies that apply at a waypoint, in order: the index's own lists, borrowed, so that
/// a request's lookup copies nothing.
#[derive(Debug)]
pub struct Applicable<'a, P>([&'a [Arc<P>]; 3]);

impl<P> Clone for Applicable<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Applicable<'_, P> {}

impl<'a, P> Applicable<'a, P> {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|list| list.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a Arc<P>> + Clone + 'a {
        self.0.into_iter().flatten()
    }
}

// === impl MeshState (traffic) ===

impl MeshState {
    /// The VirtualService routing `host` (fully qualified). When several claim it, the most
    /// specific host wins, then one in the service's own namespace, then the first by name.
    /// Service hosts are answered from the index built with the state.
    pub fn virtual_service_for(&self, host: &str) -> Option<&Arc<VirtualService>> {
        match self.traffic_index.hosts.get(host) {
            Some(t) => t.virtual_service.as_ref(),
            None => self.find_virtual_service(host),
        }
    }

    fn find_virtual_service(&self, host: &str) -> Option<&Arc<VirtualService>> {
        let svc_ns = self.by_host.get(host).map(|s| s.namespace.as_str());
        self.virtual_services
            .iter()
            .filter_map(|v| {
                let spec = v
                    .hosts
                    .iter()
                    .filter(|h| h.matches(host))
                    .map(|h| h.specificity())
                    .max()?;
                Some((spec, Some(v.namespace.as_str()) == svc_ns, v))
            })
            .max_by(|a, b| {
                (a.0, a.1)
                    .cmp(&(b.0, b.1))
                    // Earlier name wins: reverse so that max picks it.
                    .then_with(|| (&b.2.namespace, &b.2.name).cmp(&(&a.2.namespace, &a.2.name)))
            })
            .map(|(_, _, v)| v)
    }

    /// The DestinationRule for `host` as seen from a proxy in `proxy_ns`: Istio looks in the
    /// proxy's namespace, then the service's, then the root namespace.
    pub fn destination_rule_for(
        &self,
        host: &str,
        proxy_ns: &str,
    ) -> Option<&Arc<DestinationRule>> {
        let svc_ns = self.by_host.get(host).map(|s| s.namespace.as_str());
        // Service hosts: only the rules that match them, found once per state.
        let candidates = match self.traffic_index.hosts.get(host) {
            Some(t) => &t.destination_rules[..],
            None => &self.destination_rules[..],
        };
        let best_in = |ns: &str| {
            candidates
                .iter()
                .filter(|d| d.namespace == ns && d.host.matches(host))
                .max_by_key(|d| d.host.specificity())
        };
        best_in(proxy_ns)
            .or_else(|| svc_ns.and_then(best_in))
            .or_else(|| best_in(&self.root_namespace))
    }

    /// Indexes what a waypoint looks up per request: per service host, its VirtualService and
    /// the DestinationRules matching it; per target, the policies whose targetRefs name it.
    pub(super) fn index_traffic(&self) -> TrafficIndex {
        let hosts = self
            .by_host
            .keys()
            .map(|host| {
                let t = HostTraffic {
                    virtual_service: self.find_virtual_service(host).cloned(),
                    destination_rules: self
                        .destination_rules
                        .iter()
                        .filter(|d| d.host.matches(host))
                        .cloned()
                        .collect(),
                };
                (host.clone(), t)
            })
            .collect();
        let mut authz = TargetIndex::default();
        for p in self.authz.values().flatten() {
            if let Scope::TargetRefs(refs) = &p.scope {
                for r in refs {
                    authz.insert(&p.namespace, &r.kind, &r.name, p);
                }
            }
        }
        let mut authn = TargetIndex::default();
        for p in &self.request_authns {
            if let Scope::TargetRefs(refs) = &p.scope {
                for r in refs {
                    authn.insert(&p.namespace, &r.kind, &r.name, p);
                }
            }
        }
        TrafficIndex {
            hosts,
            authz,
            authn,
        }
    }

    /// Ready endpoints of `svc`'s `port` whose workloads carry all of `labels`.
    pub fn subset_endpoints<'a>(
        &'a self,
        svc: &Service,
        port: u16,
        labels: &'a std::collections::BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints(svc, port).iter().filter(move |e| {
            labels
                .iter()
                .all(|(k, v)| e.workload.labels.get(k) == Some(v))
        })
    }

    /// The waypoint that traffic addressed to `svc` goes through: the service's label, else
    /// its namespace's.
    pub fn waypoint_for_service(&self, svc: &Service) -> Option<Waypoint> {
        self.waypoint_from_labels(&svc.labels, &svc.namespace)
    }

    /// The waypoint that traffic addressed to the workload itself goes through. Only the
    /// pod's own label binds it: a namespace's waypoint serves service traffic, as Istio's
    /// default waypoint traffic type does.
    pub fn waypoint_for_workload(&self, w: &Workload) -> Option<Waypoint> {
        w.labels.get(USE_WAYPOINT_LABEL)?;
        self.waypoint_from_labels(&w.labels, &w.namespace)
    }

    pub(super) fn waypoint_from_labels(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
        namespace: &str,
    ) -> Option<Waypoint> {
        let (name, ns_override) = match labels.get(USE_WAYPOINT_LABEL) {
            Some(name) => (name, labels.get(USE_WAYPOINT_NAMESPACE_LABEL)),
            None => {
                let ns_labels = self.namespace_labels(namespace)?;
                (
                    ns_labels.get(USE_WAYPOINT_LABEL)?,
                    ns_labels.get(USE_WAYPOINT_NAMESPACE_LABEL),
                )
            }
        };
        if name == "none" || name.is_empty() {
            return None;
        }
        Some(Waypoint {
            namespace: ns_override.map_or(namespace, |s| s.as_str()).to_string(),
            name: name.clone(),
        })
    }

    /// The AuthorizationPolicies a waypoint enforces for traffic to `svc` (or to a workload,
    /// when `svc` is None): those whose targetRefs name the Service, the waypoint's Gateway,
    /// or (in the root namespace) the `istio-waypoint` GatewayClass, as in Istio ambient.
    pub fn waypoint_policies(
        &self,
        waypoint: &Waypoint,
        svc: Option<&Service>,
    ) -> Applicable<'_, AuthorizationPolicy> {
        self.traffic_index
            .authz
            .for_waypoint(&self.root_namespace, waypoint, svc)
    }

    /// The RequestAuthentications a waypoint applies for traffic to `svc`, by the same rule.
    pub fn waypoint_request_authns(
        &self,
        waypoint: &Waypoint,
        svc: Option<&Service>,
    ) -> Applicable<'_, RequestAuthentication> {
        self.traffic_index
            .authn
            .for_waypoint(&self.root_namespace, waypoint, svc)
    }

    pub fn virtual_services(&self) -> &[Arc<VirtualService>] {
        &self.virtual_services
    }

    pub fn destination_rules(&self) -> &[Arc<DestinationRule>] {
        &self.destination_rules
    }
}
