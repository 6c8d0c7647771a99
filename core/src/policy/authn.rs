//! RequestAuthentication: which JWTs a workload accepts, from where in the request, and what
//! is passed on. Validation of tokens themselves happens at the waypoint.

use serde::Deserialize;

use super::authz::Scope;
use super::wire::{Invalid, PolicyTargetRef, WorkloadSelector};

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetRef>,
    pub target_refs: Option<Vec<PolicyTargetRef>>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleWire>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRuleWire {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeaderWire>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderWire>,
    #[serde(default)]
    pub forward_original_token: bool,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JwtHeaderWire {
    pub name: String,
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderWire {
    pub header: String,
    pub claim: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    Uri(String),
    Inline(String),
}

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    /// Header (lower case) and the prefix before the token (e.g. `Bearer `).
    Header(String, String),
    Param(String),
    Cookie(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub locations: Vec<TokenLocation>,
    pub claim_to_headers: Vec<(String, String)>,
    pub payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub fetch_timeout: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuthentication {
    pub namespace: String,
    pub name: String,
    pub scope: Scope,
    pub rules: Vec<JwtRule>,
}

pub fn request_authentication(
    namespace: &str,
    name: &str,
    spec: &RequestAuthenticationSpec,
) -> Result<RequestAuthentication, Invalid> {
    let err = |f: String, m: &str| Err((f, m.to_string()));
    let scope = super::wire::scope(&spec.selector, &spec.target_ref, &spec.target_refs)?;
    let mut rules = Vec::new();
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        let f = |field: &str| format!("spec.jwtRules[{i}].{field}");
        if r.issuer.is_empty() {
            return err(f("issuer"), "is required");
        }
        let jwks = match (&r.jwks_uri, &r.jwks) {
            (Some(_), Some(_)) => return err(f("jwks"), "cannot be combined with jwksUri"),
            (Some(u), None) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return err(f("jwksUri"), "must be an http:// or https:// URL");
                }
                JwksSource::Uri(u.clone())
            }
            (None, Some(j)) => {
                if serde_json::from_str::<serde_json::Value>(j)
                    .ok()
                    .and_then(|v| v.get("keys").cloned())
                    .is_none_or(|k| !k.is_array())
                {
                    return err(
                        f("jwks"),
                        "is not a JSON Web Key Set (an object with \"keys\")",
                    );
                }
                JwksSource::Inline(j.clone())
            }
            // Istio would discover it from the issuer (OpenID discovery); we need it given.
            (None, None) => return err(f("jwksUri"), "jwksUri or jwks is required"),
        };
        let mut locations: Vec<TokenLocation> = r
            .from_headers
            .iter()
            .map(|h| {
                TokenLocation::Header(
                    h.name.to_ascii_lowercase(),
                    h.prefix.clone().unwrap_or_default(),
                )
            })
            .collect();
        locations.extend(r.from_params.iter().cloned().map(TokenLocation::Param));
        locations.extend(r.from_cookies.iter().cloned().map(TokenLocation::Cookie));
        if locations.is_empty() {
            // Istio's default: the Authorization bearer header, or the access_token parameter.
            locations = vec![
                TokenLocation::Header("authorization".into(), "Bearer ".into()),
                TokenLocation::Param("access_token".into()),
            ];
        }
        let fetch_timeout = match &r.timeout {
            None => std::time::Duration::from_secs(5),
            Some(t) => crate::traffic::parse_duration(t)
                .ok_or_else(|| (f("timeout"), format!("{t:?} is not a duration")))?,
        };
        rules.push(JwtRule {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks,
            locations,
            claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                .collect(),
            payload_to_header: r.output_payload_to_header.clone(),
            forward_original_token: r.forward_original_token,
            fetch_timeout,
        });
    }
    Ok(RequestAuthentication {
        namespace: namespace.to_string(),
        name: name.to_string(),
        scope,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(spec: serde_json::Value) -> Result<RequestAuthentication, Invalid> {
        let spec: RequestAuthenticationSpec = serde_json::from_value(spec).expect("wire form");
        request_authentication("demo", "jwt", &spec)
    }

    #[test]
    fn defaults_follow_istio() {
        let r = parse(json!({"targetRefs": [{"kind": "Service", "group": "", "name": "backend"}],
                             "jwtRules": [{"issuer": "https://idp", "jwksUri": "https://idp/keys"}]}))
        .unwrap();
        let rule = &r.rules[0];
        assert_eq!(
            rule.locations,
            vec![
                TokenLocation::Header("authorization".into(), "Bearer ".into()),
                TokenLocation::Param("access_token".into())
            ],
            "Authorization: Bearer, then ?access_token="
        );
        assert!(!rule.forward_original_token);
        assert_eq!(rule.fetch_timeout, std::time::Duration::from_secs(5));
        assert!(matches!(r.scope, Scope::TargetRefs(_)));
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let cases = [
            (
                json!({"jwtRules": [{"jwksUri": "https://idp/keys"}]}),
                "spec.jwtRules[0].issuer",
            ),
            (
                json!({"jwtRules": [{"issuer": "i"}]}),
                "spec.jwtRules[0].jwksUri",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "ftp://x"}]}),
                "spec.jwtRules[0].jwksUri",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwks": "{}"}]}),
                "spec.jwtRules[0].jwks",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwks": "{\"keys\": []}", "timeout": "soon"}]}),
                "spec.jwtRules[0].timeout",
            ),
            (
                json!({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Service", "name": "x"}]}),
                "spec.selector",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(parse(spec.clone()).unwrap_err().0, field, "{spec}");
        }
    }
}
