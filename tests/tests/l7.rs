//! The waypoint end to end: a client pod's agent sends service traffic to the namespace's
//! waypoint over HBONE; the waypoint routes by VirtualService and DestinationRule, applies
//! L7 policy, and reaches real backends (v1, v2) through their agents.

use std::net::Ipv4Addr;
use std::time::Duration;

use lanyard_e2e::{metric, wait_for, Mesh, PodSpec, ServiceSpec};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const URL: &str = "http://10.96.0.20:80";

/// client (node 0) → backend v1/v2 (node 1) through the demo namespace's waypoint.
fn mesh(prefix: &str, extra_pods: &[(&str, &str, &[&str])]) -> Mesh {
    let mut b = Mesh::builder(prefix)
        .nodes(2)
        .namespace("demo", true)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(backend("backend-v1", "v1"))
        .pod(backend("backend-v2", "v2"))
        .service(ServiceSpec::new("backend", "demo", VIP).named_port("http", 80, 8080));
    for (name, version, _) in extra_pods {
        b = b.pod(backend(name, version));
    }
    let mut mesh = b.start().expect("mesh starts");
    mesh.serve_http("backend-v1", 8080, &[]).unwrap();
    mesh.serve_http("backend-v2", 8080, &[]).unwrap();
    for (name, _, args) in extra_pods {
        mesh.serve_http(name, 8080, args).unwrap();
    }
    mesh
}

fn backend(name: &str, version: &str) -> PodSpec {
    PodSpec::new(name, "demo")
        .node(1)
        .service_account("backend")
        .label("app", "backend")
        .label("version", version)
}

const SUBSETS: &str = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn weights(v1: u32, v2: u32) -> String {
    format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  http:
  - route:
    - {{destination: {{host: backend, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {v2}}}
"
    )
}

/// Applies `yaml` and waits until the waypoint has loaded exactly `vs` VirtualServices
/// with these `marker` contents (compared through its config dump).
fn apply(mesh: &mut Mesh, yaml: &str) {
    mesh.extra_yaml = yaml.to_string();
    mesh.write_config().unwrap();
    let want_vs = yaml.matches("kind: VirtualService").count();
    let want_dr = yaml.matches("kind: DestinationRule").count();
    wait_for(Duration::from_secs(5), "waypoint config loaded", || {
        let dump = mesh.waypoint_config_dump("demo").ok()?;
        let vs = dump["virtualServices"].as_array()?.len();
        let dr = dump["destinationRules"].as_array()?.len();
        (vs == want_vs && dr == want_dr).then_some(())
    })
    .unwrap();
    // Agents poll the same file; give them a poll interval too.
    std::thread::sleep(Duration::from_millis(600));
}

fn load(mesh: &Mesh, args: &[&str]) -> Value {
    mesh.load("client", args).unwrap()
}

fn count(v: &Value, key: &str, which: &str) -> u64 {
    v[key][which].as_u64().unwrap_or(0)
}

#[test]
fn service_traffic_goes_through_the_waypoint_with_istio_metrics() {
    let mesh = mesh("l7base", &[]);
    let r = load(&mesh, &["--url", &format!("{URL}/hello"), "--count", "20"]);
    assert_eq!(count(&r, "statuses", "200"), 20, "{r}");
    // The waypoint served these: its metrics count them with Istio's labels.
    let text = mesh.waypoint_metrics("demo").unwrap();
    let n = metric(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "waypoint"),
            ("source_principal", "spiffe://cluster.local/ns/demo/sa/client"),
            ("destination_service", "backend.demo.svc.cluster.local"),
            ("response_code", "200"),
        ],
    );
    assert_eq!(n, 20.0, "{text}");
    // The backend saw the waypoint's request with the original host and a request id.
    let body: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    assert_eq!(body["host"], "10.96.0.20", "{body}");
    assert!(body["headers"]["x-request-id"].as_str().is_some_and(|s| s.len() == 36), "{body}");
}
