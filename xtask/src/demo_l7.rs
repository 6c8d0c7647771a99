//! The demo's L7 steps, served by the `todo` namespace's waypoint: canary by weight over
//! DestinationRule subsets, header routing for beta users, AuthorizationPolicy by identity and
//! method, a JWT required for POST, and fault injection.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lanyard_e2e::{metric, wait_for, Mesh};
use serde_json::{json, Value};

use crate::demo::{lanyardctl, Steps};

pub const UI: &str = "http://10.96.0.21:80";
pub const BACKEND: &str = "http://10.96.0.20:8080";
const ISSUER: &str = "https://idp.todo.demo";

/// Applies `yaml` (with the demo's base objects) and waits until the waypoint has it.
fn apply(mesh: &mut Mesh, yaml: &str) -> Result<()> {
    mesh.extra_yaml = yaml.to_string();
    mesh.write_config()?;
    let want = (
        yaml.matches("kind: VirtualService").count(),
        yaml.matches("kind: DestinationRule").count(),
        yaml.matches("kind: AuthorizationPolicy").count(),
    );
    wait_for(
        Duration::from_secs(10),
        "the waypoint to load the config",
        || {
            let d = mesh.waypoint_config_dump("todo").ok()?;
            let got = (
                d["virtualServices"].as_array()?.len(),
                d["destinationRules"].as_array()?.len(),
                d["authorizationPolicies"].as_array()?.len(),
            );
            (got == want).then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_millis(600));
    Ok(())
}

fn load(mesh: &Mesh, pod: &str, args: &[&str]) -> Result<Value> {
    mesh.load(pod, args)
}

fn split(v: &Value) -> BTreeMap<String, u64> {
    v["versions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn status(
    mesh: &Mesh,
    pod: &str,
    url: &str,
    method: &str,
    header: Option<&str>,
) -> Result<(String, Value)> {
    let mut args = vec!["--url", url, "--method", method];
    if let Some(h) = header {
        args.extend(["--header", h]);
    }
    let r = load(mesh, pod, &args)?;
    let s = r["statuses"]
        .as_object()
        .and_then(|m| m.keys().next().cloned());
    Ok((s.unwrap_or_else(|| format!("error {}", r["errors"])), r))
}

fn canary(v1: u32, v2: u32) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: todoui, namespace: todo}}
spec:
  host: todoui
  subsets:
  - {{name: v0-1, labels: {{version: '0.1'}}}}
  - {{name: v0-2, labels: {{version: '0.2'}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: todoui, namespace: todo}}
spec:
  hosts: [todoui]
  http:
  - route:
    - {{destination: {{host: todoui, subset: v0-1}}, weight: {v1}}}
    - {{destination: {{host: todoui, subset: v0-2}}, weight: {v2}}}
"
    )
}

const BETA: &str = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: todoui, namespace: todo}
spec:
  host: todoui
  subsets:
  - {name: v0-1, labels: {version: '0.1'}}
  - {name: v0-2, labels: {version: '0.2'}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: todoui, namespace: todo}
spec:
  hosts: [todoui]
  http:
  - match: [{headers: {x-user-group: {exact: beta}}}]
    route: [{destination: {host: todoui, subset: v0-2}}]
  - route: [{destination: {host: todoui, subset: v0-1}}]
";

const ONLY_UI_GETS: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: todobackend-readers, namespace: todo}
spec:
  targetRefs: [{kind: Service, group: '', name: todobackend}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/todo/sa/todoui]}}]
    to: [{operation: {methods: [GET]}}]
";

fn jwt_policies(jwks_uri: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: todobackend-jwt, namespace: todo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: todobackend}}]
  jwtRules: [{{issuer: '{ISSUER}', jwksUri: '{jwks_uri}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: todobackend-readers, namespace: todo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: todobackend}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/todo/sa/todoui]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
  - from: [{{source: {{principals: [cluster.local/ns/todo/sa/todoui], requestPrincipals: ['*']}}}}]
    to: [{{operation: {{methods: [POST]}}}}]
"
    )
}

fn fault(kind: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: todobackend, namespace: todo}}
spec:
  hosts: [todobackend]
  http:
  - fault: {{{kind}}}
    route: [{{destination: {{host: todobackend}}}}]
"
    )
}

/// A local identity provider: a P-256 key, its JWKS (served by the `idp` pod), and tokens.
pub struct Idp {
    key: EncodingKey,
    pub jwks: Value,
}

impl Idp {
    pub fn new() -> Result<Self> {
        let pair = rcgen::KeyPair::generate()?;
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Ok(Idp {
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "demo",
                                  "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]}),
        })
    }

    fn token(&self, sub: &str) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("demo".into());
        Ok(jsonwebtoken::encode(
            &h,
            &json!({"iss": ISSUER, "sub": sub, "iat": now, "exp": now + 3600}),
            &self.key,
        )?)
    }
}

pub fn run(mesh: &mut Mesh, steps: &mut Steps, idp: &Idp) {
    steps.run(
        "canary: todoui 100/0 → 90/10 → 0/100 over DestinationRule subsets",
        || {
            let mut out = Vec::new();
            for (a, b) in [(100, 0), (90, 10), (0, 100)] {
                apply(mesh, &canary(a, b))?;
                let r = load(
                    mesh,
                    "user",
                    &["--url", UI, "--count", "1000", "--concurrency", "8"],
                )?;
                let s = split(&r);
                let v2 = *s.get("0.2").unwrap_or(&0) as f64 / 1000.0;
                let want = f64::from(b) / 100.0;
                if (v2 - want).abs() > 0.03 {
                    bail!("{a}/{b}: measured {s:?}");
                }
                out.push(format!("{a}/{b} → {s:?}"));
            }
            Ok(out.join("; "))
        },
    );

    steps.run(
        "header routing: x-user-group: beta → todoui 0.2, everyone else → 0.1",
        || {
            apply(mesh, BETA)?;
            let beta = split(&load(
                mesh,
                "user",
                &[
                    "--url",
                    UI,
                    "--count",
                    "50",
                    "--header",
                    "x-user-group: beta",
                ],
            )?);
            let rest = split(&load(mesh, "user", &["--url", UI, "--count", "50"])?);
            if beta.get("0.2") != Some(&50) || rest.get("0.1") != Some(&50) {
                bail!("beta {beta:?}, others {rest:?}");
            }
            Ok(format!("beta users {beta:?}; others {rest:?}"))
        },
    );

    steps.run("AuthorizationPolicy: only todoui's identity may call todobackend, GET only", || {
        apply(mesh, ONLY_UI_GETS)?;
        let url = format!("{BACKEND}/todos");
        let (get, _) = status(mesh, "todoui-0-1", &url, "GET", None)?;
        let (del, r) = status(mesh, "todoui-0-1", &url, "DELETE", None)?;
        let (other, _) = status(mesh, "user", &url, "GET", None)?;
        if (get.as_str(), del.as_str(), other.as_str()) != ("200", "403", "403") {
            bail!("todoui GET {get}, todoui DELETE {del}, user GET {other}");
        }
        let text = mesh.waypoint_metrics("todo")?;
        let denied = metric(&text, "lanyard_requests_denied_total", &[("policy", "todo/todobackend-readers")]);
        // The operator's question, answered from the same config: why was DELETE refused?
        let config = mesh.config_path();
        let (code, ex) = lanyardctl(&[
            "explain", "-o", "json", "-f", &config.to_string_lossy(), "--from", "todo/todoui-0-1",
            "--to", "todo/todobackend:8080", "--method", "DELETE",
        ])?;
        let step = &ex["steps"][0];
        if code != Some(1) || step["decidedBy"] != "todo/todobackend-readers" {
            bail!("lanyardctl explain disagrees (exit {code:?}): {ex}");
        }
        Ok(format!(
            "todoui GET → {get}; todoui DELETE → {del} ({}); user GET → {other}; {denied} denials by policy todo/todobackend-readers; `lanyardctl explain --method DELETE`: {} at {}",
            r["lastBody"].as_str().unwrap_or_default(),
            step["reason"].as_str().unwrap_or_default(),
            step["at"].as_str().unwrap_or_default(),
        ))
    });

    steps.run(
        "RequestAuthentication: POST needs a JWT from the local issuer",
        || {
            let jwks_uri = format!("http://{}:8080/jwks.json", mesh.pod("idp").ip);
            apply(mesh, &jwt_policies(&jwks_uri))?;
            let url = format!("{BACKEND}/todos");
            let token = idp.token("alice")?;
            let bearer = format!("authorization: Bearer {token}");
            let (valid, _) = status(mesh, "todoui-0-1", &url, "POST", Some(&bearer))?;
            let (missing, _) = status(mesh, "todoui-0-1", &url, "POST", None)?;
            // Same issuer claimed, signed by a key the issuer's JWKS does not hold.
            let forged = format!("authorization: Bearer {}", Idp::new()?.token("mallory")?);
            let (bad, r) = status(mesh, "todoui-0-1", &url, "POST", Some(&forged))?;
            if (valid.as_str(), missing.as_str(), bad.as_str()) != ("200", "403", "401") {
                bail!("valid {valid}, missing {missing}, invalid {bad}");
            }
            Ok(format!(
            "valid token → {valid}; no token → {missing}; token signed by another key → {bad} ({})",
            r["lastBody"].as_str().unwrap_or_default().chars().take(60).collect::<String>()
        ))
        },
    );

    steps.run(
        "fault injection: 1 s delay on every call, then 50% aborts with 503",
        || {
            let base = jwt_policies(&format!("http://{}:8080/jwks.json", mesh.pod("idp").ip));
            apply(
                mesh,
                &format!(
                    "{base}{}",
                    fault("delay: {fixedDelay: 1s, percentage: {value: 100}}")
                ),
            )?;
            let r = load(mesh, "todoui-0-1", &["--url", BACKEND, "--count", "3"])?;
            let min = r["minMs"].as_f64().context("minMs")?;
            if min < 990.0 {
                bail!("fastest delayed call took {min} ms");
            }
            apply(
                mesh,
                &format!(
                    "{base}{}",
                    fault("abort: {httpStatus: 503, percentage: {value: 50}}")
                ),
            )?;
            let r = load(
                mesh,
                "todoui-0-1",
                &["--url", BACKEND, "--count", "400", "--concurrency", "4"],
            )?;
            let aborted = r["statuses"]["503"].as_u64().unwrap_or(0) as f64 / 400.0;
            if !(0.42..=0.58).contains(&aborted) {
                bail!("aborted share {aborted}: {}", r["statuses"]);
            }
            Ok(format!(
                "delay: fastest call {min:.0} ms; abort: {:.1}% of 400 calls got 503",
                aborted * 100.0
            ))
        },
    );

    steps.run("a fault left on is visible: warning in the waypoint log and a gauge", || {
        let text = mesh.waypoint_metrics("todo")?;
        let gauge = metric(&text, "lanyard_fault_injection_routes", &[("virtual_service", "todobackend")]);
        let log = mesh.waypoint_log("todo");
        let warned = log.lines().filter(|l| l.contains("fault injection is active")).count();
        if gauge != 1.0 || warned == 0 {
            bail!("gauge {gauge}, {warned} warnings");
        }
        let config = mesh.config_path();
        let (code, found) = lanyardctl(&[
            "analyze", "-o", "json", "--failure-threshold", "warning", "-f", &config.to_string_lossy(),
        ])?;
        let fault = found
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["code"] == "LYD0002" && f["object"] == "todobackend");
        let Some(fault) = fault.filter(|_| code == Some(1)) else {
            bail!("lanyardctl analyze did not flag the fault (exit {code:?}): {found}");
        };
        Ok(format!(
            "lanyard_fault_injection_routes{{virtual_service=\"todobackend\"}} = {gauge}; {warned} warning(s) in the waypoint log; `lanyardctl analyze`: Warning [LYD0002] (VirtualService todo/todobackend {}) {}",
            fault["field"].as_str().unwrap_or_default(),
            fault["message"].as_str().unwrap_or_default()
        ))
    });
}
