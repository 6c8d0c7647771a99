//! `lanyardctl waypoint render`: the Kubernetes objects that run a waypoint for a namespace,
//! as YAML for `kubectl apply -f -`.

use clap::Subcommand;
use serde_json::json;

use crate::{Error, Outcome};

#[derive(Subcommand)]
pub enum Cmd {
    /// Print a waypoint's ServiceAccount, Deployment and Service, and the label that binds
    /// the namespace's services to it.
    Render {
        /// The namespace the waypoint serves.
        #[arg(short = 'n', long)]
        namespace: String,
        /// The waypoint's name (what `istio.io/use-waypoint` names).
        #[arg(long, default_value = "waypoint")]
        name: String,
        #[arg(long, default_value = "ghcr.io/lanyard-mesh/lanyard-waypoint:0.1.0")]
        image: String,
        /// The CA the waypoint gets its certificate from.
        #[arg(long, default_value = "lanyard-ca.lanyard-system.svc:15012")]
        ca_address: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Also print the Namespace label that sends its services' traffic through it.
        #[arg(long)]
        enroll: bool,
    },
}

pub fn run(cmd: Cmd) -> Result<Outcome, Error> {
    let Cmd::Render {
        namespace,
        name,
        image,
        ca_address,
        replicas,
        enroll,
    } = cmd;
    let objects = render(&namespace, &name, &image, &ca_address, replicas, enroll);
    for o in objects {
        let text = serde_yaml::to_string(&o).map_err(|e| Error::Encode(e.to_string()))?;
        print!("---\n{text}");
    }
    Ok(Outcome::Ok)
}

/// The objects, in apply order. The pod opts out of capture (it is a proxy), and carries the
/// label Istio puts on waypoint pods so that tools recognize it.
pub fn render(
    ns: &str,
    name: &str,
    image: &str,
    ca_address: &str,
    replicas: u32,
    enroll: bool,
) -> Vec<serde_json::Value> {
    let labels = json!({"gateway.networking.k8s.io/gateway-name": name, "app.kubernetes.io/name": "lanyard-waypoint"});
    let mut pod_labels = labels.clone();
    pod_labels["istio.io/dataplane-mode"] = json!("none");
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": ns, "labels": labels}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
          "replicas": replicas,
          "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
          "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
              "serviceAccountName": name,
              "containers": [{
                "name": "waypoint",
                "image": image,
                "args": ["--name", name, "--service-account", name],
                "env": [
                  {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                  {"name": "LANYARD_CA_ADDRESS", "value": ca_address}
                ],
                "ports": [
                  {"name": "hbone", "containerPort": 15008},
                  {"name": "metrics", "containerPort": 15020}
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15020}},
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
              }]
            }
          }
        }}),
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
          "selector": {"gateway.networking.k8s.io/gateway-name": name},
          "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "all"}]
        }}),
    ];
    if enroll {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"istio.io/use-waypoint": name}}}));
    }
    out
}

#[cfg(test)]
mod tests {
    use lanyard_core::config::Store;
    use lanyard_core::state::{MeshState, Settings};

    #[test]
    fn rendered_waypoint_is_what_the_mesh_state_recognizes() {
        let mut docs = super::render("demo", "waypoint", "img", "ca:15012", 1, true);
        // A pod the Deployment would create, so the Service has an endpoint.
        docs.push(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "waypoint-1", "namespace": "demo", "uid": "u1",
                         "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "waypoint", "containers": [{"name": "waypoint"}]},
            "status": {"podIP": "10.0.0.9"}}));
        let snap = Store::default().update(docs);
        assert!(snap.rejections.is_empty(), "{:?}", snap.rejections);
        let state = MeshState::build(snap, &Settings::default());
        let svc = state.service("demo", "waypoint").unwrap();
        let wp = state.waypoint_for_service(svc).unwrap();
        assert_eq!(
            (wp.namespace.as_str(), wp.name.as_str()),
            ("demo", "waypoint")
        );
        let peer = state.waypoint_peer(&wp).unwrap();
        assert_eq!(
            peer.identity.unwrap().to_string(),
            "spiffe://cluster.local/ns/demo/sa/waypoint"
        );
        assert!(!state.is_captured(state.workload_by_name("demo", "waypoint-1").unwrap()));
    }
}
