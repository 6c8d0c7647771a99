//! The mesh as one node sees it: namespaces, workloads and services, indexed for the data
//! path. A `MeshState` is immutable once built; updates build a new one off to the side and
//! publish it whole (`watch::Sender<Arc<MeshState>>`), so readers never wait on a writer.

mod admit;
mod analysis;
mod endpoint_slice;
mod endpoints;
mod service;
mod service_entry;
mod traffic;
mod workload;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::json;

pub use admit::{Denial, Peer};
pub use analysis::{Code, Finding, Level, ALL_CODES};
pub use endpoint_slice::{EndpointSlice, SliceEndpoint, SERVICE_NAME_LABEL};
pub use service::{EndpointSource, Protocol, Service, ServicePort, StaticEndpoint, TargetPort};
pub use service_entry::ServiceEntry;
pub use traffic::{Applicable, Waypoint, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL};
pub use workload::{Workload, DATAPLANE_MODE_LABEL};

use crate::config::{Rejection, Resource, Snapshot};
use crate::policy::authn::RequestAuthentication;
use crate::policy::authz::{applies_to, evaluate, AuthorizationPolicy, Decision, Request};
use crate::policy::peer::{self, MtlsMode, PeerAuthentication};
use crate::traffic::{DestinationRule, VirtualService};

/// Mesh-wide settings that shape how objects are read.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trust_domain: String,
    pub cluster_domain: String,
    /// Policies here apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The state's lookup maps. Their keys come from config (names, addresses of pods and
/// services), never inserted from traffic, so a fast keyed hash serves: a waypoint's request
/// makes a dozen lookups, and the std hasher made each a SipHash of a name.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// namespace -> service name -> service port -> ready endpoints. Nested so that lookups borrow
/// `&str` keys instead of building owned tuple keys per connection.
type EndpointIndex = Map<String, Map<String, Map<u16, Box<[Endpoint]>>>>;

/// One endpoint of a service port: the workload and the port it listens on.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub port: u16,
}

#[derive(Debug, Default)]
pub struct MeshState {
    namespaces: Map<String, Namespace>,
    workloads: BTreeMap<String, Arc<Workload>>,
    by_ip: Map<Ipv4Addr, Arc<Workload>>,
    services: BTreeMap<(String, String), Arc<Service>>,
    by_vip: Map<Ipv4Addr, Arc<Service>>,
    /// (namespace, name, service port) -> ready endpoints.
    endpoints: EndpointIndex,
    rejections: Vec<Rejection>,
    trust_domain: String,
    cluster_domain: String,
    root_namespace: String,
    /// AuthorizationPolicies by namespace, as written (waypoints enforce these).
    authz: BTreeMap<String, Vec<Arc<AuthorizationPolicy>>>,
    /// The same, as a node agent enforces them (see `AuthorizationPolicy::for_l4`).
    authz_l4: BTreeMap<String, Vec<Arc<AuthorizationPolicy>>>,
    /// Workload UID -> the L4 policies that apply to it.
    applicable_l4: Map<String, Arc<[Arc<AuthorizationPolicy>]>>,
    peer_auth: Vec<PeerAuthentication>,
    /// EndpointSlices by (namespace, service name).
    slices: Map<(String, String), Vec<Arc<EndpointSlice>>>,
    service_entries: Vec<Arc<ServiceEntry>>,
    /// What the analyzers found (`analysis.rs`), rejections included.
    findings: Vec<Finding>,
    /// Services by fully-qualified host name.
    by_host: Map<String, Arc<Service>>,
    /// Each Kubernetes Service's host name, by namespace and name, so that a waypoint's
    /// request finds it without formatting it. (A ServiceEntry's service carries its host,
    /// and its name, the host, may equal a Service's: it is not keyed here.)
    host_names: Map<String, Map<String, String>>,
    virtual_services: Vec<Arc<VirtualService>>,
    request_authns: Vec<Arc<RequestAuthentication>>,
    destination_rules: Vec<Arc<DestinationRule>>,
    /// Per-request lookups of the waypoint, computed once per state (see `traffic.rs`).
    traffic_index: traffic::TrafficIndex,
}

// === impl MeshState ===

impl MeshState {
    pub fn build(snapshot: Snapshot, settings: &Settings) -> Self {
        let mut state = MeshState {
            rejections: snapshot.rejections,
            trust_domain: settings.trust_domain.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            root_namespace: settings.root_namespace.clone(),
            ..Default::default()
        };
        let mut entries = Vec::new();
        for resource in snapshot.resources.into_values() {
            match resource {
                Resource::Namespace(ns) => {
                    state.namespaces.insert(ns.name.clone(), ns);
                }
                Resource::Workload(w) => {
                    let w = Arc::new(w);
                    if let (Some(ip), false) = (w.ip, w.host_network) {
                        state.by_ip.insert(ip, w.clone());
                    }
                    state.workloads.insert(w.uid.clone(), w);
                }
                Resource::Service(s) => {
                    let s = Arc::new(s);
                    for vip in &s.vips {
                        state.by_vip.insert(*vip, s.clone());
                    }
                    state
                        .services
                        .insert((s.namespace.clone(), s.name.clone()), s);
                }
                Resource::EndpointSlice(e) => {
                    if let Some(svc) = &e.service {
                        state
                            .slices
                            .entry((e.namespace.clone(), svc.clone()))
                            .or_default()
                            .push(e);
                    }
                }
                Resource::ServiceEntry(e) => entries.push(e),
                Resource::AuthorizationPolicy(p) => {
                    // Unchanged (the common case): share it rather than copy it.
                    let l4 = p.for_l4().map_or_else(|| p.clone(), |(l4, _)| Arc::new(l4));
                    state
                        .authz_l4
                        .entry(p.namespace.clone())
                        .or_default()
                        .push(l4);
                    state.authz.entry(p.namespace.clone()).or_default().push(p);
                }
                Resource::PeerAuthentication(p) => state.peer_auth.push((*p).clone()),
                Resource::RequestAuthentication(r) => state.request_authns.push(r),
                Resource::VirtualService(v) => state.virtual_services.push(v),
                Resource::DestinationRule(d) => state.destination_rules.push(d),
            }
        }
        // After every Service: where an entry claims a Service's VIP or host, the Service wins.
        for s in entries.iter().flat_map(|e| &e.services) {
            for vip in &s.vips {
                state.by_vip.entry(*vip).or_insert_with(|| s.clone());
            }
            state
                .services
                .entry((s.namespace.clone(), s.name.clone()))
                .or_insert_with(|| s.clone());
        }
        state.service_entries = entries;
        for s in state.services.values() {
            let host = s.hostname(&state.cluster_domain);
            if s.host.is_none() {
                state
                    .host_names
                    .entry(s.namespace.clone())
                    .or_default()
                    .insert(s.name.clone(), host.clone());
            }
            // A wildcard entry names no one host.
            if !host.starts_with('*') && (s.host.is_none() || !state.by_host.contains_key(&host)) {
                state.by_host.insert(host, s.clone());
            }
        }
        state.traffic_index = state.index_traffic();
        state.endpoints = state.compute_endpoints();
        state.applicable_l4 = state
            .workloads
            .values()
            .map(|w| (w.uid.clone(), state.applicable_l4_for(w)))
            .collect();
        state.findings = state.analyze();
        state
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    pub fn rejections(&self) -> &[Rejection] {
        &self.rejections
    }

    /// The findings other than rejections (reported on their own), in log form.
    pub fn warnings(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.code != analysis::SCHEMA_VALIDATION_ERROR)
            .map(Finding::to_string)
            .collect()
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The L4 authorization decision for a connection to `w`, as a node agent makes it. The
    /// policies that apply to each workload are found once per state, not per connection.
    pub fn authorize_l4(&self, w: &Workload, req: &Request<'_>) -> Decision {
        match self.applicable_l4.get(&w.uid) {
            Some(ps) => evaluate(ps.iter().map(|p| p.as_ref()), req),
            // A workload this state does not know (e.g. already deleted): scope it now.
            None => evaluate(self.applicable_l4_for(w).iter().map(|p| p.as_ref()), req),
        }
    }

    /// The root namespace's and `w`'s namespace's L4 policies whose scope covers `w`.
    fn applicable_l4_for(&self, w: &Workload) -> Arc<[Arc<AuthorizationPolicy>]> {
        let root = self
            .authz_l4
            .get(&self.root_namespace)
            .into_iter()
            .flatten();
        let local = (w.namespace != self.root_namespace)
            .then(|| self.authz_l4.get(&w.namespace))
            .flatten()
            .into_iter()
            .flatten();
        root.chain(local)
            .filter(|p| applies_to(p, &self.root_namespace, &w.namespace, &w.labels))
            .cloned()
            .collect()
    }

    /// Whether plaintext to `port` of `w` is refused (PeerAuthentication STRICT).
    pub fn is_strict(&self, w: &Workload, port: u16, default: MtlsMode) -> bool {
        peer::is_strict(
            &self.peer_auth,
            &self.root_namespace,
            &w.namespace,
            &w.labels,
            port,
            default,
        )
    }

    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn workload_by_ip(&self, ip: Ipv4Addr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// Every workload, by UID.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads
            .values()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn service_by_vip(&self, ip: Ipv4Addr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// A service by its fully-qualified name (`name.namespace.svc.<domain>`).
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        self.by_host.get(host)
    }

    /// `svc`'s host name (`Service::hostname`): an entry's own, a Service's as computed when
    /// the state was built; a Service from elsewhere gets it formatted.
    pub fn host_name<'a>(&'a self, svc: &'a Service) -> Cow<'a, str> {
        if let Some(h) = &svc.host {
            return Cow::Borrowed(h);
        }
        self.host_names
            .get(&svc.namespace)
            .and_then(|by_name| by_name.get(&svc.name))
            .map_or_else(|| svc.hostname(&self.cluster_domain).into(), |h| h.into())
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// Ready endpoints of `svc`'s `port`. Called per connection to a VIP: the lookup borrows,
    /// and an empty answer is a slice, so nothing is allocated.
    pub fn endpoints(&self, svc: &Service, port: u16) -> &[Endpoint] {
        self.endpoints
            .get(&svc.namespace)
            .and_then(|by_name| by_name.get(&svc.name))
            .and_then(|by_port| by_port.get(&port))
            .map_or(&[], |eps| eps)
    }

    /// Workloads scheduled on `node` (meshed or not).
    pub fn workloads_on_node<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        self.workloads
            .values()
            .filter(move |w| w.node.as_deref() == Some(node))
    }

    /// Whether the mesh captures this workload's traffic: Istio's ambient rule. The pod label
    /// wins (`none` opts out, `ambient` opts in); otherwise the namespace label decides.
    pub fn is_captured(&self, w: &Workload) -> bool {
        if w.host_network || w.external {
            return false;
        }
        match w.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
            Some("none") => false,
            Some("ambient") => true,
            _ => self
                .namespaces
                .get(&w.namespace)
                .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
                .is_some_and(|m| m == "ambient"),
        }
    }

    /// The state as JSON for `/config_dump`. Written by hand: core types are not `Serialize`,
    /// so the wire form can change without the internal one.
    pub fn dump(&self) -> serde_json::Value {
        let workloads: Vec<_> = self
            .workloads
            .values()
            .map(|w| {
                json!({"uid": w.uid, "name": w.name, "namespace": w.namespace,
                       "serviceAccount": w.service_account, "node": w.node,
                       "ip": w.ip.map(|i| i.to_string()), "ready": w.ready,
                       "captured": self.is_captured(w),
                       "identity": w.identity(&self.trust_domain).to_string()})
            })
            .collect();
        let services: Vec<_> = self
            .services
            .values()
            .map(|s| {
                let ports: Vec<_> = s
                    .ports
                    .iter()
                    .map(|p| {
                        let eps: Vec<_> = self
                            .endpoints(s, p.port)
                            .iter()
                            .map(|e| format!("{}:{}", e.workload.ip.map(|i| i.to_string()).unwrap_or_default(), e.port))
                            .collect();
                        json!({"port": p.port, "name": p.name, "appProtocol": p.app_protocol, "endpoints": eps})
                    })
                    .collect();
                json!({"name": s.name, "namespace": s.namespace, "vips": s.vips.iter().map(|v| v.to_string()).collect::<Vec<_>>(), "ports": ports})
            })
            .collect();
        let mut namespaces: Vec<_> = self
            .namespaces
            .values()
            .map(|n| json!({"name": n.name, "labels": n.labels}))
            .collect();
        namespaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let rejections: Vec<_> = self.rejections.iter().map(|r| r.to_string()).collect();
        let policies: Vec<String> = self
            .authz
            .values()
            .flatten()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let peer: Vec<String> = self
            .peer_auth
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        json!({"trustDomain": self.trust_domain, "rootNamespace": self.root_namespace, "namespaces": namespaces,
               "workloads": workloads, "services": services, "authorizationPolicies": policies,
               "peerAuthentications": peer, "rejected": rejections, "warnings": self.warnings()})
    }
}

#[cfg(test)]
mod registry_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_documents, Store};

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-1, namespace: demo, uid: u1, labels: {app: backend}}
spec:
  nodeName: n1
  serviceAccountName: backend
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.1.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-2, namespace: demo, uid: u2, labels: {app: backend, istio.io/dataplane-mode: none}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.1.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: other, uid: u3}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.1.1.9}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

    fn state() -> MeshState {
        let snap = Store::default().update(parse_documents(MESH).unwrap());
        assert!(snap.rejections.is_empty(), "{:?}", snap.rejections);
        MeshState::build(snap, &Settings::default())
    }

    #[test]
    fn endpoints_resolve_named_target_ports() {
        let s = state();
        let svc = s.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        let mut eps: Vec<_> = s
            .endpoints(svc, 80)
            .iter()
            .map(|e| (e.workload.name.clone(), e.port))
            .collect();
        eps.sort();
        assert_eq!(
            eps,
            vec![("backend-1".into(), 8080), ("backend-2".into(), 9090)]
        );
        assert_eq!(
            svc.hostname(s.cluster_domain()),
            "backend.demo.svc.cluster.local"
        );
    }

    #[test]
    fn capture_follows_namespace_and_pod_labels() {
        let s = state();
        let get = |ip: &str| s.workload_by_ip(ip.parse().unwrap()).unwrap().clone();
        assert!(s.is_captured(&get("10.1.1.2")));
        assert!(!s.is_captured(&get("10.1.2.2")), "pod label none opts out");
        assert!(!s.is_captured(&get("10.1.1.9")), "namespace without label");
        assert_eq!(
            get("10.1.1.2").identity("cluster.local").to_string(),
            "spiffe://cluster.local/ns/demo/sa/backend"
        );
        assert_eq!(s.workloads_on_node("n1").count(), 2);
    }
}
