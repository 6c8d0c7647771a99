use std::time::Duration;

use http::HeaderMap;
use serde_json::json;

use super::destination_rule::{HashOn, LoadBalancer};
use super::virtual_service::{Abort, RequestView, RouteAction};
use super::wire::{DestinationRuleSpec, VirtualServiceSpec};
use super::*;

fn vs(spec: serde_json::Value) -> Result<VirtualService, Invalid> {
    let spec: VirtualServiceSpec = serde_json::from_value(spec).expect("wire form");
    VirtualService::validate("demo", "vs", &spec, "cluster.local")
}

fn dr(spec: serde_json::Value) -> Result<DestinationRule, Invalid> {
    let spec: DestinationRuleSpec = serde_json::from_value(spec).expect("wire form");
    DestinationRule::validate("demo", "dr", &spec, "cluster.local")
}

fn req<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method,
        scheme: "http",
        path_and_query: path,
        authority: "backend",
        headers,
        port: 80,
        source_labels: None,
        source_namespace: None,
    }
}

fn routed(v: &VirtualService, r: &RequestView<'_>) -> Option<usize> {
    v.route(r).map(|(i, _)| i)
}

#[test]
fn first_matching_route_wins_and_matchers_follow_istio() {
    let v = vs(json!({"hosts": ["backend"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "backend", "subset": "v2"}}]},
        {"match": [{"uri": {"prefix": "/api"}, "method": {"exact": "POST"}}], "route": [{"destination": {"host": "backend"}}]},
        {"match": [{"uri": {"regex": "/items/[0-9]+"}}], "route": [{"destination": {"host": "backend"}}]},
        {"match": [{"uri": {"exact": "/Case"}, "ignoreUriCase": true}], "route": [{"destination": {"host": "backend"}}]},
        {"match": [{"queryParams": {"beta": {"exact": "1"}}}, {"headers": {"x-flag": {}}}], "route": [{"destination": {"host": "backend"}}]},
        {"match": [{"withoutHeaders": {"x-skip": {}}, "uri": {"prefix": "/w"}}], "route": [{"destination": {"host": "backend"}}]},
        {"route": [{"destination": {"host": "backend", "subset": "v1"}}]}
    ]}))
    .unwrap();
    assert_eq!(v.hosts[0].to_string(), "backend.demo.svc.cluster.local");
    let none = HeaderMap::new();
    let mut jason = HeaderMap::new();
    jason.insert("end-user", "jason".parse().unwrap());
    assert_eq!(routed(&v, &req("GET", "/", &jason)), Some(0));
    assert_eq!(routed(&v, &req("POST", "/api/x", &none)), Some(1));
    assert_eq!(
        routed(&v, &req("GET", "/api/x", &none)),
        Some(6),
        "method must match too"
    );
    assert_eq!(routed(&v, &req("GET", "/items/42", &none)), Some(2));
    assert_eq!(
        routed(&v, &req("GET", "/items/42/x", &none)),
        Some(6),
        "regex is a full match"
    );
    assert_eq!(
        routed(&v, &req("GET", "/items/42?x=1", &none)),
        Some(2),
        "query is not part of the uri"
    );
    assert_eq!(routed(&v, &req("GET", "/cASE", &none)), Some(3));
    assert_eq!(routed(&v, &req("GET", "/x?a=2&beta=1", &none)), Some(4));
    let mut flag = HeaderMap::new();
    flag.insert("x-flag", "".parse().unwrap());
    assert_eq!(
        routed(&v, &req("GET", "/x", &flag)),
        Some(4),
        "{{}} means present"
    );
    let mut skip = HeaderMap::new();
    skip.insert("x-skip", "1".parse().unwrap());
    assert_eq!(routed(&v, &req("GET", "/w", &none)), Some(5));
    assert_eq!(routed(&v, &req("GET", "/w", &skip)), Some(6));
}

#[test]
fn weights_are_relative_and_defaults_are_istios() {
    let v = vs(json!({"hosts": ["backend"], "http": [
        {"route": [{"destination": {"host": "backend", "subset": "v1"}, "weight": 9},
                   {"destination": {"host": "backend", "subset": "v2"}, "weight": 1}]},
    ]}))
    .unwrap();
    let r = &v.http[0];
    let RouteAction::Forward(ds) = &r.action else {
        panic!()
    };
    assert_eq!(ds.iter().map(|d| d.weight).collect::<Vec<_>>(), vec![9, 1]);
    assert_eq!(r.retries.attempts, 2, "Istio retries twice by default");
    assert_eq!(r.retries.retry_on.status_codes, vec![503]);
    assert!(r.retries.retry_on.connect_failure);
    assert_eq!(r.timeout, None, "no timeout by default");

    let single =
        vs(json!({"hosts": ["b"], "http": [{"route": [{"destination": {"host": "b"}}]}]})).unwrap();
    let RouteAction::Forward(ds) = &single.http[0].action else {
        panic!()
    };
    assert_eq!(ds[0].weight, 1, "a lone destination takes everything");
}

#[test]
fn fault_percentage_omitted_injects_nothing() {
    let v = vs(json!({"hosts": ["b"], "http": [{
        "fault": {"delay": {"fixedDelay": "1.5s"}, "abort": {"httpStatus": 503, "percentage": {"value": 12.5}}},
        "route": [{"destination": {"host": "b"}}]}]}))
    .unwrap();
    let f = v.http[0].fault.as_ref().unwrap();
    assert_eq!(f.delay, Some((Duration::from_millis(1500), 0.0)));
    let (abort, fr) = f.abort.as_ref().unwrap();
    assert!(matches!(abort, Abort::Http(s) if s.as_u16() == 503));
    assert_eq!(*fr, 0.125);
    assert!(v.has_fault());
    let g = vs(json!({"hosts": ["b"], "http": [{"fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}},
        "route": [{"destination": {"host": "b"}}]}]})).unwrap();
    assert!(matches!(
        g.http[0].fault.as_ref().unwrap().abort,
        Some((Abort::Grpc(14), _))
    ));
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (json!({"hosts": []}), "spec.hosts"),
        (
            json!({"hosts": ["b"], "http": [{"match": [{"uri": {"regex": "(["}}], "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].match[0].uri.regex",
        ),
        (
            json!({"hosts": ["b"], "http": [{"route": [{"destination": {"host": "b"}, "weight": -1}]}]}),
            "spec.http[0].route[0].weight",
        ),
        (
            json!({"hosts": ["b"], "http": [{"timeout": "soon", "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].timeout",
        ),
        (
            json!({"hosts": ["b"], "http": [{"retries": {"attempts": 3, "retryOn": "5xx,sometimes"}, "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].retries.retryOn",
        ),
        (
            json!({"hosts": ["b"], "http": [{"fault": {"abort": {"percentage": {"value": 10}}}, "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].fault.abort",
        ),
        (
            json!({"hosts": ["b"], "http": [{"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}}, "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].fault.delay.percentage.value",
        ),
        (json!({"hosts": ["b"], "http": [{}]}), "spec.http[0].route"),
        (
            json!({"hosts": ["b"], "http": [{"route": [{"destination": {"host": "*.x"}}]}]}),
            "spec.http[0].route[0].destination.host",
        ),
        (
            json!({"hosts": ["b"], "http": [{"match": [{"uri": {"exact": "/", "prefix": "/"}}], "route": [{"destination": {"host": "b"}}]}]}),
            "spec.http[0].match[0].uri",
        ),
    ];
    for (spec, field) in cases {
        let e = vs(spec.clone()).expect_err(&spec.to_string());
        assert_eq!(e.0, field, "{spec}: {}", e.1);
    }
    let e = dr(json!({"host": "b", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}))
        .unwrap_err();
    assert_eq!(e.0, "spec.trafficPolicy.loadBalancer.simple");
    let e = dr(json!({"host": "b", "subsets": [{"name": "v1"}, {"name": "v1"}]})).unwrap_err();
    assert_eq!(e.0, "spec.subsets[1].name");
}

#[test]
fn subset_policy_is_layered_over_the_top_level_one() {
    let d = dr(json!({"host": "backend", "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_REQUEST"},
            "connectionPool": {"http": {"http1MaxPendingRequests": 1}},
            "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s", "baseEjectionTime": "30s"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}}}}]}))
    .unwrap();
    assert_eq!(d.subset("v1").unwrap().policy, d.policy);
    let v2 = &d.subset("v2").unwrap().policy;
    assert_eq!(
        v2.load_balancer,
        Some(LoadBalancer::ConsistentHash(HashOn::Header(
            "x-user".into()
        )))
    );
    assert_eq!(v2.pool.http1_max_pending, Some(1), "inherited");
    let od = d.policy.outlier.as_ref().unwrap();
    assert_eq!(
        (od.consecutive_5xx, od.interval, od.max_ejection_percent),
        (Some(2), Duration::from_secs(1), 10)
    );
}

#[test]
fn durations_parse_like_istio() {
    for (raw, ms) in [
        ("1s", 1000),
        ("0.5s", 500),
        ("250ms", 250),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
    ] {
        assert_eq!(
            parse_duration(raw),
            Some(Duration::from_millis(ms)),
            "{raw}"
        );
    }
    for bad in ["", "5", "1 s", "s", "1d"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn state_finds_rules_by_host_and_flags_undefined_subsets() {
    use crate::config::{parse_documents, Store};
    use crate::state::{MeshState, Settings};
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: backend}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: demo, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend, subset: v1}, weight: 90}, {destination: {host: backend, subset: v3}, weight: 10}]}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec: {host: backend.demo.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}
"#;
    let snap = Store::default().update(parse_documents(yaml).unwrap());
    assert!(snap.rejections.is_empty(), "{:?}", snap.rejections);
    let s = MeshState::build(snap, &Settings::default());
    let host = "backend.demo.svc.cluster.local";
    assert_eq!(s.virtual_service_for(host).unwrap().name, "backend");
    assert_eq!(
        s.destination_rule_for(host, "other").unwrap().name,
        "backend"
    );
    assert!(s
        .virtual_service_for("legacy.demo.svc.cluster.local")
        .is_none());
    let backend = s.service_by_host(host).unwrap();
    assert_eq!(s.waypoint_for_service(backend).unwrap().name, "waypoint");
    let legacy = s.service_by_host("legacy.demo.svc.cluster.local").unwrap();
    assert_eq!(s.waypoint_for_service(legacy), None, "none opts out");
    let w: Vec<_> = s
        .warnings()
        .into_iter()
        .filter(|w| w.contains("IST0101") && w.contains("host+subset"))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", s.warnings());
    assert!(
        w[0].contains("spec.http[0].route[1].destination.subset") && w[0].contains("+v3\""),
        "{}",
        w[0]
    );
}

#[test]
fn waypoint_policies_are_found_by_target_once_each() {
    use crate::config::{parse_documents, Store};
    use crate::state::{MeshState, Settings, Waypoint};
    let policy = |ns: &str, name: &str, refs: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{targetRefs: [{refs}]}}\n"
        )
    };
    let yaml = [
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: demo}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n".to_string(),
        policy("istio-system", "mesh", "{kind: GatewayClass, name: istio-waypoint}"),
        policy("demo", "gw", "{kind: Gateway, name: waypoint}"),
        policy("demo", "svc", "{kind: Service, name: backend}, {kind: Service, name: backend}"),
        policy("demo", "other-svc", "{kind: Service, name: frontend}"),
        policy("other", "same-name", "{kind: Service, name: backend}"),
    ]
    .concat();
    let snap = Store::default().update(parse_documents(&yaml).unwrap());
    assert!(snap.rejections.is_empty(), "{:?}", snap.rejections);
    let s = MeshState::build(snap, &Settings::default());
    let svc = s
        .service_by_host("backend.demo.svc.cluster.local")
        .unwrap()
        .clone();
    let wp = Waypoint {
        namespace: "demo".into(),
        name: "waypoint".into(),
    };
    let names = |ps: crate::state::Applicable<'_, crate::policy::authz::AuthorizationPolicy>| {
        ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.waypoint_policies(&wp, Some(&svc))),
        ["mesh", "gw", "svc"]
    );
    assert_eq!(names(s.waypoint_policies(&wp, None)), ["mesh", "gw"]);
}
