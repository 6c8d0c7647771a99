//! What a test declares (pods, services, namespaces), and the mesh config file rendered from it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::json;

use crate::{Node, Pod};

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            node: 0,
            service_account: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
        }
    }

    pub fn node(mut self, node: usize) -> Self {
        self.node = node;
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub selector: BTreeMap<String, String>,
    /// (service port, target port, port name)
    pub ports: Vec<(u16, u16, String)>,
}

impl ServiceSpec {
    pub fn new(name: &str, namespace: &str, vip: Ipv4Addr) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            vip,
            selector: [("app".to_string(), name.to_string())].into(),
            ports: Vec::new(),
        }
    }

    pub fn selector(mut self, k: &str, v: &str) -> Self {
        self.selector = [(k.to_string(), v.to_string())].into();
        self
    }

    /// An opaque TCP port (`tcp-<port>`).
    pub fn port(mut self, port: u16, target: u16) -> Self {
        self.ports.push((port, target, format!("tcp-{port}")));
        self
    }

    /// A port named with Istio's protocol convention (`http-<port>`, `grpc-<port>`, …).
    pub fn named_port(mut self, protocol: &str, port: u16, target: u16) -> Self {
        self.ports
            .push((port, target, format!("{protocol}-{port}")));
        self
    }
}

/// A random pod UID in Kubernetes' format.
pub fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn render(
    namespaces: &[(String, bool)],
    waypoints: &[String],
    pods: &[Pod],
    services: &[ServiceSpec],
    nodes: &[Node],
) -> String {
    let mut docs = Vec::new();
    for (name, ambient) in namespaces {
        let mut labels = serde_json::Map::new();
        if *ambient {
            labels.insert("istio.io/dataplane-mode".into(), "ambient".into());
        }
        if waypoints.contains(name) {
            labels.insert("istio.io/use-waypoint".into(), "waypoint".into());
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
    }
    for p in pods {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.spec.name, "namespace": p.spec.namespace, "uid": p.uid, "labels": p.spec.labels},
            "spec": {"nodeName": nodes[p.node].name, "serviceAccountName": p.spec.service_account,
                     "containers": [{"name": "app", "image": "e2e-tool"}]},
            "status": {"phase": "Running", "podIP": p.ip.to_string(),
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    for s in services {
        let ports: Vec<_> = s
            .ports
            .iter()
            .map(|(p, t, name)| json!({"name": name, "port": p, "targetPort": t}))
            .collect();
        docs.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {"clusterIP": s.vip.to_string(), "selector": s.selector, "ports": ports},
        }));
    }
    // YAML is a superset of JSON: one JSON document per YAML document.
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}
