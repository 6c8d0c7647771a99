//! Renders deploy/'s Helm chart without helm (not installable here): Go templates through
//! gtmpl with the few Helm functions the chart uses (`toYaml`, `nindent`, `quote`). The chart
//! keeps to that subset, so helm renders it the same. `cargo xtask manifests` writes the
//! result, with the CRDs, to deploy/lanyard.yaml for `kubectl apply -f`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use gtmpl::{Context as TmplContext, FuncError, Template, Value as TmplValue};
use serde::Deserialize;
use serde_json::{json, Value};

pub const CHART_DIR: &str = "deploy/helm/lanyard";
pub const MANIFEST_FILE: &str = "deploy/lanyard.yaml";

/// The namespace and release name deploy/lanyard.yaml is rendered for.
pub const NAMESPACE: &str = "lanyard-system";
pub const RELEASE: &str = "lanyard";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn to_tmpl(v: &Value) -> TmplValue {
    match v {
        Value::Null => TmplValue::Nil,
        Value::Bool(b) => TmplValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => TmplValue::from(i),
            (None, Some(u)) => TmplValue::from(u),
            _ => TmplValue::from(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => TmplValue::String(s.clone()),
        Value::Array(a) => TmplValue::Array(a.iter().map(to_tmpl).collect()),
        Value::Object(o) => {
            TmplValue::Object(o.iter().map(|(k, v)| (k.clone(), to_tmpl(v))).collect())
        }
    }
}

fn from_tmpl(v: &TmplValue) -> Value {
    match v {
        TmplValue::NoValue | TmplValue::Nil | TmplValue::Function(_) => Value::Null,
        TmplValue::Bool(b) => json!(b),
        TmplValue::String(s) => json!(s),
        TmplValue::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => json!(i),
            (None, Some(u)) => json!(u),
            _ => json!(n.as_f64()),
        },
        TmplValue::Array(a) => Value::Array(a.iter().map(from_tmpl).collect()),
        // Sorted keys, as helm's toYaml writes them.
        TmplValue::Object(o) | TmplValue::Map(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), from_tmpl(v)))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        ),
    }
}

fn text_of(v: &TmplValue) -> String {
    match v {
        TmplValue::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `toYaml X`: block YAML without the trailing newline.
fn to_yaml(args: &[TmplValue]) -> Result<TmplValue, FuncError> {
    let [v] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let text =
        serde_yaml::to_string(&from_tmpl(v)).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(TmplValue::String(text.trim_end_matches('\n').to_string()))
}

/// `nindent N S`: a newline, then every line of S indented by N spaces.
fn nindent(args: &[TmplValue]) -> Result<TmplValue, FuncError> {
    let [n, s] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let n = match n {
        TmplValue::Number(n) => n.as_u64().unwrap_or_default() as usize,
        _ => return Err(FuncError::Generic("nindent: width is not a number".into())),
    };
    let pad = " ".repeat(n);
    let lines: Vec<String> = text_of(s).lines().map(|l| format!("{pad}{l}")).collect();
    Ok(TmplValue::String(format!("\n{}", lines.join("\n"))))
}

/// `quote X`: X as a double-quoted string.
fn quote(args: &[TmplValue]) -> Result<TmplValue, FuncError> {
    let [v] = args else {
        return Err(FuncError::ExactlyXArgs("quote".into(), 1));
    };
    Ok(TmplValue::String(json!(text_of(v)).to_string()))
}

/// Values: the chart's values.yaml with `overrides` merged over it.
pub fn values(overrides: &Value) -> Result<Value> {
    let path = repo_root().join(CHART_DIR).join("values.yaml");
    let mut values: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{}", path.display()))?;
    merge(&mut values, overrides);
    Ok(values)
}

fn merge(base: &mut Value, over: &Value) {
    match (base.as_object_mut(), over.as_object()) {
        (Some(b), Some(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *base = over.clone(),
    }
}

/// Every object the chart's templates render to, in file order.
pub fn render(values: &Value, namespace: &str, release: &str) -> Result<Vec<Value>> {
    let dir = repo_root().join(CHART_DIR);
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml"))?)?;
    let context = json!({
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    });
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut tmpl = Template::default();
        tmpl.add_funcs(&[
            ("toYaml", to_yaml as gtmpl::Func),
            ("nindent", nindent as gtmpl::Func),
            ("quote", quote as gtmpl::Func),
        ]);
        tmpl.parse(text)
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let out = tmpl
            .render(&TmplContext::from(to_tmpl(&context)))
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        if out.contains("<no value>") {
            bail!(
                "{}: a template reads a value that is not set",
                file.display()
            );
        }
        for doc in serde_yaml::Deserializer::from_str(&out) {
            let v = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("{} renders invalid YAML", file.display()))?;
            if !v.is_null() {
                objects.push(serde_json::to_value(v)?);
            }
        }
    }
    Ok(objects)
}

/// The CRDs the chart installs (its crds/ directory, not templated).
pub fn crds() -> Result<Vec<Value>> {
    let path = repo_root().join(crate::crds::CRDS_FILE);
    documents(&std::fs::read_to_string(&path)?)
}

pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(serde_json::to_value(v)?);
        }
    }
    Ok(out)
}

/// deploy/lanyard.yaml: the namespace, the CRDs, then the chart with its default values.
pub fn manifest() -> Result<String> {
    let mut out = format!(
        "# Lanyard for `kubectl apply --server-side -f deploy/lanyard.yaml`: the {NAMESPACE} namespace,\n\
         # Istio's CRDs, and the chart in {CHART_DIR} rendered with its default values.\n\
         # Generated by `cargo xtask manifests`; edit the chart, then rerun.\n"
    );
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "lanyard"}}});
    let mut objects: Vec<Value> = std::iter::once(namespace)
        .chain(crds()?)
        .chain(render(&values(&json!({}))?, NAMESPACE, RELEASE)?)
        .collect();
    objects.sort_by_key(|o| install_order(o["kind"].as_str().unwrap_or_default()));
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o)?);
    }
    Ok(out)
}

/// Helm's install order, so that `kubectl apply` creates what others refer to first.
fn install_order(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

pub fn write_manifest() -> Result<()> {
    let path = repo_root().join(MANIFEST_FILE);
    std::fs::write(&path, manifest()?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
