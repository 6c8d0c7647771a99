//! `security.istio.io` objects as they arrive (v1 and v1beta1 are the same schema), and their
//! validation into internal form. Errors name the field the way `kubectl explain` would.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::authz::{
    Action, AuthorizationPolicy, Condition, ConditionKey, ConditionValue, Field, Operation, Rule,
    Scope, Source, TargetRef,
};
use super::matcher::{parse_ip_block, PathMatch, StringMatch};
use super::peer::{MtlsMode, PeerAuthentication};

/// A validation failure: the field path (under the object) and what is wrong.
pub type Invalid = (String, String);

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetRef>,
    pub target_refs: Option<Vec<PolicyTargetRef>>,
    pub action: Option<String>,
    pub provider: Option<Provider>,
    pub rules: Option<Vec<RuleWire>>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleWire {
    pub from: Option<Vec<FromWire>>,
    pub to: Option<Vec<ToWire>>,
    pub when: Option<Vec<ConditionWire>>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FromWire {
    pub source: Option<SourceWire>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ToWire {
    pub operation: Option<OperationWire>,
}

type Values = Option<Vec<String>>;

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceWire {
    pub principals: Values,
    pub not_principals: Values,
    pub request_principals: Values,
    pub not_request_principals: Values,
    pub namespaces: Values,
    pub not_namespaces: Values,
    pub service_accounts: Values,
    pub not_service_accounts: Values,
    pub ip_blocks: Values,
    pub not_ip_blocks: Values,
    pub remote_ip_blocks: Values,
    pub not_remote_ip_blocks: Values,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationWire {
    pub hosts: Values,
    pub not_hosts: Values,
    pub ports: Values,
    pub not_ports: Values,
    pub methods: Values,
    pub not_methods: Values,
    pub paths: Values,
    pub not_paths: Values,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionWire {
    pub key: String,
    pub values: Values,
    pub not_values: Values,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MtlsWire>,
    pub port_level_mtls: Option<BTreeMap<String, MtlsWire>>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MtlsWire {
    pub mode: Option<String>,
}

fn err<T>(field: impl Into<String>, msg: impl Into<String>) -> Result<T, Invalid> {
    Err((field.into(), msg.into()))
}

/// Converts each value of a field, rejecting empty strings as Istio does.
fn field<T>(
    path: &str,
    name: &str,
    values: &Values,
    not: &Values,
    conv: impl Fn(&str) -> Result<T, String>,
) -> Result<Field<T>, Invalid> {
    // Field paths are only spelled out when something is wrong: this runs for every field of
    // every policy on each update.
    let one = |list: &Values, negative: bool| -> Result<Vec<T>, Invalid> {
        let at = |i: usize| match negative {
            false => format!("{path}.{name}[{i}]"),
            true => format!("{path}.not{}{}[{i}]", name[..1].to_uppercase(), &name[1..]),
        };
        let mut out = Vec::with_capacity(list.as_ref().map_or(0, Vec::len));
        for (i, v) in list.iter().flatten().enumerate() {
            if v.is_empty() {
                return err(at(i), "empty value");
            }
            out.push(conv(v).map_err(|m| (at(i), m))?);
        }
        Ok(out)
    };
    Ok(Field {
        values: one(values, false)?,
        not_values: one(not, true)?,
    })
}

fn string_match(v: &str) -> Result<StringMatch, String> {
    StringMatch::parse(v)
        .ok_or_else(|| format!("{v:?}: a wildcard may only stand at the start or the end"))
}

fn ip_block(v: &str) -> Result<ipnet::IpNet, String> {
    parse_ip_block(v).ok_or_else(|| format!("{v:?} is not an IP address or CIDR block"))
}

fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .map_err(|_| format!("{v:?} is not a port number"))
}

fn service_account(v: &str) -> Result<(String, String), String> {
    match v.split_once('/') {
        Some((ns, sa))
            if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') && !v.contains('*') =>
        {
            Ok((ns.to_string(), sa.to_string()))
        }
        _ => Err(format!(
            "{v:?} is not of the form <namespace>/<serviceaccount>"
        )),
    }
}

fn source(path: &str, s: &SourceWire) -> Result<Source, Invalid> {
    let has = |v: &Values| v.as_ref().is_some_and(|v| !v.is_empty());
    if (has(&s.service_accounts) || has(&s.not_service_accounts))
        && (has(&s.principals)
            || has(&s.not_principals)
            || has(&s.namespaces)
            || has(&s.not_namespaces))
    {
        return err(
            format!("{path}.serviceAccounts"),
            "cannot be combined with principals or namespaces",
        );
    }
    let src = Source {
        principals: field(
            path,
            "principals",
            &s.principals,
            &s.not_principals,
            string_match,
        )?,
        namespaces: field(
            path,
            "namespaces",
            &s.namespaces,
            &s.not_namespaces,
            string_match,
        )?,
        service_accounts: field(
            path,
            "serviceAccounts",
            &s.service_accounts,
            &s.not_service_accounts,
            service_account,
        )?,
        ip_blocks: field(path, "ipBlocks", &s.ip_blocks, &s.not_ip_blocks, ip_block)?,
        request_principals: field(
            path,
            "requestPrincipals",
            &s.request_principals,
            &s.not_request_principals,
            string_match,
        )?,
        remote_ip_blocks: field(
            path,
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            ip_block,
        )?,
    };
    if src == Source::default() {
        return err(path, "must set at least one field");
    }
    Ok(src)
}

fn operation(path: &str, o: &OperationWire) -> Result<Operation, Invalid> {
    let path_match = |v: &str| PathMatch::parse(v);
    let op = Operation {
        ports: field(path, "ports", &o.ports, &o.not_ports, port)?,
        hosts: field(path, "hosts", &o.hosts, &o.not_hosts, string_match)?,
        methods: field(path, "methods", &o.methods, &o.not_methods, string_match)?,
        paths: field(path, "paths", &o.paths, &o.not_paths, path_match)?,
    };
    if op == Operation::default() {
        return err(path, "must set at least one field");
    }
    Ok(op)
}

fn condition_key(raw: &str) -> Option<ConditionKey> {
    let bracket = |prefix: &str| {
        raw.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(']'))
            .filter(|k| !k.is_empty())
    };
    Some(match raw {
        "source.ip" => ConditionKey::SourceIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "remote.ip" => ConditionKey::RemoteIp,
        "request.auth.principal" => ConditionKey::AuthPrincipal,
        "request.auth.audiences" => ConditionKey::AuthAudiences,
        "request.auth.presenter" => ConditionKey::AuthPresenter,
        "connection.sni" => ConditionKey::ConnectionSni,
        _ => {
            if let Some(h) = bracket("request.headers[") {
                ConditionKey::RequestHeader(h.to_ascii_lowercase())
            } else if let Some(c) = bracket("request.auth.claims[") {
                // Nested claims: request.auth.claims[a][b]
                ConditionKey::AuthClaim(c.split("][").map(str::to_string).collect())
            } else {
                return None;
            }
        }
    })
}

fn condition(path: &str, c: &ConditionWire) -> Result<Condition, Invalid> {
    let key = condition_key(&c.key)
        .ok_or_else(|| (format!("{path}.key"), format!("unknown key {:?}", c.key)))?;
    let values = c.values.clone().unwrap_or_default();
    let not_values = c.not_values.clone().unwrap_or_default();
    if values.is_empty() && not_values.is_empty() {
        return err(path, "must set values or notValues");
    }
    let parse_all = |name: &str, list: &[String]| -> Result<Vec<ConditionValue>, Invalid> {
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let f = || format!("{path}.{name}[{i}]");
            if v.is_empty() {
                return err(f(), "empty value");
            }
            let parsed = match key {
                ConditionKey::SourceIp | ConditionKey::DestinationIp | ConditionKey::RemoteIp => {
                    ip_block(v).map(ConditionValue::Ip)
                }
                ConditionKey::DestinationPort => port(v).map(ConditionValue::Port),
                _ => string_match(v).map(ConditionValue::Str),
            };
            out.push(parsed.map_err(|m| (f(), m))?);
        }
        Ok(out)
    };
    Ok(Condition {
        values: parse_all("values", &values)?,
        not_values: parse_all("notValues", &not_values)?,
        key,
    })
}

/// Where a policy applies: a selector, targetRefs (waypoints), or the whole namespace.
pub fn scope(
    selector: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetRef>,
    target_refs: &Option<Vec<PolicyTargetRef>>,
) -> Result<Scope, Invalid> {
    let mut refs: Vec<&PolicyTargetRef> = target_refs.iter().flatten().collect();
    refs.extend(target_ref.as_ref());
    Ok(match (selector, refs.is_empty()) {
        (Some(_), false) => return err("spec.selector", "cannot be combined with spec.targetRefs"),
        (Some(sel), true) => Scope::Selector(sel.match_labels.clone()),
        (None, true) => Scope::Namespace,
        (None, false) => Scope::TargetRefs(
            refs.iter()
                .map(|r| TargetRef {
                    group: r.group.clone(),
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                })
                .collect(),
        ),
    })
}

pub fn authorization_policy(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    spec: &AuthorizationPolicySpec,
) -> Result<AuthorizationPolicy, Invalid> {
    let scope = scope(&spec.selector, &spec.target_ref, &spec.target_refs)?;
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            return err(
                "spec.action",
                format!("{other:?} is not one of ALLOW, DENY, AUDIT, CUSTOM"),
            )
        }
    };
    match (action, &spec.provider) {
        (Action::Custom, None) => return err("spec.provider", "is required for action CUSTOM"),
        (a, Some(_)) if a != Action::Custom => {
            return err("spec.provider", "is only allowed with action CUSTOM")
        }
        _ => {}
    }
    let rules = match &spec.rules {
        None => None,
        Some(rules) => {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let rp = format!("spec.rules[{i}]");
                let mut rule = Rule::default();
                for (j, f) in r.from.iter().flatten().enumerate() {
                    let fp = format!("{rp}.from[{j}].source");
                    let s = f
                        .source
                        .as_ref()
                        .ok_or_else(|| (fp.clone(), "is required".to_string()))?;
                    rule.from.push(source(&fp, s)?);
                }
                for (j, t) in r.to.iter().flatten().enumerate() {
                    let tp = format!("{rp}.to[{j}].operation");
                    let o = t
                        .operation
                        .as_ref()
                        .ok_or_else(|| (tp.clone(), "is required".to_string()))?;
                    rule.to.push(operation(&tp, o)?);
                }
                for (j, c) in r.when.iter().flatten().enumerate() {
                    rule.when.push(condition(&format!("{rp}.when[{j}]"), c)?);
                }
                out.push(rule);
            }
            Some(out)
        }
    };
    Ok(AuthorizationPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        scope,
        action,
        rules,
        dry_run: annotations
            .get("istio.io/dry-run")
            .is_some_and(|v| v == "true"),
    })
}

fn mode(field: &str, m: &MtlsWire) -> Result<MtlsMode, Invalid> {
    Ok(match m.mode.as_deref().unwrap_or("UNSET") {
        "UNSET" => MtlsMode::Unset,
        "PERMISSIVE" => MtlsMode::Permissive,
        "STRICT" => MtlsMode::Strict,
        "DISABLE" => MtlsMode::Disable,
        other => {
            return err(
                format!("{field}.mode"),
                format!("{other:?} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
            )
        }
    })
}

pub fn peer_authentication(
    namespace: &str,
    name: &str,
    spec: &PeerAuthenticationSpec,
) -> Result<PeerAuthentication, Invalid> {
    let selector = spec.selector.as_ref().map(|s| s.match_labels.clone());
    let mut ports = BTreeMap::new();
    if let Some(levels) = &spec.port_level_mtls {
        if selector.is_none() {
            return err("spec.portLevelMtls", "requires spec.selector");
        }
        for (p, m) in levels {
            let f = format!("spec.portLevelMtls[{p}]");
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| (f.clone(), format!("{p:?} is not a port number")))?;
            ports.insert(port, mode(&f, m)?);
        }
    }
    Ok(PeerAuthentication {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector,
        mode: spec
            .mtls
            .as_ref()
            .map(|m| mode("spec.mtls", m))
            .transpose()?
            .unwrap_or(MtlsMode::Unset),
        ports,
    })
}
