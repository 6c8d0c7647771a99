//! Which endpoints each service port has: computed once per state from the service's source
//! (a selector, EndpointSlices, a ServiceEntry's list), so that a connection to a VIP only
//! looks them up.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{
    Endpoint, EndpointIndex, EndpointSource, MeshState, Service, ServicePort, TargetPort, Workload,
};

// === impl MeshState (endpoints) ===

impl MeshState {
    pub(super) fn compute_endpoints(&self) -> EndpointIndex {
        let mut out = EndpointIndex::default();
        for svc in self.services.values() {
            let by_port = out
                .entry(svc.namespace.clone())
                .or_default()
                .entry(svc.name.clone())
                .or_default();
            // The selected pods, found once for all of the service's ports.
            let members: Vec<&Arc<Workload>> = match &svc.endpoints {
                EndpointSource::Selector(selector) => self
                    .workloads
                    .values()
                    .filter(|w| w.namespace == svc.namespace && w.ready && w.ip.is_some())
                    .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .collect(),
                _ => Vec::new(),
            };
            for sp in &svc.ports {
                let eps: Vec<Endpoint> = match &svc.endpoints {
                    EndpointSource::Selector(_) => members
                        .iter()
                        .filter_map(|w| {
                            let port = match &sp.target_port {
                                TargetPort::Number(n) => *n,
                                TargetPort::Named(name) => *w.named_ports.get(name)?,
                            };
                            Some(Endpoint {
                                workload: (*w).clone(),
                                port,
                            })
                        })
                        .collect(),
                    EndpointSource::Slices => self.slice_endpoints(svc, sp),
                    EndpointSource::Static(statics) => statics
                        .iter()
                        .map(|e| {
                            let port = sp
                                .name
                                .as_ref()
                                .and_then(|n| e.ports.get(n).copied())
                                .unwrap_or(match sp.target_port {
                                    TargetPort::Number(n) => n,
                                    TargetPort::Named(_) => sp.port,
                                });
                            let workload = self.endpoint_workload(
                                svc,
                                e.address,
                                None,
                                &e.labels,
                                e.service_account.as_deref(),
                            );
                            Endpoint { workload, port }
                        })
                        .collect(),
                    EndpointSource::Passthrough => continue,
                };
                by_port.insert(sp.port, eps.into());
            }
        }
        out
    }

    /// Ready endpoints of a selector-less Service's port, from its EndpointSlices.
    fn slice_endpoints(&self, svc: &Service, sp: &ServicePort) -> Vec<Endpoint> {
        let Some(slices) = self.slices.get(&(svc.namespace.clone(), svc.name.clone())) else {
            return Vec::new();
        };
        let name = sp.name.as_deref().unwrap_or_default();
        let mut eps = Vec::new();
        let mut seen = HashSet::new();
        for slice in slices {
            let Some(port) = slice.port(name) else {
                continue;
            };
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                // The same address in two slices (a controller's handover) is one endpoint.
                if !seen.insert((e.address, port)) {
                    continue;
                }
                let none = BTreeMap::new();
                let workload =
                    self.endpoint_workload(svc, e.address, e.target.as_deref(), &none, None);
                eps.push(Endpoint { workload, port });
            }
        }
        eps
    }

    /// The workload behind an endpoint address: the pod with that IP when there is one (so a
    /// meshed pod is reached over HBONE with its identity), else an external workload that
    /// traffic reaches as plain TCP.
    fn endpoint_workload(
        &self,
        svc: &Service,
        ip: Ipv4Addr,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
    ) -> Arc<Workload> {
        if let Some(w) = self.by_ip.get(&ip) {
            return w.clone();
        }
        Arc::new(Workload::external(
            &svc.namespace,
            &svc.name,
            ip,
            name,
            labels,
            service_account,
        ))
    }
}
