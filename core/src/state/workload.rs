//! A meshable workload (a pod), converted from its wire form once per update.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use crate::config::k8s::Pod;

use crate::config::{ObjectRef, Rejection};
use crate::identity::Identity;

/// `istio.io/dataplane-mode` on a namespace or pod: `ambient` opts in, `none` opts a pod out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports, for Services whose `targetPort` is a name.
    pub named_ports: BTreeMap<String, u16>,
    pub ready: bool,
    pub host_network: bool,
    /// Not a pod: an endpoint address from an EndpointSlice or ServiceEntry that no pod has.
    /// Never captured, so always reached as plain TCP.
    pub external: bool,
    /// The identity last derived from the fields above; see [`Workload::identity`].
    pub identity: IdentityCache,
}

/// A workload's identity, derived once: each outbound connection records its peer's, and
/// deriving it anew allocates five times. Not part of what a workload is: two workloads
/// that differ only here are equal.
#[derive(Clone, Debug, Default)]
pub struct IdentityCache(OnceLock<Identity>);

impl PartialEq for IdentityCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for IdentityCache {}

// === impl Workload ===

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        match self.identity.0.get() {
            // The trust domain is the state's, not the workload's: an identity cached under
            // another one is not used. Not replaced either: that takes a change of mesh
            // settings, after which this is the slow path, never a wrong answer.
            Some(id) if id.trust_domain() == trust_domain => id.clone(),
            _ => {
                let id = Identity::new(trust_domain, &self.namespace, &self.service_account);
                let _ = self.identity.0.set(id.clone());
                id
            }
        }
    }

    /// Istio's workload name: the `app` label owner is not known here, so the pod name, or
    /// the `app.kubernetes.io/name` / `app` label when set, as istio's canonical name does.
    pub fn canonical_name(&self) -> &str {
        self.labels
            .get("service.istio.io/canonical-name")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .or_else(|| self.labels.get("app"))
            .map(String::as_str)
            .unwrap_or(&self.name)
    }

    pub fn try_from_pod(object: &ObjectRef, pod: &Pod) -> Result<Self, Rejection> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
            Rejection::new(
                object,
                "metadata.uid",
                "is required to find the pod's network namespace",
            )
        })?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ip = match status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|s| !s.is_empty())
        {
            Some(raw) => Some(raw.parse::<Ipv4Addr>().map_err(|_| {
                Rejection::new(
                    object,
                    "status.podIP",
                    format!("{raw:?} is not an IPv4 address"),
                )
            })?),
            None => None,
        };
        let mut named_ports = BTreeMap::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        Rejection::new(
                            object,
                            format!("spec.containers[{ci}].ports[{pi}].containerPort"),
                            format!("{} is not a port number", p.container_port),
                        )
                    })?;
                if let Some(name) = &p.name {
                    named_ports.insert(name.clone(), port);
                }
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Running");
        let not_ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
        let ready = phase == "Running" && !not_ready && meta.deletion_timestamp.is_none();
        Ok(Workload {
            uid,
            name: meta.name.clone().unwrap_or_default(),
            namespace: object.namespace.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            node: spec.and_then(|s| s.node_name.clone()),
            ip,
            labels: meta.labels.clone().unwrap_or_default(),
            named_ports,
            ready,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            external: false,
            identity: IdentityCache::default(),
        })
    }

    /// The stand-in for an endpoint address outside the known pods, named after what
    /// published it (`ip` when nothing names it).
    pub fn external(
        namespace: &str,
        service: &str,
        ip: Ipv4Addr,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
    ) -> Self {
        Workload {
            uid: format!("{namespace}/{service}/{ip}"),
            name: name.map_or_else(|| ip.to_string(), str::to_string),
            namespace: namespace.to_string(),
            service_account: service_account.unwrap_or("default").to_string(),
            node: None,
            ip: Some(ip),
            labels: labels.clone(),
            named_ports: BTreeMap::new(),
            ready: true,
            host_network: false,
            external: true,
            identity: IdentityCache::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_derived_once_per_trust_domain() {
        let w = Workload::external(
            "ns",
            "svc",
            Ipv4Addr::new(10, 0, 0, 1),
            None,
            &BTreeMap::new(),
            Some("sa"),
        );
        let a = w.identity("cluster.local");
        let b = w.identity("cluster.local");
        assert_eq!(a.uri(), "spiffe://cluster.local/ns/ns/sa/sa");
        assert!(a.same_allocation(&b), "second call derives it again");
        let other = w.identity("example.org");
        assert_eq!(other.uri(), "spiffe://example.org/ns/ns/sa/sa");
        assert_eq!(w.identity("cluster.local"), a);
    }
}
