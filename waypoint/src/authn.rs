//! RequestAuthentication at the waypoint: find a JWT where the rules say, verify it against
//! its issuer's keys (JWKS fetched from `jwksUri`, cached and refreshed, or inline), and hand
//! the request principal (`iss/sub`) and claims to authorization.
//!
//! Istio's semantics: a request without a token passes unauthenticated (a policy can then
//! require `requestPrincipals`); a token that is present but invalid is refused with 401.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lanyard_core::policy::authn::{JwksSource, JwtRule, RequestAuthentication, TokenLocation};
use lanyard_core::state::Applicable;
use serde_json::Value;
use tracing::{debug, warn};

use crate::local::Local;

/// Keys are refetched this often (Istio's default refresh interval is 20 minutes) and, when a
/// token names an unknown key, at most this often sooner (the issuer may have rotated).
const REFRESH: Duration = Duration::from_secs(20 * 60);
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetching JWKS from {uri}: {reason}")]
    Fetch { uri: String, reason: String },
    #[error("JWKS from {uri} is not a key set: {reason}")]
    Parse { uri: String, reason: String },
}

/// A verified end user.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// `iss/sub`, as `requestPrincipals` match it.
    pub principal: String,
    pub claims: Value,
}

struct Cached {
    keys: Arc<JwkSet>,
    fetched: Instant,
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// JWKS by URI, shared by all requests.
pub struct Jwks {
    cache: Mutex<HashMap<String, Cached>>,
    client: HttpsClient,
}

impl Default for Jwks {
    fn default() -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map(|b| b.https_or_http().enable_http1().build())
            .unwrap_or_else(|e| {
                warn!("no system CA certificates ({e}); https jwksUri will fail");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder_with_provider(lanyard_core::tls::provider())
                            .with_safe_default_protocol_versions()
                            .expect("TLS 1.3 is supported")
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .build()
            });
        Jwks {
            cache: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }
}

impl Jwks {
    async fn keys(
        &self,
        source: &JwksSource,
        timeout: Duration,
        refetch: bool,
    ) -> Result<Arc<JwkSet>, Error> {
        let uri = match source {
            JwksSource::Inline(json) => {
                return serde_json::from_str(json)
                    .map(Arc::new)
                    .map_err(|e| Error::Parse {
                        uri: "inline jwks".into(),
                        reason: e.to_string(),
                    })
            }
            JwksSource::Uri(u) => u,
        };
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(uri) {
                let age = c.fetched.elapsed();
                if age < REFRESH && !(refetch && age > UNKNOWN_KEY_REFETCH) {
                    return Ok(c.keys.clone());
                }
            }
        }
        let fetched = self.fetch(uri, timeout).await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(keys) => {
                let keys = Arc::new(keys);
                cache.insert(
                    uri.clone(),
                    Cached {
                        keys: keys.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(keys)
            }
            // A failed refresh keeps the keys we had: an issuer outage must not lock users out.
            Err(e) => match cache.get(uri) {
                Some(c) => {
                    warn!(
                        "{e}; keeping the keys fetched {:?} ago",
                        c.fetched.elapsed()
                    );
                    Ok(c.keys.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self, uri: &str, timeout: Duration) -> Result<JwkSet, Error> {
        let fail = |reason: String| Error::Fetch {
            uri: uri.to_string(),
            reason,
        };
        let req = Request::get(uri)
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| fail(format!("timed out after {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = tokio::time::timeout(
            timeout,
            http_body_util::Limited::new(resp.into_body(), 1 << 20).collect(),
        )
        .await
        .map_err(|_| fail("timed out reading the body".into()))?
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| Error::Parse {
            uri: uri.to_string(),
            reason: e.to_string(),
        })
    }
}

fn find_token<B>(req: &Request<B>, loc: &TokenLocation) -> Option<String> {
    match loc {
        TokenLocation::Header(name, prefix) => {
            let v = req.headers().get(name.as_str())?.to_str().ok()?;
            let t = if prefix.is_empty() {
                v
            } else {
                v.strip_prefix(prefix.as_str())?
            };
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        }
        TokenLocation::Param(p) => req.uri().query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == p && !v.is_empty()).then(|| v.to_string())
        }),
        TokenLocation::Cookie(c) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == c).then(|| v.to_string())
            }),
    }
}

/// The issuer a token claims, read before verification only to pick the rule.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

async fn verify(jwks: &Jwks, rule: &JwtRule, token: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT: {e}"))?;
    if !ALLOWED.contains(&header.alg) {
        return Err(format!("algorithm {:?} is not accepted", header.alg));
    }
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&rule.issuer]);
    if rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rule.audiences);
    }
    validation.required_spec_claims.clear();
    validation.leeway = 60;
    for refetch in [false, true] {
        let keys = jwks
            .keys(&rule.jwks, rule.fetch_timeout, refetch)
            .await
            .map_err(|e| e.to_string())?;
        let candidates: Vec<_> = match &header.kid {
            Some(kid) => keys.find(kid).into_iter().collect(),
            None => keys.keys.iter().collect(),
        };
        if candidates.is_empty() {
            continue;
        }
        let mut last = String::from("no key verifies the signature");
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Value>(token, &key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        return Err(last);
    }
    Err(format!(
        "no key {:?} in the issuer's key set",
        header.kid.unwrap_or_default()
    ))
}

/// Authenticates the request under `policies`; strips the token unless a rule forwards it,
/// and writes claims to headers as the rule asks.
pub async fn authenticate<B>(
    jwks: &Jwks,
    policies: Applicable<'_, RequestAuthentication>,
    req: &mut Request<B>,
) -> Result<Option<Authenticated>, Local> {
    let rules: Vec<&JwtRule> = policies.iter().flat_map(|p| &p.rules).collect();
    let mut found = Vec::new();
    for rule in &rules {
        for loc in &rule.locations {
            if let Some(t) = find_token(req, loc) {
                found.push((*rule, loc.clone(), t));
            }
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let mut failure = String::from("Jwt issuer is not configured");
    for (rule, loc, token) in &found {
        if unverified_issuer(token).as_deref() != Some(rule.issuer.as_str()) {
            continue;
        }
        match verify(jwks, rule, token).await {
            Ok(claims) => {
                let sub = claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let principal = format!("{}/{sub}", rule.issuer);
                for (header, claim) in &rule.claim_to_headers {
                    let v = match claims.get(claim) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => continue,
                        Some(other) => other.to_string(),
                    };
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(header.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        req.headers_mut().insert(name, value);
                    }
                }
                if let Some(h) = &rule.payload_to_header {
                    let payload =
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()),
                        HeaderValue::from_str(&payload),
                    ) {
                        req.headers_mut().insert(name, value);
                    }
                }
                if !rule.forward_original_token {
                    if let TokenLocation::Header(name, _) = loc {
                        req.headers_mut().remove(name.as_str());
                    }
                }
                return Ok(Some(Authenticated { principal, claims }));
            }
            Err(e) => {
                debug!(issuer = %rule.issuer, "JWT refused: {e}");
                failure = format!("Jwt verification fails: {e}");
            }
        }
    }
    Err(Local::new(StatusCode::UNAUTHORIZED, "-", failure))
}
