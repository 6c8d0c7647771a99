//! deploy/'s Istio CRDs, generated from the types Lanyard parses Istio objects with, so the
//! cluster accepts exactly what Lanyard reads: every field of Istio's API, and with
//! `kubectl apply --validate=strict` (the default) unknown fields are errors there as here.

use anyhow::{bail, Context, Result};
use lanyard_core::policy::{authn, wire as policy};
use lanyard_core::traffic::wire as traffic;
use schemars::{schema_for, JsonSchema};
use serde_json::{json, Map, Value};

pub const CRDS_FILE: &str = "deploy/helm/lanyard/crds/istio.yaml";

struct Crd {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    /// Served versions, the storage one first. Istio serves each from one schema.
    versions: &'static [&'static str],
    spec: Value,
}

fn spec<T: JsonSchema>() -> Value {
    serde_json::to_value(schema_for!(T)).expect("a schema is JSON")
}

fn crds() -> Vec<Crd> {
    const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    const SECURITY: &[&str] = &["v1", "v1beta1"];
    vec![
        Crd {
            group: "networking.istio.io",
            kind: "VirtualService",
            plural: "virtualservices",
            short_names: &["vs"],
            versions: NETWORKING,
            spec: spec::<traffic::VirtualServiceSpec>(),
        },
        Crd {
            group: "networking.istio.io",
            kind: "DestinationRule",
            plural: "destinationrules",
            short_names: &["dr"],
            versions: NETWORKING,
            spec: spec::<traffic::DestinationRuleSpec>(),
        },
        Crd {
            group: "networking.istio.io",
            kind: "ServiceEntry",
            plural: "serviceentries",
            short_names: &["se"],
            versions: NETWORKING,
            spec: spec::<traffic::ServiceEntrySpec>(),
        },
        Crd {
            group: "security.istio.io",
            kind: "AuthorizationPolicy",
            plural: "authorizationpolicies",
            short_names: &["ap"],
            versions: SECURITY,
            spec: spec::<policy::AuthorizationPolicySpec>(),
        },
        Crd {
            group: "security.istio.io",
            kind: "PeerAuthentication",
            plural: "peerauthentications",
            short_names: &["pa"],
            versions: SECURITY,
            spec: spec::<policy::PeerAuthenticationSpec>(),
        },
        Crd {
            group: "security.istio.io",
            kind: "RequestAuthentication",
            plural: "requestauthentications",
            short_names: &["ra"],
            versions: SECURITY,
            spec: spec::<authn::RequestAuthenticationSpec>(),
        },
    ]
}

/// A JSON Schema (draft 2020-12, as schemars writes it) turned into a Kubernetes structural
/// schema: references inlined, optionals as plain types, "anything" as preserved unknown
/// fields, no defaults (the server would write them into users' objects).
fn structural(schema: &Value, defs: &Map<String, Value>, depth: usize) -> Result<Value> {
    if depth > 32 {
        bail!("schema nests deeper than 32 levels (a recursive type?)");
    }
    let obj = match schema {
        Value::Bool(true) => return Ok(json!({"x-kubernetes-preserve-unknown-fields": true})),
        Value::Object(o) => o,
        other => bail!("unsupported schema {other}"),
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .context("only local references")?;
        let def = defs
            .get(name)
            .with_context(|| format!("no definition {name}"))?;
        return structural(def, defs, depth + 1);
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
        let mut non_null = any.iter().filter(|s| s["type"] != "null");
        if let (Some(one), None) = (non_null.next(), non_null.next()) {
            return structural(one, defs, depth + 1);
        }
        bail!("unsupported anyOf {}", Value::Array(any.clone()));
    }
    let mut out = Map::new();
    for (key, value) in obj {
        match key.as_str() {
            "$schema" | "title" | "default" | "$defs" | "examples" => {}
            "additionalProperties" if value == &Value::Bool(false) => {}
            "additionalProperties" | "items" => {
                out.insert(key.clone(), structural(value, defs, depth + 1)?);
            }
            "properties" => {
                let props = value.as_object().context("properties is an object")?;
                let mut converted = Map::new();
                for (name, s) in props {
                    converted.insert(name.clone(), structural(s, defs, depth + 1)?);
                }
                out.insert(key.clone(), Value::Object(converted));
            }
            "type" => {
                let ty = match value {
                    Value::Array(types) => {
                        let mut non_null = types.iter().filter(|t| *t != "null");
                        match (non_null.next(), non_null.next()) {
                            (Some(t), None) => t.clone(),
                            _ => bail!("unsupported type union {value}"),
                        }
                    }
                    t => t.clone(),
                };
                out.insert(key.clone(), ty);
            }
            "format" => {
                let format = match value.as_str().unwrap_or_default() {
                    "uint8" | "uint16" | "uint32" | "int8" | "int16" | "int32" => "int32",
                    "uint" | "uint64" | "int" | "int64" => "int64",
                    other => other,
                };
                out.insert(key.clone(), json!(format));
            }
            "description" | "required" | "enum" | "minimum" | "maximum" => {
                out.insert(key.clone(), value.clone());
            }
            other => bail!("unsupported schema keyword {other:?}"),
        }
    }
    Ok(Value::Object(out))
}

fn definition(crd: &Crd) -> Result<Value> {
    let defs = crd.spec["$defs"].as_object().cloned().unwrap_or_default();
    let spec =
        structural(&crd.spec, &defs, 0).with_context(|| format!("{} spec schema", crd.kind))?;
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let versions: Vec<Value> = crd
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "name": v,
                "served": true,
                "storage": i == 0,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
            })
        })
        .collect();
    let singular = crd.kind.to_ascii_lowercase();
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", crd.plural, crd.group),
            "labels": {"app.kubernetes.io/part-of": "lanyard"},
        },
        "spec": {
            "group": crd.group,
            "names": {
                "kind": crd.kind,
                "listKind": format!("{}List", crd.kind),
                "plural": crd.plural,
                "singular": singular,
                "shortNames": crd.short_names,
                "categories": ["istio-io", if crd.group.starts_with("security") { "security-istio-io" } else { "networking-istio-io" }],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    }))
}

/// The CRD file's text: a header, then one document per kind.
pub fn render() -> Result<String> {
    let mut out = String::from(
        "# Istio's CRDs for clusters without Istio, generated by `cargo xtask crds` from the\n\
         # types Lanyard parses these objects with. Do not edit: change the types, then rerun.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&definition(&crd)?)?);
    }
    Ok(out)
}

pub fn write() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(CRDS_FILE);
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, render()?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let on_disk = std::fs::read_to_string(root.join(CRDS_FILE)).unwrap_or_default();
        assert!(
            on_disk == render().unwrap(),
            "{CRDS_FILE} is stale: run `cargo xtask crds`"
        );
    }
}
