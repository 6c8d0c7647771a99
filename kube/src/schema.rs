//! Offline validation of manifests, as `kubectl apply --validate=strict` would do it on a
//! server: built-in kinds against the Kubernetes schema (the k8s-openapi types, with every
//! field they do not know reported), custom resources against a CRD's structural schema
//! (unknown fields are errors unless the schema preserves them). Used by the tests of
//! deploy/, of `lanyardctl waypoint render`, and of the walkthroughs' Istio YAML.

use k8s_openapi::api::{apps, core, policy, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Problems found in one object, each naming the field (`spec.template.spec.containers[0]…`).
pub type Problems = Vec<String>;

fn strict<T: DeserializeOwned>(obj: &Value) -> Problems {
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = serde_ignored::deserialize(obj, |path| {
        unknown.push(format!("{path}: unknown field"));
    });
    match parsed {
        Ok(_) => unknown,
        Err(e) => vec![e.to_string()],
    }
}

/// Checks a built-in object; a kind this list lacks is itself a problem (so a new manifest
/// cannot slip past unchecked).
pub fn check_builtin(obj: &Value) -> Problems {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => strict::<core::v1::Namespace>(obj),
        ("v1", "ServiceAccount") => strict::<core::v1::ServiceAccount>(obj),
        ("v1", "Service") => strict::<core::v1::Service>(obj),
        ("v1", "ConfigMap") => strict::<core::v1::ConfigMap>(obj),
        ("v1", "Secret") => strict::<core::v1::Secret>(obj),
        ("apps/v1", "DaemonSet") => strict::<apps::v1::DaemonSet>(obj),
        ("apps/v1", "Deployment") => strict::<apps::v1::Deployment>(obj),
        ("policy/v1", "PodDisruptionBudget") => strict::<policy::v1::PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict::<rbac::v1::ClusterRoleBinding>(obj)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<rbac::v1::Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<rbac::v1::RoleBinding>(obj),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            let mut problems = strict::<CustomResourceDefinition>(obj);
            for (i, v) in obj["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let schema = &v["schema"]["openAPIV3Schema"];
                let at = format!("spec.versions[{i}].schema.openAPIV3Schema");
                structural(schema, &at, &mut problems);
            }
            problems
        }
        _ => vec![format!(
            "{api_version} {kind}: no schema to check it against"
        )],
    }
}

/// A CRD schema must be structural: every node has a type, or preserves unknown fields, or
/// is int-or-string; `properties` and `additionalProperties` exclude each other.
fn structural(schema: &Value, at: &str, problems: &mut Problems) {
    let has = |k: &str| schema.get(k).is_some();
    if !has("type")
        && schema["x-kubernetes-preserve-unknown-fields"] != true
        && schema["x-kubernetes-int-or-string"] != true
    {
        problems.push(format!("{at}: no type (not a structural schema)"));
    }
    if has("properties") && has("additionalProperties") {
        problems.push(format!("{at}: both properties and additionalProperties"));
    }
    for (name, s) in schema["properties"].as_object().into_iter().flatten() {
        structural(s, &format!("{at}.properties.{name}"), problems);
    }
    if schema["items"].is_object() {
        structural(&schema["items"], &format!("{at}.items"), problems);
    }
    if schema["additionalProperties"].is_object() {
        structural(
            &schema["additionalProperties"],
            &format!("{at}.additionalProperties"),
            problems,
        );
    }
}

/// Checks a custom resource against the CRD serving its group and version.
pub fn check_custom(obj: &Value, crds: &[Value]) -> Problems {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let crd = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind);
    let Some(crd) = crd else {
        return vec![format!("{api_version} {kind}: no CRD defines it")];
    };
    let served = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version && v["served"] == true);
    let Some(served) = served else {
        return vec![format!(
            "{api_version} {kind}: version {version} is not served"
        )];
    };
    let mut problems = Vec::new();
    let mut body = obj.clone();
    // apiVersion, kind and metadata are the server's to check, as for any object.
    if let Some(o) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            o.remove(k);
        }
    }
    validate(
        &body,
        &served["schema"]["openAPIV3Schema"],
        "",
        &mut problems,
    );
    problems
}

fn validate(v: &Value, schema: &Value, at: &str, problems: &mut Problems) {
    let field = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    if v.is_null() {
        return; // The server drops nulls of fields that are not nullable.
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            problems.push(format!("{at}: want an integer or a string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            problems.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    let ty = schema["type"].as_str().unwrap_or_default();
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{at}: want {ty}, got {v}"));
        return;
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            validate(item, &schema["items"], &format!("{at}[{i}]"), problems);
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema["properties"].as_object();
        for (k, item) in obj {
            match (
                props.and_then(|p| p.get(k)),
                &schema["additionalProperties"],
            ) {
                (Some(s), _) => validate(item, s, &field(k), problems),
                (None, extra) if extra.is_object() => validate(item, extra, &field(k), problems),
                _ if preserve => {}
                _ => problems.push(format!("{}: unknown field", field(k))),
            }
        }
        for req in schema["required"].as_array().into_iter().flatten() {
            if let Some(r) = req.as_str() {
                if !obj.contains_key(r) {
                    problems.push(format!("{}: required", field(r)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "x"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "imagePullPolicy": "Always", "imagPullPolicy": "x"}]}}}});
        let problems = check_builtin(&ds);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("imagPullPolicy"), "{problems:?}");

        let crd = json!({"spec": {"group": "g.io", "names": {"kind": "K"}, "versions": [{"name": "v1", "served": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "n": {"type": "integer"}, "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "any": {"x-kubernetes-preserve-unknown-fields": true}}}}}}}]}});
        let ok = json!({"apiVersion": "g.io/v1", "kind": "K", "metadata": {"name": "a"},
                        "spec": {"n": 1, "m": {"a": "b"}, "any": {"deep": [1]}}});
        assert!(check_custom(&ok, std::slice::from_ref(&crd)).is_empty());
        let bad = json!({"apiVersion": "g.io/v1", "kind": "K", "spec": {"n": "one", "m": {"a": 2}, "typo": 1}});
        let problems = check_custom(&bad, std::slice::from_ref(&crd));
        assert_eq!(
            problems,
            vec![
                "spec.m.a: want string, got 2",
                "spec.n: want integer, got \"one\"",
                "spec.typo: unknown field"
            ],
        );
        let other = json!({"apiVersion": "g.io/v2", "kind": "K"});
        assert_eq!(
            check_custom(&other, &[crd]),
            vec!["g.io/v2 K: version v2 is not served"]
        );
    }
}
