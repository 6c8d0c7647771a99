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
}
