//! `lanyardctl waypoint render`: the Kubernetes objects that run a waypoint for a namespace,
//! as YAML for `kubectl apply -f -`.

use clap::Subcommand;
use serde_json::json;

use crate::{Error, Outcome};

/// Where the waypoint gets its certificate, and who it is.
#[derive(clap::Args, Clone, Debug)]
pub struct RenderArgs {
    /// The namespace the waypoint serves.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// The waypoint's name (what `istio.io/use-waypoint` names).
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    #[arg(long, default_value = "ghcr.io/lanyard-mesh/lanyard-waypoint:0.1.0")]
    pub image: String,
    /// The CA the waypoint gets its certificate from (Lanyard's, or istiod's
    /// https://istiod.istio-system.svc:15012).
    #[arg(long, default_value = "https://lanyard-ca.lanyard-system.svc:15012")]
    pub ca_address: String,
    /// The name in the CA's serving certificate (istiod: istiod.istio-system.svc).
    #[arg(long, default_value = "lanyard-ca.lanyard-system.svc")]
    pub ca_server_name: String,
    /// The ConfigMap with the mesh root the CA writes to every namespace (istiod:
    /// istio-ca-root-cert).
    #[arg(long, default_value = "lanyard-ca-root")]
    pub root_configmap: String,
    /// Istio's root namespace, whose policies the waypoint also reads.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Also label the namespace so that its services' traffic goes through the waypoint.
    #[arg(long)]
    pub enroll: bool,
    /// An OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector.observability:4317)
    /// the waypoint exports request spans to.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces the waypoint records (Istio's default: 1).
    #[arg(long, default_value_t = 1.0)]
    pub trace_sampling: f64,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Print the waypoint's objects (ServiceAccount, role bindings, Deployment, Service,
    /// PodDisruptionBudget) as YAML for `kubectl apply -f -`.
    Render(RenderArgs),
    /// Create or update them in the cluster (server-side apply, field manager lanyardctl).
    Apply(RenderArgs),
}

pub fn run(cmd: Cmd) -> Result<Outcome, Error> {
    match cmd {
        Cmd::Render(args) => {
            for o in render(&args) {
                let text = serde_yaml::to_string(&o).map_err(|e| Error::Encode(e.to_string()))?;
                print!("---\n{text}");
            }
        }
        Cmd::Apply(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Kube(e.to_string()))?;
            let lines = rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| Error::Kube(format!("connecting: {e}")))?;
                apply(client, &args).await
            })?;
            for line in lines {
                println!("{line}");
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Server-side applies every rendered object; returns one line per object.
pub async fn apply(client: kube::Client, args: &RenderArgs) -> Result<Vec<String>, Error> {
    use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
    use kube::discovery::ApiResource;
    let params = PatchParams::apply("lanyardctl").force();
    let mut done = Vec::new();
    for obj in render(args) {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| Error::Kube(format!("applying {kind} {name}: {e}")))?;
        done.push(format!("{} {name} applied", kind.to_ascii_lowercase()));
    }
    Ok(done)
}

/// The objects, in apply order. The pod opts out of capture (it is a proxy), and carries the
/// label Istio puts on waypoint pods so that tools recognize it. It authenticates to the CA
/// with a projected token (audience istio-ca) and checks it with the root ConfigMap.
pub fn render(a: &RenderArgs) -> Vec<serde_json::Value> {
    let (ns, name) = (a.namespace.as_str(), a.name.as_str());
    let labels = json!({"gateway.networking.k8s.io/gateway-name": name, "app.kubernetes.io/name": "lanyard-waypoint"});
    let mut pod_labels = labels.clone();
    pod_labels["istio.io/dataplane-mode"] = json!("none");
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]);
    let binding = |kind: &str, binding_ns: Option<&str>, binding_name: String, role: &str| {
        let mut metadata = json!({"name": binding_name, "labels": labels});
        if let Some(n) = binding_ns {
            metadata["namespace"] = json!(n);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": subject})
    };
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": ns, "labels": labels}}),
        binding(
            "ClusterRoleBinding",
            None,
            format!("lanyard-waypoint-{ns}-{name}"),
            "lanyard-waypoint-workloads",
        ),
        binding(
            "RoleBinding",
            Some(ns),
            format!("lanyard-waypoint-{name}"),
            "lanyard-waypoint-config",
        ),
    ];
    if a.root_namespace != ns {
        out.push(binding(
            "RoleBinding",
            Some(&a.root_namespace),
            format!("lanyard-waypoint-{ns}-{name}"),
            "lanyard-waypoint-config",
        ));
    }
    let mut env = vec![
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "LANYARD_CA_ADDRESS", "value": a.ca_address}),
        json!({"name": "LANYARD_ROOT_NAMESPACE", "value": a.root_namespace}),
    ];
    if let Some(endpoint) = &a.otlp_endpoint {
        env.push(json!({"name": "LANYARD_OTLP_ENDPOINT", "value": endpoint}));
        env.push(json!({"name": "LANYARD_TRACE_SAMPLING", "value": a.trace_sampling.to_string()}));
    }
    out.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
          "replicas": a.replicas,
          "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
          "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
              "serviceAccountName": name,
              "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                                  "seccompProfile": {"type": "RuntimeDefault"}},
              "containers": [{
                "name": "waypoint",
                "image": a.image,
                "args": ["--name", name, "--service-account", name,
                         "--ca-bootstrap", "/var/run/lanyard/ca",
                         "--ca-token", "/var/run/secrets/tokens/istio-ca-token",
                         "--ca-server-name", a.ca_server_name],
                "env": env,
                "ports": [
                  {"name": "hbone", "containerPort": 15008},
                  {"name": "metrics", "containerPort": 15020}
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15020}, "periodSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": 15008}, "initialDelaySeconds": 10},
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                  {"name": "ca-root", "mountPath": "/var/run/lanyard/ca", "readOnly": true},
                  {"name": "ca-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true}
                ]
              }],
              "volumes": [
                {"name": "ca-root", "configMap": {"name": a.root_configmap,
                  "items": [{"key": "root-cert.pem", "path": "root.pem"}]}},
                {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken":
                  {"path": "istio-ca-token", "audience": "istio-ca", "expirationSeconds": 43200}}]}}
              ]
            }
          }
        }}));
    out.push(json!({"apiVersion": "v1", "kind": "Service",
    "metadata": {"name": name, "namespace": ns, "labels": labels},
    "spec": {
      "selector": {"gateway.networking.k8s.io/gateway-name": name},
      "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "all"}]
    }}));
    if a.replicas > 1 {
        out.push(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"minAvailable": 1,
                     "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}}}}));
    }
    if a.enroll {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"istio.io/use-waypoint": name}}}));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lanyard_core::config::Store;
    use lanyard_core::state::{MeshState, Settings};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::RenderArgs,
    }

    fn args(ns: &str, replicas: u32) -> super::RenderArgs {
        let replicas = replicas.to_string();
        Cli::parse_from(["x", "-n", ns, "--replicas", &replicas, "--enroll"]).args
    }

    #[test]
    fn tracing_is_rendered_only_when_a_collector_is_given() {
        let env = |objects: Vec<serde_json::Value>| {
            let d = objects
                .into_iter()
                .find(|o| o["kind"] == "Deployment")
                .unwrap();
            d["spec"]["template"]["spec"]["containers"][0]["env"].clone()
        };
        let plain = env(super::render(&args("demo", 1)));
        assert!(
            !plain.to_string().contains("LANYARD_OTLP_ENDPOINT"),
            "{plain}"
        );
        let a = Cli::parse_from([
            "x",
            "-n",
            "demo",
            "--otlp-endpoint",
            "http://otel:4317",
            "--trace-sampling",
            "10",
        ])
        .args;
        let traced = env(super::render(&a));
        let vars: Vec<(&str, &str)> = traced
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?)))
            .collect();
        assert!(
            vars.contains(&("LANYARD_OTLP_ENDPOINT", "http://otel:4317")),
            "{vars:?}"
        );
        assert!(vars.contains(&("LANYARD_TRACE_SAMPLING", "10")), "{vars:?}");
    }

    #[test]
    fn every_rendered_object_passes_the_kubernetes_schema() {
        for replicas in [1, 3] {
            let objects = super::render(&args("demo", replicas));
            let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
            let want_pdb = replicas > 1;
            assert_eq!(
                kinds.contains(&"PodDisruptionBudget"),
                want_pdb,
                "{kinds:?}"
            );
            for o in &objects {
                let problems = lanyard_kube::schema::check_builtin(o);
                assert!(
                    problems.is_empty(),
                    "{} {}: {problems:?}",
                    o["kind"],
                    o["metadata"]["name"]
                );
            }
        }
    }

    #[tokio::test]
    async fn apply_creates_then_updates_the_objects_in_the_cluster() {
        let api = lanyard_kube::testing::FakeApiServer::start().await;
        let lines = super::apply(api.client(), &args("demo", 2)).await.unwrap();
        assert_eq!(lines.len(), 8, "{lines:?}");
        let dep = api
            .get("apps/v1", "Deployment", "demo", "waypoint")
            .unwrap();
        assert_eq!(dep["spec"]["replicas"], 2);
        let root_binding = api.get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "istio-system",
            "lanyard-waypoint-demo-waypoint",
        );
        assert!(
            root_binding.is_some(),
            "reads the root namespace's policies"
        );
        super::apply(api.client(), &args("demo", 4)).await.unwrap();
        let dep = api
            .get("apps/v1", "Deployment", "demo", "waypoint")
            .unwrap();
        assert_eq!(dep["spec"]["replicas"], 4);
        let ns = api.get("v1", "Namespace", "", "demo").unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["istio.io/use-waypoint"],
            "waypoint"
        );
    }

    #[test]
    fn rendered_waypoint_is_what_the_mesh_state_recognizes() {
        let mut docs = super::render(&args("demo", 1));
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
