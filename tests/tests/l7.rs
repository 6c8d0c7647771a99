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

/// Applies `yaml` and waits until the waypoint's config dump shows as many VirtualServices
/// and DestinationRules as it holds.
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

/// A ServiceEntry in demo: `host` at `vip` port 80 (HTTP), one endpoint outside the mesh on
/// port 8080.
fn external_entry(name: &str, host: &str, vip: &str, endpoint: Ipv4Addr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: demo}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints: [{{address: {endpoint}}}]
"
    )
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
            (
                "source_principal",
                "spiffe://cluster.local/ns/demo/sa/client",
            ),
            ("destination_service", "backend.demo.svc.cluster.local"),
            ("response_code", "200"),
        ],
    );
    assert_eq!(n, 20.0, "{text}");
    // The backend saw the waypoint's request with the original host and a request id.
    let body: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    assert_eq!(body["host"], "10.96.0.20", "{body}");
    let id = body["headers"]["x-request-id"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 36, "{body}");
    // Its access-log line, written within the flush interval (1 s).
    let mut line = None;
    for _ in 0..50 {
        line = mesh
            .waypoint_log("demo")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "request" && v["request_id"] == id);
        if line.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = line.expect("an access-log line for the request");
    assert_eq!(line["target"], "access", "{line}");
    assert_eq!(line["response_code"], 200, "{line}");
    assert_eq!(line["path"], "/hello", "{line}");
    assert_eq!(
        line["dst_service"], "backend.demo.svc.cluster.local",
        "{line}"
    );
}

fn share(v: &Value, version: &str) -> f64 {
    let total: u64 = v["versions"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    count(v, "versions", version) as f64 / total as f64
}

#[test]
fn canary_weights_split_traffic_then_move_it_all() {
    let mut mesh = mesh("l7can", &[]);
    apply(&mut mesh, &weights(90, 10));
    let r = load(
        &mesh,
        &["--url", URL, "--count", "2000", "--concurrency", "8"],
    );
    assert_eq!(count(&r, "statuses", "200"), 2000, "{r}");
    let v2 = share(&r, "v2");
    assert!(
        (0.07..=0.13).contains(&v2),
        "90/10 split measured {v2:.3} for v2: {r}"
    );

    apply(&mut mesh, &weights(100, 0));
    let r = load(
        &mesh,
        &["--url", URL, "--count", "300", "--concurrency", "4"],
    );
    assert_eq!(
        count(&r, "versions", "v1"),
        300,
        "100/0 sends everything to v1: {r}"
    );

    apply(&mut mesh, &weights(0, 100));
    let r = load(
        &mesh,
        &["--url", URL, "--count", "300", "--concurrency", "4"],
    );
    assert_eq!(
        count(&r, "versions", "v2"),
        300,
        "0/100 sends everything to v2: {r}"
    );
}

#[test]
fn header_and_uri_matches_route_first_match_wins() {
    let mut mesh = mesh("l7match", &[]);
    let vs = format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend.demo.svc.cluster.local]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: backend, subset: v2}}}}]
  - match: [{{uri: {{exact: /exact}}}}, {{uri: {{regex: '/items/[0-9]+'}}}}]
    route: [{{destination: {{host: backend, subset: v2}}}}]
  - match: [{{uri: {{prefix: /old}}}}]
    rewrite: {{uri: /new}}
    route: [{{destination: {{host: backend, subset: v1}}}}]
  - match: [{{uri: {{prefix: /moved}}}}]
    redirect: {{uri: /elsewhere, authority: example.com}}
  - route: [{{destination: {{host: backend, subset: v1}}}}]
"
    );
    apply(&mut mesh, &vs);
    let version = |path: &str, header: Option<&str>| {
        let url = format!("{URL}{path}");
        let mut args = vec!["--url", url.as_str()];
        if let Some(h) = header {
            args.extend(["--header", h]);
        }
        let r = load(&mesh, &args);
        let v = r["versions"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .cloned()
            .unwrap_or_default();
        (v, r)
    };
    assert_eq!(
        version("/", Some("end-user: jason")).0,
        "v2",
        "header match"
    );
    assert_eq!(
        version("/", Some("end-user: jasonx")).0,
        "v1",
        "exact is exact"
    );
    assert_eq!(version("/exact", None).0, "v2", "uri exact");
    assert_eq!(
        version("/exact/more", None).0,
        "v1",
        "exact does not prefix"
    );
    assert_eq!(version("/items/42", None).0, "v2", "uri regex");
    assert_eq!(version("/items/42x", None).0, "v1", "regex is a full match");
    let (v, r) = version("/old/page?q=1", None);
    assert_eq!(v, "v1");
    let body: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    assert_eq!(body["path"], "/new/page", "prefix rewrite: {body}");
    let r = load(&mesh, &["--url", &format!("{URL}/moved")]);
    assert_eq!(count(&r, "statuses", "301"), 1, "redirect: {r}");
}

#[test]
fn a_route_to_an_undefined_subset_is_a_503_with_a_flag_and_a_warning() {
    let mut mesh = mesh("l7nosub", &[]);
    let vs = format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  http:
  - route: [{{destination: {{host: backend, subset: v3}}}}]
"
    );
    apply(&mut mesh, &vs);
    let r = load(&mesh, &["--url", URL, "--count", "3"]);
    assert_eq!(count(&r, "statuses", "503"), 3, "{r}");
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(
            &text,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "NC")]
        ),
        3.0,
        "{text}"
    );
    let dump = mesh.waypoint_config_dump("demo").unwrap();
    let warnings = dump["warnings"].to_string();
    assert!(
        warnings.contains("IST0101") && warnings.contains("+v3\\\""),
        "{warnings}"
    );

    // An invalid regex is rejected alone; the last good version keeps serving.
    let good = weights(100, 0);
    apply(&mut mesh, &good);
    let broken = good.replace(
        "http:\n  - route:",
        "http:\n  - match: [{uri: {regex: '(['}}]\n    route:",
    );
    mesh.extra_yaml = broken;
    mesh.write_config().unwrap();
    wait_for(Duration::from_secs(5), "the rejection to show", || {
        let dump = mesh.waypoint_config_dump("demo").ok()?;
        let rejected = dump["rejected"].to_string();
        rejected
            .contains("VirtualService demo/backend: spec.http[0].match[0].uri.regex")
            .then_some(())
    })
    .unwrap();
    let r = load(&mesh, &["--url", URL, "--count", "20"]);
    assert_eq!(
        count(&r, "versions", "v1"),
        20,
        "last good 100/0 keeps serving: {r}"
    );
}

fn route_to(subset: &str, extra: &str) -> String {
    format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  http:
  - route: [{{destination: {{host: backend, subset: {subset}}}}}]
{extra}"
    )
}

#[test]
fn retries_recover_a_flaky_backend_and_timeouts_cut_slow_ones() {
    // v3 fails every second request with 503.
    let mut mesh = mesh("l7retry", &[("backend-v3", "v3", &["--fail-every", "2"])]);
    let subsets = format!("{SUBSETS}  - {{name: v3, labels: {{version: v3}}}}\n");
    let vs = |extra: &str| route_to("v3", extra).replacen(SUBSETS, &subsets, 1);
    apply(&mut mesh, &vs("    retries: {attempts: 0}\n"));
    let r = load(&mesh, &["--url", URL, "--count", "100"]);
    assert_eq!(
        count(&r, "statuses", "503"),
        50,
        "without retries half fail: {r}"
    );

    // Istio's default retry policy (2 attempts, 503 retriable) recovers every request.
    apply(&mut mesh, &vs(""));
    let r = load(&mesh, &["--url", URL, "--count", "100"]);
    assert_eq!(
        count(&r, "statuses", "200"),
        100,
        "default retries recover: {r}"
    );

    // A route timeout answers 504 when the backend is slower.
    apply(
        &mut mesh,
        &vs("    timeout: 0.3s\n    retries: {attempts: 0}\n"),
    );
    let r = load(
        &mesh,
        &["--url", &format!("{URL}/delay/2000"), "--count", "2"],
    );
    assert_eq!(count(&r, "statuses", "504"), 2, "{r}");
    let max = r["maxMs"].as_f64().unwrap();
    assert!(
        (250.0..1500.0).contains(&max),
        "timed out after {max} ms, want ~300"
    );
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(&text, "istio_requests_total", &[("response_flags", "UT")]),
        2.0
    );
}

#[test]
fn fault_injection_delays_and_aborts_the_configured_share() {
    let mut mesh = mesh("l7fault", &[]);
    apply(
        &mut mesh,
        &route_to(
            "v1",
            "    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}\n",
        ),
    );
    let r = load(
        &mesh,
        &["--url", URL, "--count", "400", "--concurrency", "4"],
    );
    let aborted = count(&r, "statuses", "418") as f64 / 400.0;
    assert!(
        (0.40..=0.60).contains(&aborted),
        "50% abort measured {aborted}: {r}"
    );
    assert_eq!(
        count(&r, "statuses", "418") + count(&r, "statuses", "200"),
        400
    );
    // A fault left on is visible: gauge and warning.
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(
            &text,
            "lanyard_fault_injection_routes",
            &[("virtual_service", "backend")]
        ),
        1.0
    );
    assert!(mesh
        .waypoint_log("demo")
        .contains("fault injection is active"));

    apply(
        &mut mesh,
        &route_to(
            "v1",
            "    fault: {delay: {fixedDelay: 0.4s, percentage: {value: 100}}}\n",
        ),
    );
    let r = load(&mesh, &["--url", URL, "--count", "4"]);
    assert_eq!(count(&r, "statuses", "200"), 4, "{r}");
    let min = r["minMs"].as_f64().unwrap();
    assert!(
        min >= 390.0,
        "every request delayed 400 ms, fastest took {min} ms"
    );

    // Without a percentage, nothing is injected (Istio's semantics).
    apply(
        &mut mesh,
        &route_to("v1", "    fault: {abort: {httpStatus: 418}}\n"),
    );
    let r = load(&mesh, &["--url", URL, "--count", "50"]);
    assert_eq!(count(&r, "statuses", "200"), 50, "{r}");
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint() {
    // v3 always fails; v1, v2 and v3 back the service.
    let mut mesh = mesh("l7outl", &[("backend-v3", "v3", &["--fail-every", "1"])]);
    let yaml = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend}}]
    retries: {attempts: 0}
";
    apply(&mut mesh, yaml);
    let r = load(&mesh, &["--url", URL, "--count", "90"]);
    let failed = count(&r, "statuses", "503");
    // Round robin over 3 endpoints: the bad one fails twice, then is ejected.
    assert!(
        (1..=3).contains(&failed),
        "{failed} failures before ejection: {r}"
    );
    assert_eq!(count(&r, "versions", "v3"), failed, "{r}");
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(&text, "lanyard_outlier_ejections_total", &[]),
        1.0,
        "{text}"
    );
}

#[test]
fn connection_pool_overflow_is_a_503_uo() {
    let mut mesh = mesh("l7pool", &[]);
    let yaml = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend}}]
    retries: {attempts: 0}
";
    apply(&mut mesh, yaml);
    let r = load(
        &mesh,
        &[
            "--url",
            &format!("{URL}/delay/300"),
            "--count",
            "12",
            "--concurrency",
            "6",
        ],
    );
    let (ok, over) = (count(&r, "statuses", "200"), count(&r, "statuses", "503"));
    assert_eq!(ok + over, 12, "{r}");
    assert!(
        ok >= 2 && over >= 4,
        "one running + one pending at a time: {r}"
    );
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(&text, "istio_requests_total", &[("response_flags", "UO")]),
        over as f64
    );
}

#[test]
fn mirroring_copies_requests_without_affecting_the_client() {
    let mut mesh = mesh("l7mirr", &[]);
    apply(
        &mut mesh,
        &route_to(
            "v1",
            "    mirror: {host: backend, subset: v2}\n    mirrorPercentage: {value: 100}\n",
        ),
    );
    let r = load(&mesh, &["--url", URL, "--count", "30"]);
    assert_eq!(
        count(&r, "versions", "v1"),
        30,
        "the client only sees v1: {r}"
    );
    // v2 got the copies: ask it directly (workload traffic skips the waypoint).
    let direct = format!("http://{}:8080/", mesh.pod("backend-v2").ip);
    let seen = wait_for(Duration::from_secs(5), "mirrored copies", || {
        let r = load(&mesh, &["--url", &direct]);
        let body: Value = serde_json::from_str(r["lastBody"].as_str()?).ok()?;
        let n = body["n"].as_u64()?;
        (n > 30).then_some(n)
    })
    .unwrap();
    assert_eq!(seen, 31, "30 mirrored copies then our direct request");
    let body: Value = serde_json::from_str(
        load(&mesh, &["--url", &direct])["lastBody"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["n"], 32);
}

#[test]
fn l7_authorization_by_identity_method_and_path() {
    let mut mesh = mesh("l7authz", &[]);
    let yaml = format!(
        "{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-readers, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: backend}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/demo/sa/client]}}}}]
    to: [{{operation: {{methods: [GET], paths: ['/api/*']}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: backend}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ['/api/admin']}}}}]
",
        weights(100, 0)
    );
    apply(&mut mesh, &yaml);
    let status = |method: &str, path: &str| {
        let r = load(
            &mesh,
            &["--url", &format!("{URL}{path}"), "--method", method],
        );
        let s = r["statuses"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .cloned()
            .unwrap();
        (s, r)
    };
    assert_eq!(status("GET", "/api/items").0, "200");
    let (s, r) = status("POST", "/api/items");
    assert_eq!(s, "403", "method not allowed: {r}");
    assert_eq!(r["lastBody"], "RBAC: access denied");
    assert_eq!(status("GET", "/other").0, "403", "path not allowed");
    assert_eq!(status("GET", "/api/admin").0, "403", "DENY wins over ALLOW");
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(
            &text,
            "lanyard_requests_denied_total",
            &[("policy", "demo/no-admin"), ("reason", "deny_matched")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "lanyard_requests_denied_total", &[]) >= 3.0,
        "{text}"
    );
}

/// curl's `--http2` on an http:// URL offers `Upgrade: h2c`; the waypoint takes it, and the
/// upgrading request and the later ones on the same connection (HTTP/2 streams) are each
/// routed and authorized.
#[test]
fn an_h2c_upgrade_continues_as_http2_with_every_request_routed_and_authorized() {
    let mut mesh = mesh("l7h2c", &[]);
    let yaml = format!(
        "{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-secret, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: backend}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ['/secret']}}}}]
",
        weights(0, 100)
    );
    apply(&mut mesh, &yaml);
    let urls: Vec<String> = ["/first", "/secret", "/third"]
        .iter()
        .map(|p| format!("{URL}{p}"))
        .collect();
    let mut args = vec![
        "-sS",
        "--http2",
        "--max-time",
        "10",
        "-w",
        "\n@@ %{http_version} %{http_code} %{num_connects}\n",
    ];
    args.extend(urls.iter().map(String::as_str));
    let out = mesh.exec_command("client", "curl", &args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("@@ ")).collect();
    // One connection, upgraded by the first request; all three answered over HTTP/2.
    assert_eq!(results, ["2 200 1", "2 403 0", "2 200 0"], "{text}");
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["version"], "v2",
        "routed by the VirtualService: {first}"
    );
    assert_eq!(first["path"], "/first");
    assert!(first["headers"]["x-request-id"].is_string(), "{first}");
    for gone in ["upgrade", "http2-settings"] {
        assert!(
            first["headers"][gone].is_null(),
            "{gone} forwarded: {first}"
        );
    }
}

#[test]
fn http2_and_grpc_unary_and_streaming_pass_the_waypoint() {
    let mut mesh = Mesh::builder("l7grpc")
        .nodes(2)
        .namespace("demo", true)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(backend("backend-v1", "v1"))
        .service(
            ServiceSpec::new("backend", "demo", VIP)
                .named_port("http", 80, 8080)
                .named_port("grpc", 9090, 8080),
        )
        .start()
        .expect("mesh starts");
    mesh.serve_http("backend-v1", 8080, &[]).unwrap();
    // HTTP/2 from the client to an HTTP port.
    let r = load(&mesh, &["--url", URL, "--count", "20", "--h2"]);
    assert_eq!(count(&r, "statuses", "200"), 20, "{r}");
    // gRPC: one message (unary) and several (streaming), echoed with grpc-status trailers.
    let grpc = "http://10.96.0.20:9090/echo.Echo/Say";
    let r = load(&mesh, &["--url", grpc, "--grpc", "1", "--count", "5"]);
    assert_eq!(count(&r, "grpcStatus", "0"), 5, "{r}");
    let r = load(&mesh, &["--url", grpc, "--grpc", "10", "--count", "3"]);
    assert_eq!(count(&r, "grpcStatus", "0"), 3, "{r}");
    // 10 framed messages of 14-15 bytes each came back, per call.
    let per_call = r["bodyBytes"].as_u64().unwrap() / 3;
    assert_eq!(
        per_call,
        (0..10)
            .map(|i| 5 + format!("message {i}").len() as u64)
            .sum::<u64>()
    );
    let text = mesh.waypoint_metrics("demo").unwrap();
    assert_eq!(
        metric(
            &text,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "0")]
        ),
        8.0,
        "{text}"
    );
    // A gRPC abort fault answers with the gRPC status.
    mesh.extra_yaml = "---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http:
  - match: [{port: 9090}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: backend, port: {number: 9090}}}]
  - route: [{destination: {host: backend}}]
"
    .into();
    mesh.write_config().unwrap();
    let r = wait_for(Duration::from_secs(5), "the fault to apply", || {
        let r = load(&mesh, &["--url", grpc, "--grpc", "1"]);
        (count(&r, "grpcStatus", "14") == 1).then_some(r)
    })
    .unwrap();
    assert_eq!(count(&r, "statuses", "200"), 1, "{r}");
}

#[test]
fn websocket_upgrades_and_tcp_routes_pass_the_waypoint() {
    let mut mesh = Mesh::builder("l7ws")
        .nodes(2)
        .namespace("demo", true)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(backend("backend-v1", "v1"))
        .pod(backend("backend-v2", "v2"))
        .service(
            ServiceSpec::new("backend", "demo", VIP)
                .named_port("http", 80, 8080)
                .port(7070, 8080),
        )
        .start()
        .expect("mesh starts");
    mesh.serve_http("backend-v1", 8080, &[]).unwrap();
    mesh.serve_http("backend-v2", 8080, &[]).unwrap();
    let r = mesh
        .app(
            "client",
            "ws",
            &[
                "--url",
                &format!("{URL}/chat"),
                "--text",
                "hello over the waypoint",
            ],
        )
        .unwrap();
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["echo"], "hello over the waypoint", "{r}");

    // An h2c offer on a request with a body is declined: served as HTTP/1.1, the offer not
    // passed on, so the connection stays under routing and policy.
    let out = mesh
        .exec_command(
            "client",
            "curl",
            &[
                "-sS",
                "--http1.1",
                "--max-time",
                "10",
                "-H",
                "Connection: Upgrade, HTTP2-Settings",
                "-H",
                "Upgrade: h2c",
                "-H",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                "-d",
                "payload",
                "-w",
                "\n@@ %{http_version} %{http_code}\n",
                &format!("{URL}/h2c"),
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("@@ 1.1 200\n"), "{text}");
    let body: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(body["bodyLen"], 7, "{body}");
    assert!(body["headers"]["upgrade"].is_null(), "{body}");
    assert!(body["headers"]["http2-settings"].is_null(), "{body}");

    // Port 7070 is opaque TCP: a `tcp` route with weights sends it all to v2.
    apply(
        &mut mesh,
        &format!(
            "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  tcp:
  - match: [{{port: 7070}}]
    route:
    - {{destination: {{host: backend, subset: v1, port: {{number: 7070}}}}, weight: 0}}
    - {{destination: {{host: backend, subset: v2, port: {{number: 7070}}}}, weight: 100}}
"
        ),
    );
    let r = load(
        &mesh,
        &["--url", "http://10.96.0.20:7070/", "--count", "10"],
    );
    assert_eq!(count(&r, "versions", "v2"), 10, "{r}");
    let text = mesh.waypoint_metrics("demo").unwrap();
    // Opaque TCP is not counted as requests.
    assert_eq!(
        metric(
            &text,
            "istio_requests_total",
            &[(
                "destination_cluster",
                "outbound|7070|v2|backend.demo.svc.cluster.local"
            )]
        ),
        0.0
    );
}

#[test]
fn a_service_entry_host_is_routed_by_the_waypoint_to_an_endpoint_outside_the_mesh() {
    let mut mesh = Mesh::builder("l7se")
        .nodes(2)
        .namespace("demo", true)
        .namespace("outside", false)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("payments", "outside").node(1))
        .start()
        .expect("mesh starts");
    mesh.serve_http("payments", 8080, &[]).unwrap();
    let outside = mesh.pod("payments").ip;
    // The entry lives in demo, whose waypoint serves it; its endpoint has no agent in front,
    // so the waypoint speaks plain HTTP to it after routing.
    apply(
        &mut mesh,
        &format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: payments, namespace: demo}}
spec:
  hosts: [api.payments.example]
  http:
  - match: [{{uri: {{prefix: /v1/}}}}]
    rewrite: {{uri: /internal/}}
    route: [{{destination: {{host: api.payments.example}}}}]
",
            external_entry("payments", "api.payments.example", "240.0.0.20", outside)
        ),
    );
    let r = load(
        &mesh,
        &["--url", "http://240.0.0.20:80/v1/charge", "--count", "5"],
    );
    assert_eq!(count(&r, "statuses", "200"), 5, "{r}");
    let body: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    assert_eq!(body["name"], "payments", "{body}");
    assert_eq!(body["path"], "/internal/charge", "the waypoint rewrote it");
    let text = mesh.waypoint_metrics("demo").unwrap();
    let labels = [
        ("destination_service", "api.payments.example"),
        ("response_code", "200"),
    ];
    assert_eq!(metric(&text, "istio_requests_total", &labels), 5.0);
}

#[test]
fn a_destination_rule_connect_timeout_bounds_connecting_to_an_endpoint() {
    let mut mesh = Mesh::builder("l7ct")
        .nodes(2)
        .namespace("demo", true)
        .namespace("outside", false)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("stall", "outside").node(1))
        .start()
        .expect("mesh starts");
    let cmd = mesh.command("stall", &["stall-server", "--port", "8080"]);
    mesh.start_listening(cmd, "stall-server").unwrap();
    let outside = mesh.pod("stall").ip;
    // The endpoint never answers a SYN: only the connect timeout ends an attempt.
    let config = |timeout: &str| {
        format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: stall, namespace: demo}}
spec:
  hosts: [stall.example]
  http:
  - route: [{{destination: {{host: stall.example}}}}]
    retries: {{attempts: 0}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: stall, namespace: demo}}
spec:
  host: stall.example
  trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: {timeout}}}}}}}
",
            external_entry("stall", "stall.example", "240.0.0.21", outside)
        )
    };
    let url = "http://240.0.0.21:80/";
    for (timeout, at_least, below) in [("300ms", 250.0, 1500.0), ("2s", 1950.0, 4000.0)] {
        apply(&mut mesh, &config(timeout));
        let r = load(&mesh, &["--url", url, "--count", "1"]);
        assert_eq!(count(&r, "statuses", "503"), 1, "{timeout}: {r}");
        let ms = r["maxMs"].as_f64().unwrap();
        assert!(
            (at_least..below).contains(&ms),
            "connectTimeout {timeout}: the request failed after {ms} ms"
        );
    }
    let text = mesh.waypoint_metrics("demo").unwrap();
    let labels = [
        ("destination_service", "stall.example"),
        ("response_code", "503"),
        ("response_flags", "UF"),
    ];
    assert_eq!(
        metric(&text, "istio_requests_total", &labels),
        2.0,
        "{text}"
    );
}
