//! Keeps only the fields Lanyard reads, so that a large cluster's Pods (with their managed
//! fields, volumes, env and container statuses) do not sit in every agent's memory.

use serde_json::{Map, Value};

use crate::kinds::Kind;

/// Reduces `obj` (a whole object from the API server) to what the mesh state reads, with
/// `apiVersion` and `kind` set (list items arrive without them).
pub fn prune(kind: &Kind, mut obj: Value) -> Value {
    let meta = obj.get_mut("metadata").map(Value::take).unwrap_or_default();
    let mut out = Map::new();
    out.insert("apiVersion".into(), kind.api_version().into());
    out.insert("kind".into(), kind.kind.into());
    out.insert(
        "metadata".into(),
        keep(
            &meta,
            &[
                "name",
                "namespace",
                "uid",
                "labels",
                "annotations",
                "deletionTimestamp",
            ],
        ),
    );
    match kind.kind {
        "Namespace" => {}
        "Pod" => {
            let spec = obj.get("spec").cloned().unwrap_or_default();
            let mut s = keep(&spec, &["nodeName", "serviceAccountName", "hostNetwork"]);
            let containers: Vec<Value> = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| keep(c, &["name", "ports"]))
                .collect();
            s["containers"] = containers.into();
            out.insert("spec".into(), s);
            let status = obj.get("status").cloned().unwrap_or_default();
            let mut st = keep(&status, &["phase", "podIP"]);
            let conditions: Vec<Value> = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| keep(c, &["type", "status"]))
                .collect();
            st["conditions"] = conditions.into();
            out.insert("status".into(), st);
        }
        "Service" => {
            let spec = obj.get("spec").cloned().unwrap_or_default();
            out.insert(
                "spec".into(),
                keep(&spec, &["clusterIP", "clusterIPs", "selector", "ports"]),
            );
        }
        "EndpointSlice" => {
            let mut s = keep(&obj, &["addressType", "ports"]);
            let endpoints: Vec<Value> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let mut k = keep(e, &["addresses"]);
                    if let Some(ready) = e.pointer("/conditions/ready") {
                        k["conditions"] = serde_json::json!({ "ready": ready });
                    }
                    if let Some(t) = e.get("targetRef") {
                        k["targetRef"] = keep(t, &["kind", "name"]);
                    }
                    k
                })
                .collect();
            s["endpoints"] = endpoints.into();
            // A slice has no spec: its fields sit at the top.
            if let Value::Object(fields) = s {
                out.extend(fields);
            }
        }
        // Istio objects are validated field by field (unknown fields are errors): keep the
        // spec whole.
        _ => {
            if let Some(spec) = obj.get_mut("spec").map(Value::take) {
                out.insert("spec".into(), spec);
            }
        }
    }
    Value::Object(out)
}

fn keep(v: &Value, fields: &[&str]) -> Value {
    let mut out = Map::new();
    for f in fields {
        if let Some(x) = v.get(*f).filter(|x| !x.is_null()) {
            out.insert((*f).to_string(), x.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_what_the_mesh_reads_and_nothing_else() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "a", "uid": "u", "labels": {"app": "x"},
                         "managedFields": [{"manager": "kubectl"}], "resourceVersion": "7"},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "volumes": [{"name": "v"}],
                     "containers": [{"name": "c", "image": "i", "env": [{"name": "E"}],
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": "10.0.0.1", "phase": "Running", "containerStatuses": [{}],
                       "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null}]}
        });
        assert_eq!(
            prune(&crate::kinds::POD, pod),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "a", "uid": "u", "labels": {"app": "x"}},
                "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                         "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": "10.0.0.1", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })
        );
    }

    #[test]
    fn an_endpoint_slice_keeps_addresses_readiness_and_ports() {
        let slice = json!({
            "metadata": {"name": "s", "namespace": "a", "labels": {"kubernetes.io/service-name": "db"},
                         "managedFields": [{}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "zone": "z",
                           "conditions": {"ready": false, "serving": true},
                           "targetRef": {"kind": "Pod", "name": "p", "uid": "u"}},
                          {"addresses": ["10.0.0.2"]}],
            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
        });
        assert_eq!(
            prune(&crate::kinds::ENDPOINT_SLICE, slice),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "s", "namespace": "a", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false},
                               "targetRef": {"kind": "Pod", "name": "p"}},
                              {"addresses": ["10.0.0.2"]}],
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
            })
        );
    }
}
