//! RequestAuthentication at the waypoint: end-user JWTs from a local identity provider
//! (JWKS served over HTTP by a pod outside the mesh), required for POST by policy.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lanyard_e2e::{wait_for, Mesh, PodSpec, ServiceSpec};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.lanyard.test";
const URL: &str = "http://10.96.0.20:80/todos";

struct Issuer {
    key: EncodingKey,
    jwk: Value,
}

fn issuer(kid: &str) -> Issuer {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Issuer {
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
    }
}

fn token(i: &Issuer, kid: &str, iss: &str, group: &str, exp_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    let claims = json!({"iss": iss, "sub": "alice", "aud": "todo", "group": group,
                        "iat": now, "exp": now + exp_in});
    jsonwebtoken::encode(&h, &claims, &i.key).unwrap()
}

#[test]
fn jwt_required_for_post_valid_invalid_missing() {
    let idp = issuer("k1");
    let other = issuer("k1");
    let mut mesh = Mesh::builder("jwt")
        .nodes(2)
        .namespace("demo", true)
        .namespace("idp", false)
        .waypoint("demo")
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("backend", "demo").node(1))
        .pod(PodSpec::new("idp", "idp").node(1))
        .service(
            ServiceSpec::new("backend", "demo", Ipv4Addr::new(10, 96, 0, 20))
                .named_port("http", 80, 8080),
        )
        .start()
        .expect("mesh starts");
    mesh.serve_http("backend", 8080, &[]).unwrap();
    let jwks_file = mesh.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [idp.jwk]}).to_string()).unwrap();
    mesh.serve_http("idp", 8080, &["--jwks", jwks_file.to_str().unwrap()])
        .unwrap();
    let jwks_uri = format!("http://{}:8080/jwks.json", mesh.pod("idp").ip);
    mesh.extra_yaml = format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: todo-jwt, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: backend}}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [todo]
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: todo-writers, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: '', name: backend}}]
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [GET]}}}}]
  - from: [{{source: {{requestPrincipals: ['*']}}}}]
    to: [{{operation: {{methods: [POST]}}}}]
    when: [{{key: 'request.auth.claims[group]', values: [admins]}}]
"
    );
    mesh.write_config().unwrap();
    let call = |method: &str, token: Option<&str>| -> (String, Value) {
        let auth = token.map(|t| format!("authorization: Bearer {t}"));
        let mut args = vec!["--url", URL, "--method", method];
        if let Some(a) = &auth {
            args.extend(["--header", a.as_str()]);
        }
        let r = mesh.load("client", &args).unwrap();
        let status = r["statuses"]
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        (status, r)
    };
    wait_for(Duration::from_secs(5), "the policies to apply", || {
        (call("POST", None).0 == "403").then_some(())
    })
    .unwrap();
    assert_eq!(
        call("GET", None).0,
        "200",
        "no token: passes unauthenticated, GET is allowed"
    );

    let admin = token(&idp, "k1", ISSUER, "admins", 600);
    let (s, r) = call("POST", Some(&admin));
    assert_eq!(s, "200", "{r}");
    let seen: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen["headers"]["x-jwt-group"], "admins",
        "claim to header: {seen}"
    );
    assert!(
        seen["headers"].get("authorization").is_none(),
        "token not forwarded: {seen}"
    );

    assert_eq!(
        call("POST", Some(&token(&idp, "k1", ISSUER, "users", 600))).0,
        "403",
        "claim must match"
    );
    let (s, r) = call("POST", Some(&token(&other, "k1", ISSUER, "admins", 600)));
    assert_eq!(s, "401", "signed by another key: {r}");
    assert!(
        r["lastBody"]
            .as_str()
            .unwrap()
            .starts_with("Jwt verification fails"),
        "{r}"
    );
    assert_eq!(
        call("POST", Some(&token(&idp, "k1", ISSUER, "admins", -600))).0,
        "401",
        "expired"
    );
    assert_eq!(
        call(
            "GET",
            Some(&token(&idp, "k1", "https://evil.test", "admins", 600))
        )
        .0,
        "401",
        "unknown issuer"
    );
    assert_eq!(call("GET", Some("not-a-jwt")).0, "401", "garbage token");
}
