//! Services from EndpointSlices and ServiceEntries: which endpoints they get, and which
//! objects are refused.

use super::*;
use crate::config::{parse_documents, Store};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-proxy, namespace: demo, uid: u1, labels: {app: db}}
spec: {nodeName: n1, serviceAccountName: db, containers: [{name: c}]}
status: {podIP: 10.1.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: sql, port: 5432}, {name: admin, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432, protocol: TCP}]
endpoints:
- addresses: [10.1.1.2]
  targetRef: {kind: Pod, name: db-proxy}
- addresses: [192.0.2.7]
  conditions: {ready: true}
- addresses: [192.0.2.8]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-2, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints: [{addresses: [192.0.2.7]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v6, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
ports: [{name: sql, port: 15432}]
endpoints: [{addresses: ["2001:db8::1"]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: demo, labels: {team: pay}}
spec:
  hosts: [api.payments.example, API.Payments-Backup.example]
  addresses: [240.0.0.1, 10.96.0.20, 203.0.113.0/24]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints:
  - {address: 198.51.100.1, labels: {version: v1}}
  - {address: 198.51.100.2, ports: {https: 8443}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db-alias, namespace: demo}
spec:
  hosts: [db.internal]
  addresses: [240.0.0.2]
  resolution: STATIC
  ports: [{number: 5432, name: sql, targetPort: 6432}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: anything-example, namespace: demo}
spec:
  hosts: ["*.example.org", example.org]
  ports: [{number: 443, name: tls, protocol: TLS}]
  addresses: [240.0.0.3]
"#;

fn state_of(yaml: &str) -> MeshState {
    let snap = Store::default().update(parse_documents(yaml).unwrap());
    MeshState::build(snap, &Settings::default())
}

fn endpoints(s: &MeshState, vip: &str, port: u16) -> Vec<(String, u16, bool)> {
    let svc = s.service_by_vip(vip.parse().unwrap()).unwrap();
    let mut eps: Vec<_> = s
        .endpoints(svc, port)
        .iter()
        .map(|e| {
            (
                format!("{}:{}", e.workload.ip.unwrap(), e.port),
                e.port,
                s.is_captured(&e.workload),
            )
        })
        .collect();
    eps.sort();
    eps
}

#[test]
fn a_service_without_selector_takes_its_endpoint_slices() {
    let s = state_of(BASE);
    assert!(s.rejections().is_empty(), "{:?}", s.rejections());
    // The pod keeps its identity (HBONE); the outside address is plain TCP; the unready one
    // and the address listed in two slices appear once or not at all; IPv6 is left out.
    assert_eq!(
        endpoints(&s, "10.96.0.20", 5432),
        vec![
            ("10.1.1.2:15432".into(), 15432, true),
            ("192.0.2.7:15432".into(), 15432, false)
        ]
    );
    assert!(
        endpoints(&s, "10.96.0.20", 8080).is_empty(),
        "no slice serves port name admin"
    );
}

#[test]
fn a_static_service_entry_is_one_service_per_host() {
    let s = state_of(BASE);
    let svc = s.service_by_host("api.payments.example").unwrap();
    assert_eq!(svc.hostname(s.cluster_domain()), "api.payments.example");
    assert_eq!(svc.labels.get("team").map(String::as_str), Some("pay"));
    assert!(
        s.service_by_host("api.payments-backup.example").is_some(),
        "hosts are case-insensitive"
    );
    assert_eq!(svc.port(80).unwrap().protocol(), Protocol::Http1);
    assert_eq!(
        endpoints(&s, "240.0.0.1", 443),
        vec![
            ("198.51.100.1:443".into(), 443, false),
            ("198.51.100.2:8443".into(), 8443, false)
        ]
    );
    assert_eq!(
        endpoints(&s, "240.0.0.1", 80),
        vec![
            ("198.51.100.1:8080".into(), 8080, false),
            ("198.51.100.2:8080".into(), 8080, false)
        ]
    );
    // Subsets select entry endpoints by their labels.
    let v2: Vec<_> = s
        .subset_endpoints(
            svc,
            443,
            &[("version".to_string(), "v2".to_string())]
                .into_iter()
                .collect(),
        )
        .map(|e| e.workload.ip.unwrap().to_string())
        .collect();
    assert_eq!(v2, vec!["198.51.100.2"]);
    // The Kubernetes Service keeps its VIP.
    let db = s.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
    assert_eq!(db.name, "db");
}

#[test]
fn a_service_host_name_is_read_from_the_state_not_formatted() {
    let s = state_of(BASE);
    let db = s.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
    let entry = s.service_by_host("api.payments.example").unwrap();
    for svc in [db, entry] {
        let host = s.host_name(svc);
        assert!(matches!(host, Cow::Borrowed(_)), "{host}");
        assert_eq!(host, svc.hostname(s.cluster_domain()));
    }
    assert_eq!(s.host_name(db), "db.demo.svc.cluster.local");
    // A service of another state (or none) still gets its name.
    let other = Service {
        name: "cache".into(),
        ..(**db).clone()
    };
    assert_eq!(s.host_name(&other), "cache.demo.svc.cluster.local");
    // An entry's service is named by its host, which may be a Service's name too.
    let entry_named_db = Service {
        host: Some("db".into()),
        ..(**db).clone()
    };
    assert_eq!(s.host_name(&entry_named_db), "db");
}

#[test]
fn a_workload_selector_entry_reaches_pods_over_the_mesh() {
    let s = state_of(BASE);
    assert_eq!(
        endpoints(&s, "240.0.0.2", 5432),
        vec![("10.1.1.2:6432".into(), 6432, true)]
    );
}

#[test]
fn a_resolution_none_entry_passes_through() {
    let s = state_of(BASE);
    let svc = s.service_by_vip("240.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(svc.endpoints, EndpointSource::Passthrough);
    assert!(s.service_by_host("example.org").is_some());
}

#[test]
fn a_virtual_service_routes_to_an_entry_host() {
    let s = state_of(&format!(
        "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: pay, namespace: demo}}\n\
         spec: {{hosts: [api.payments.example], http: [{{route: [{{destination: {{host: api.payments.example}}}}]}}]}}\n"
    ));
    assert!(s.virtual_service_for("api.payments.example").is_some());
    assert!(
        !s.findings().iter().any(|f| f.object.name == "pay"),
        "{:?}",
        s.findings()
    );
}

#[test]
fn bad_entries_and_slices_are_refused_with_the_field() {
    let cases = [
        (
            "kind: ServiceEntry\nspec: {hosts: ['*'], ports: [{number: 80, name: http}]}",
            "spec.hosts[0]",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], resolution: STATIK}",
            "spec.resolution",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], endpoints: [{address: 1.2.3.4}]}",
            "spec.endpoints",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 1.2.3.4, ports: {htp: 81}}]}",
            "spec.endpoints[0].ports.htp",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], resolution: STATIC, endpoints: [{address: db.example}]}",
            "spec.endpoints[0].address",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], addresses: [10.0.0.0/33]}",
            "spec.addresses[0]",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], ports: [{number: 80, name: a}, {number: 80, name: b}]}",
            "spec.ports[1].number",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], resolution: STATIC}",
            "spec.endpoints",
        ),
        (
            "kind: ServiceEntry\nspec: {hosts: [a.example], prots: []}",
            "spec",
        ),
    ];
    for (body, field) in cases {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\n{body}\nmetadata: {{name: x, namespace: demo}}\n"
        );
        let s = state_of(&yaml);
        let r = s
            .rejections()
            .first()
            .unwrap_or_else(|| panic!("{body} accepted"));
        assert!(r.field.starts_with(field), "{body}: {r}");
        assert_eq!(r.object.to_string(), "ServiceEntry demo/x");
    }
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: s, namespace: demo, labels: {kubernetes.io/service-name: db}}\n\
                 addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.300]}]\n";
    let s = state_of(slice);
    assert_eq!(
        s.rejections()[0].to_string(),
        "EndpointSlice demo/s: endpoints[1].addresses[0]: \"10.0.0.300\" is not an IPv4 address (addressType is IPv4)"
    );
}

#[test]
fn dns_endpoints_by_name_are_accepted_with_a_warning() {
    let s = state_of(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {name: ext, namespace: demo}\n\
         spec: {hosts: [httpbin.org], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}],\n\
                endpoints: [{address: eu.httpbin.org}, {address: 192.0.2.9}]}\n",
    );
    assert!(s.rejections().is_empty(), "{:?}", s.rejections());
    let svc = s.service_by_host("httpbin.org").unwrap();
    assert_eq!(s.endpoints(svc, 80).len(), 1);
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("eu.httpbin.org") && w.contains("ServiceEntry demo/ext")));
}
