//! One case per rule of Istio's semantics, each asserting the decision and what decided it.
//! The destination is a workload `app=server` in namespace `foo`; the root namespace is
//! `istio-system`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::authz::{
    applies_to, evaluate, AuthorizationPolicy, Headers, HttpAttrs, Reason, Request,
};
use super::wire::{authorization_policy, AuthorizationPolicySpec};

#[derive(Deserialize)]
struct Doc {
    metadata: Meta,
    spec: AuthorizationPolicySpec,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default = "default_ns")]
    namespace: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn default_ns() -> String {
    "foo".into()
}

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    if yaml.trim().is_empty() {
        return vec![];
    }
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            let doc = Doc::deserialize(d).expect("test YAML parses");
            authorization_policy(
                &doc.metadata.namespace,
                &doc.metadata.name,
                &doc.metadata.annotations,
                &doc.spec,
            )
            .unwrap_or_else(|e| panic!("test policy invalid: {e:?}"))
        })
        .collect()
}

/// The request under test; cases adjust it.
#[derive(Clone)]
struct R {
    principal: Option<&'static str>,
    src_ns: Option<&'static str>,
    src_sa: Option<&'static str>,
    src_ip: &'static str,
    dst_ip: &'static str,
    port: u16,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: Vec<(&'static str, &'static str)>,
    jwt: Option<&'static str>,
    claims: Option<serde_json::Value>,
}

impl Default for R {
    fn default() -> Self {
        R {
            principal: Some("cluster.local/ns/bar/sa/client"),
            src_ns: Some("bar"),
            src_sa: Some("client"),
            src_ip: "10.1.1.2",
            dst_ip: "10.1.2.2",
            port: 8080,
            http: None,
            headers: vec![],
            jwt: None,
            claims: None,
        }
    }
}

fn plaintext() -> R {
    R {
        principal: None,
        src_ns: None,
        src_sa: None,
        ..R::default()
    }
}

fn get(path: &'static str) -> R {
    R {
        http: Some(("server.foo.svc.cluster.local", "GET", path)),
        ..R::default()
    }
}

fn method(m: &'static str, path: &'static str) -> R {
    R {
        http: Some(("server.foo.svc.cluster.local", m, path)),
        ..R::default()
    }
}

/// Decides `r` against `ps` (HTTP attributes only when `http`), as
/// "allow:ns/name#rule", "deny:ns/name#rule", "allow:none" or "deny:nomatch".
fn decide(ps: &[AuthorizationPolicy], r: &R, http: bool) -> String {
    let labels: BTreeMap<String, String> = [("app".to_string(), "server".to_string())].into();
    let attrs = r
        .http
        .filter(|_| http)
        .map(|(host, method, path)| HttpAttrs {
            host,
            method,
            path,
            headers: Headers::Pairs(&r.headers),
            request_principal: r.jwt,
            claims: r.claims.as_ref(),
            remote_ip: None,
        });
    let req = Request {
        principal: r.principal,
        source_namespace: r.src_ns,
        source_service_account: r.src_sa,
        source_ip: r.src_ip.parse::<IpAddr>().unwrap(),
        destination_ip: r.dst_ip.parse::<IpAddr>().unwrap(),
        destination_port: r.port,
        http: attrs,
    };
    let d = evaluate(
        ps.iter()
            .filter(|p| applies_to(p, "istio-system", "foo", &labels)),
        &req,
    );
    let verdict = if d.allowed { "allow" } else { "deny" };
    match d.reason {
        Reason::AllowedBy(p) | Reason::DeniedBy(p) => {
            format!("{verdict}:{}/{}#{}", p.namespace, p.name, p.rule)
        }
        Reason::NoAllowPolicies => format!("{verdict}:none"),
        Reason::NoAllowMatched(_) => format!("{verdict}:nomatch"),
    }
}

fn run(yaml: &str, r: &R) -> String {
    decide(&policies(yaml), r, true)
}

/// As the node agent enforces it: the L4 form, no HTTP attributes.
fn run_l4(yaml: &str, r: &R) -> String {
    let ps: Vec<AuthorizationPolicy> = policies(yaml)
        .into_iter()
        .map(|p| p.for_l4().map_or(p, |(l4, _)| l4))
        .collect();
    decide(&ps, r, false)
}

macro_rules! cases {
    ($($name:ident: $yaml:expr, $req:expr => $want:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_eq!(run($yaml, &$req), $want);
            }
        )*
    };
}

const ALLOW_CLIENT: &str = "
metadata: {name: allow-client}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/bar/sa/client]}}]}]
";

cases! {
    no_policies_allow: "", R::default() => "allow:none";
    allow_matching_principal: ALLOW_CLIENT, R::default() => "allow:foo/allow-client#0";
    allow_other_principal_denied: ALLOW_CLIENT, R { principal: Some("cluster.local/ns/bar/sa/other"), ..R::default() } => "deny:nomatch";
    allow_plaintext_has_no_principal: ALLOW_CLIENT, plaintext() => "deny:nomatch";
    allow_without_rules_denies_all: "metadata: {name: deny-all}\nspec: {action: ALLOW}", R::default() => "deny:nomatch";
    allow_empty_rule_allows_all: "metadata: {name: allow-all}\nspec: {rules: [{}]}", plaintext() => "allow:foo/allow-all#0";
    action_defaults_to_allow: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}", R::default() => "allow:foo/p#0";
    deny_matching_denies: "metadata: {name: d}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [bar]}}]}]}", R::default() => "deny:foo/d#0";
    deny_not_matching_allows: "metadata: {name: d}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [baz]}}]}]}", R::default() => "allow:none";
    deny_without_rules_matches_nothing: "metadata: {name: d}\nspec: {action: DENY}", R::default() => "allow:none";
    deny_empty_rule_denies_all: "metadata: {name: d}\nspec: {action: DENY, rules: [{}]}", R::default() => "deny:foo/d#0";
    deny_wins_over_allow: "metadata: {name: a}\nspec: {rules: [{}]}\n---\nmetadata: {name: d}\nspec: {action: DENY, rules: [{}]}", R::default() => "deny:foo/d#0";
    deny_not_matching_then_allow_decides: "metadata: {name: a}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}\n---\nmetadata: {name: d}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [baz]}}]}]}", R::default() => "allow:foo/a#0";
    any_allow_policy_may_allow: "metadata: {name: a1}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}]}\n---\nmetadata: {name: a2}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}", R::default() => "allow:foo/a2#0";
    first_matching_rule_is_named: "metadata: {name: a}\nspec: {rules: [{from: [{source: {namespaces: [x]}}]}, {to: [{operation: {ports: ['8080']}}]}, {}]}", R::default() => "allow:foo/a#1";
    audit_never_decides: "metadata: {name: au}\nspec: {action: AUDIT, rules: [{}]}", R::default() => "allow:none";
    audit_does_not_count_as_allow_policy: "metadata: {name: au}\nspec: {action: AUDIT, rules: [{}]}\n---\nmetadata: {name: d}\nspec: {action: DENY, rules: [{to: [{operation: {ports: ['9090']}}]}]}", R::default() => "allow:none";
    dry_run_deny_not_enforced: "metadata: {name: d, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}", R::default() => "allow:none";
    dry_run_allow_not_enforced: "metadata: {name: a, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: ALLOW}", R::default() => "allow:none";
    dry_run_false_enforced: "metadata: {name: d, annotations: {istio.io/dry-run: 'false'}}\nspec: {action: DENY, rules: [{}]}", R::default() => "deny:foo/d#0";
    custom_is_not_evaluated_at_l4: "metadata: {name: c}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}", R::default() => "allow:none";
    root_namespace_applies_mesh_wide: "metadata: {name: mesh, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}", R::default() => "deny:istio-system/mesh#0";
    other_namespace_does_not_apply: "metadata: {name: p, namespace: other}\nspec: {action: DENY, rules: [{}]}", R::default() => "allow:none";
    selector_matching_applies: "metadata: {name: p}\nspec: {selector: {matchLabels: {app: server}}, action: DENY, rules: [{}]}", R::default() => "deny:foo/p#0";
    selector_not_matching_skips: "metadata: {name: p}\nspec: {selector: {matchLabels: {app: other}}, action: DENY, rules: [{}]}", R::default() => "allow:none";
    selector_all_labels_required: "metadata: {name: p}\nspec: {selector: {matchLabels: {app: server, version: v2}}, action: DENY, rules: [{}]}", R::default() => "allow:none";
    target_refs_do_not_apply_at_workloads: "metadata: {name: p}\nspec: {targetRefs: [{kind: Service, group: '', name: server}], action: DENY, rules: [{}]}", R::default() => "allow:none";
    principal_prefix: "metadata: {name: p}\nspec: {rules: [{from: [{source: {principals: ['cluster.local/ns/bar/*']}}]}]}", R::default() => "allow:foo/p#0";
    principal_suffix: "metadata: {name: p}\nspec: {rules: [{from: [{source: {principals: ['*/sa/client']}}]}]}", R::default() => "allow:foo/p#0";
    principal_presence_requires_mtls: "metadata: {name: p}\nspec: {rules: [{from: [{source: {principals: ['*']}}]}]}", plaintext() => "deny:nomatch";
    principal_presence_with_mtls: "metadata: {name: p}\nspec: {rules: [{from: [{source: {principals: ['*']}}]}]}", R::default() => "allow:foo/p#0";
    not_principals_excludes: "metadata: {name: p}\nspec: {rules: [{from: [{source: {notPrincipals: ['cluster.local/ns/bar/sa/client']}}]}]}", R::default() => "deny:nomatch";
    not_principals_admits_others: "metadata: {name: p}\nspec: {rules: [{from: [{source: {notPrincipals: ['cluster.local/ns/bar/sa/x']}}]}]}", R::default() => "allow:foo/p#0";
    not_principals_admits_plaintext: "metadata: {name: p}\nspec: {rules: [{from: [{source: {notPrincipals: ['*']}}]}]}", plaintext() => "allow:foo/p#0";
    namespaces_match_peer_identity: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}", R::default() => "allow:foo/p#0";
    namespaces_need_identity: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}]}]}", plaintext() => "deny:nomatch";
    not_namespaces: "metadata: {name: p}\nspec: {action: DENY, rules: [{from: [{source: {notNamespaces: [foo]}}]}]}", R::default() => "deny:foo/p#0";
    namespaces_wildcard: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: ['b*']}}]}]}", R::default() => "allow:foo/p#0";
    service_accounts_match: "metadata: {name: p}\nspec: {rules: [{from: [{source: {serviceAccounts: [bar/client]}}]}]}", R::default() => "allow:foo/p#0";
    service_accounts_other: "metadata: {name: p}\nspec: {rules: [{from: [{source: {serviceAccounts: [bar/other]}}]}]}", R::default() => "deny:nomatch";
    not_service_accounts: "metadata: {name: p}\nspec: {action: DENY, rules: [{from: [{source: {notServiceAccounts: [bar/other]}}]}]}", R::default() => "deny:foo/p#0";
    ip_blocks_cidr: "metadata: {name: p}\nspec: {rules: [{from: [{source: {ipBlocks: [10.1.1.0/24]}}]}]}", plaintext() => "allow:foo/p#0";
    ip_blocks_single: "metadata: {name: p}\nspec: {rules: [{from: [{source: {ipBlocks: [10.1.1.3]}}]}]}", plaintext() => "deny:nomatch";
    not_ip_blocks: "metadata: {name: p}\nspec: {action: DENY, rules: [{from: [{source: {notIpBlocks: [10.9.0.0/16]}}]}]}", R::default() => "deny:foo/p#0";
    source_fields_are_anded: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [bar], ipBlocks: [10.9.0.0/16]}}]}]}", R::default() => "deny:nomatch";
    sources_are_ored: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [x]}}, {source: {ipBlocks: [10.1.0.0/16]}}]}]}", R::default() => "allow:foo/p#0";
    values_are_ored: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [x, bar]}}]}]}", R::default() => "allow:foo/p#0";
    from_and_to_both_required: "metadata: {name: p}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {ports: ['9090']}}]}]}", R::default() => "deny:nomatch";
    ports_match: "metadata: {name: p}\nspec: {action: DENY, rules: [{to: [{operation: {ports: ['8080']}}]}]}", R::default() => "deny:foo/p#0";
    not_ports: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {notPorts: ['8080']}}]}]}", R::default() => "deny:nomatch";
    operations_are_ored: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {ports: ['1']}}, {operation: {ports: ['8080']}}]}]}", R::default() => "allow:foo/p#0";
    when_source_ip: "metadata: {name: p}\nspec: {rules: [{when: [{key: source.ip, values: [10.1.1.0/24]}]}]}", R::default() => "allow:foo/p#0";
    when_source_namespace: "metadata: {name: p}\nspec: {rules: [{when: [{key: source.namespace, values: [bar]}]}]}", R::default() => "allow:foo/p#0";
    when_source_principal_not_values: "metadata: {name: p}\nspec: {rules: [{when: [{key: source.principal, notValues: ['*/sa/client']}]}]}", R::default() => "deny:nomatch";
    when_destination_ip: "metadata: {name: p}\nspec: {action: DENY, rules: [{when: [{key: destination.ip, values: [10.1.2.2]}]}]}", R::default() => "deny:foo/p#0";
    when_destination_port: "metadata: {name: p}\nspec: {rules: [{when: [{key: destination.port, values: ['8080']}]}]}", R::default() => "allow:foo/p#0";
    when_all_must_match: "metadata: {name: p}\nspec: {rules: [{when: [{key: destination.port, values: ['8080']}, {key: source.namespace, values: [x]}]}]}", R::default() => "deny:nomatch";
    methods_l7: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", get("/") => "allow:foo/p#0";
    methods_l7_other: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}", method("POST", "/") => "deny:nomatch";
    not_methods: "metadata: {name: p}\nspec: {action: DENY, rules: [{to: [{operation: {notMethods: [GET]}}]}]}", method("DELETE", "/") => "deny:foo/p#0";
    paths_exact: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: [/info]}}]}]}", get("/info") => "allow:foo/p#0";
    paths_prefix: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: ['/api/*']}}]}]}", get("/api/v1") => "allow:foo/p#0";
    paths_suffix: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: ['*.png']}}]}]}", get("/img/a.png") => "allow:foo/p#0";
    paths_template_one: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: ['/users/{*}/orders']}}]}]}", get("/users/7/orders") => "allow:foo/p#0";
    paths_template_many: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: ['/files/{**}']}}]}]}", get("/files/a/b/c") => "allow:foo/p#0";
    paths_template_no_cross: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {paths: ['/users/{*}/orders']}}]}]}", get("/users/7/8/orders") => "deny:nomatch";
    not_paths: "metadata: {name: p}\nspec: {action: DENY, rules: [{to: [{operation: {notPaths: ['/public/*']}}]}]}", get("/admin") => "deny:foo/p#0";
    hosts_case_insensitive: "metadata: {name: p}\nspec: {rules: [{to: [{operation: {hosts: ['Server.foo.svc.cluster.local']}}]}]}", get("/") => "allow:foo/p#0";
    request_principals_require_jwt: "metadata: {name: p}\nspec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}", get("/") => "deny:nomatch";
    request_principals_with_jwt: "metadata: {name: p}\nspec: {rules: [{from: [{source: {requestPrincipals: ['https://issuer/*']}}]}]}", R { jwt: Some("https://issuer/alice"), ..get("/") } => "allow:foo/p#0";
    when_claims: "metadata: {name: p}\nspec: {rules: [{when: [{key: 'request.auth.claims[group]', values: [admins]}]}]}", R { claims: Some(serde_json::json!({"group": ["users", "admins"]})), ..get("/") } => "allow:foo/p#0";
    when_nested_claims: "metadata: {name: p}\nspec: {rules: [{when: [{key: 'request.auth.claims[org][team]', values: [core]}]}]}", R { claims: Some(serde_json::json!({"org": {"team": "core"}})), ..get("/") } => "allow:foo/p#0";
    when_headers: "metadata: {name: p}\nspec: {rules: [{when: [{key: 'request.headers[X-User]', values: ['beta-*']}]}]}", R { headers: vec![("x-user", "beta-tester")], ..get("/") } => "allow:foo/p#0";
}

const L7_ALLOW: &str = "metadata: {name: get-only}\nspec: {rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [ops]}}]}]}";
const L7_DENY: &str = "metadata: {name: no-post}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [POST], ports: ['8080']}}]}]}";

#[test]
fn l4_drops_allow_rules_that_need_http() {
    // The GET-only rule cannot be checked without HTTP: at L4 it never matches.
    assert_eq!(run_l4(L7_ALLOW, &R::default()), "deny:nomatch");
    // The other rule of the same policy still works.
    assert_eq!(
        run_l4(
            L7_ALLOW,
            &R {
                src_ns: Some("ops"),
                ..R::default()
            }
        ),
        "allow:foo/get-only#1"
    );
    let (_, warning) = policies(L7_ALLOW)[0].for_l4().unwrap();
    assert!(warning.contains("foo/get-only"));
}

#[test]
fn l4_enforces_deny_rules_without_their_http_parts() {
    // Without the method, the DENY still applies to its L4 parts (namespace and port).
    assert_eq!(run_l4(L7_DENY, &R::default()), "deny:foo/no-post#0");
    assert_eq!(
        run_l4(
            L7_DENY,
            &R {
                port: 9090,
                ..R::default()
            }
        ),
        "allow:none"
    );
    let (_, warning) = policies(L7_DENY)[0].for_l4().unwrap();
    assert!(warning.contains("DENY"));
}

#[test]
fn dry_run_is_reported() {
    let ps = policies("metadata: {name: d, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}");
    let req = Request {
        principal: None,
        source_namespace: None,
        source_service_account: None,
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
        http: None,
    };
    let d = evaluate(ps.iter(), &req);
    assert!(d.allowed);
    assert_eq!(d.dry_run.len(), 1);
    assert!(!d.dry_run[0].1, "would have denied");
}

/// Invalid policies are rejected with the field at fault.
fn invalid(spec: &str) -> String {
    let spec: AuthorizationPolicySpec = serde_yaml::from_str(spec).expect("parses");
    let (field, msg) = authorization_policy("foo", "p", &BTreeMap::new(), &spec).unwrap_err();
    format!("{field}: {msg}")
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            "{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}",
            "spec.selector: cannot be combined",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [a/b], principals: [x]}}]}]}",
            "spec.rules[0].from[0].source.serviceAccounts: cannot be combined",
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP",
        ),
        (
            "{rules: [{from: [{source: {notIpBlocks: [nope]}}]}]}",
            "spec.rules[0].from[0].source.notIpBlocks[0]",
        ),
        (
            "{rules: [{to: [{operation: {ports: ['80', 'http']}}]}]}",
            "spec.rules[0].to[0].operation.ports[1]: \"http\" is not a port",
        ),
        (
            "{rules: [{when: [{key: source.colour, values: [x]}]}]}",
            "spec.rules[0].when[0].key: unknown key",
        ),
        (
            "{rules: [{when: [{key: source.ip}]}]}",
            "spec.rules[0].when[0]: must set values or notValues",
        ),
        (
            "{rules: [{when: [{key: source.ip, values: [bad]}]}]}",
            "spec.rules[0].when[0].values[0]",
        ),
        (
            "{rules: [{from: [{source: {principals: ['']}}]}]}",
            "spec.rules[0].from[0].source.principals[0]: empty value",
        ),
        (
            "{rules: [{from: [{source: {principals: ['a*b']}}]}]}",
            "a wildcard may only stand at the start or the end",
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/a/{**}/b']}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "{rules: [{from: [{}]}]}",
            "spec.rules[0].from[0].source: is required",
        ),
        (
            "{rules: [{from: [{source: {}}]}]}",
            "spec.rules[0].from[0].source: must set at least one field",
        ),
        ("{action: DENIED}", "spec.action: \"DENIED\" is not one of"),
        (
            "{action: CUSTOM}",
            "spec.provider: is required for action CUSTOM",
        ),
        (
            "{action: ALLOW, provider: {name: x}}",
            "spec.provider: is only allowed with action CUSTOM",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [justname]}}]}]}",
            "not of the form <namespace>/<serviceaccount>",
        ),
    ];
    for (spec, want) in cases {
        let got = invalid(spec);
        assert!(got.contains(want), "{spec}\n got: {got}\nwant: {want}");
    }
    // Unknown fields are errors, as with a structural CRD schema.
    assert!(serde_yaml::from_str::<AuthorizationPolicySpec>("{rules: [{form: []}]}").is_err());
}

mod peer {
    use super::super::peer::{is_strict, MtlsMode};
    use super::super::wire::{peer_authentication, PeerAuthenticationSpec};
    use std::collections::BTreeMap;

    fn pa(ns: &str, name: &str, spec: &str) -> super::super::peer::PeerAuthentication {
        let spec: PeerAuthenticationSpec = serde_yaml::from_str(spec).unwrap();
        peer_authentication(ns, name, &spec).unwrap()
    }

    fn strict(ps: &[super::super::peer::PeerAuthentication], port: u16) -> bool {
        let labels: BTreeMap<String, String> = [("app".to_string(), "server".to_string())].into();
        is_strict(
            ps,
            "istio-system",
            "foo",
            &labels,
            port,
            MtlsMode::Permissive,
        )
    }

    #[test]
    fn inheritance_mesh_namespace_workload_port() {
        assert!(!strict(&[], 80), "default PERMISSIVE");
        let mesh = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        assert!(strict(std::slice::from_ref(&mesh), 80));
        let ns = pa("foo", "ns", "{mtls: {mode: PERMISSIVE}}");
        assert!(
            !strict(&[mesh.clone(), ns.clone()], 80),
            "namespace overrides mesh"
        );
        let unset = pa("foo", "ns", "{mtls: {mode: UNSET}}");
        assert!(strict(&[mesh.clone(), unset], 80), "UNSET inherits");
        let wl = pa("foo", "wl", "{selector: {matchLabels: {app: server}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: PERMISSIVE}}}");
        assert!(
            strict(&[ns.clone(), wl.clone()], 80),
            "workload overrides namespace"
        );
        assert!(
            !strict(&[ns.clone(), wl.clone()], 8080),
            "port level overrides workload"
        );
        let other = pa(
            "foo",
            "other",
            "{selector: {matchLabels: {app: other}}, mtls: {mode: STRICT}}",
        );
        assert!(!strict(&[ns, other], 80), "selector must match");
    }

    #[test]
    fn disable_acts_as_permissive_with_a_warning() {
        let p = pa("foo", "off", "{mtls: {mode: DISABLE}}");
        assert!(!strict(std::slice::from_ref(&p), 80));
        assert!(p.warning().unwrap().contains("foo/off"));
    }

    #[test]
    fn validation() {
        let spec: PeerAuthenticationSpec =
            serde_yaml::from_str("{portLevelMtls: {'80': {mode: STRICT}}}").unwrap();
        assert_eq!(
            peer_authentication("foo", "p", &spec).unwrap_err().0,
            "spec.portLevelMtls"
        );
        let spec: PeerAuthenticationSpec =
            serde_yaml::from_str("{mtls: {mode: STRICTER}}").unwrap();
        assert_eq!(
            peer_authentication("foo", "p", &spec).unwrap_err().0,
            "spec.mtls.mode"
        );
        let spec: PeerAuthenticationSpec = serde_yaml::from_str(
            "{selector: {matchLabels: {a: b}}, portLevelMtls: {'x': {mode: STRICT}}}",
        )
        .unwrap();
        assert_eq!(
            peer_authentication("foo", "p", &spec).unwrap_err().0,
            "spec.portLevelMtls[x]"
        );
    }
}

/// A waypoint hands the engine its request's header map as it is: names match whatever case
/// the client wrote, the first value counts, and a value that is not text reads as absent.
#[test]
fn headers_are_read_from_the_request_map_in_place() {
    let mut map = http::HeaderMap::new();
    map.append("X-User", http::HeaderValue::from_static("beta-tester"));
    map.append("x-user", http::HeaderValue::from_static("other"));
    map.insert("x-bin", http::HeaderValue::from_bytes(b"\xff").unwrap());
    let h = Headers::Map(&map);
    assert_eq!(h.get("x-user"), Some("beta-tester"));
    assert_eq!(h.get("x-bin"), None);
    assert_eq!(h.get("x-none"), None);
    let pairs = [("x-user", "beta-tester")];
    assert_eq!(Headers::Pairs(&pairs).get("x-user"), Some("beta-tester"));
    assert_eq!(Headers::default().get("x-user"), None);
}
