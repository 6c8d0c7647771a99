//! AuthorizationPolicy in internal form, and its evaluation with Istio's semantics.
//!
//! A rule matches when at least one `from` and at least one `to` match (an absent list
//! matches anything) and every `when` matches. Inside a source or operation every set field
//! must match (ANDed) and a field matches when any of its values does (ORed); `notX` excludes.
//! `rules` unset matches nothing; `rules: [{}]` matches everything.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::matcher::{PathMatch, StringMatch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// No selector: every workload of the namespace (of the mesh, in the root namespace).
    Namespace,
    Selector(BTreeMap<String, String>),
    /// Applies at waypoints only.
    TargetRefs(Vec<TargetRef>),
}

/// A field with positive and negative values: matches when (no values or one matches) and
/// no negative value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<T> {
    pub values: Vec<T>,
    pub not_values: Vec<T>,
}

// Not derived: an empty field needs no `T: Default`.
impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// `attr` is the request's value, absent when the request has none (e.g. no principal
    /// on plaintext): a positive field then fails, a negative one cannot exclude.
    fn check<A: ?Sized>(&self, attr: Option<&A>, m: impl Fn(&T, &A) -> bool) -> bool {
        let positive =
            self.values.is_empty() || attr.is_some_and(|a| self.values.iter().any(|v| m(v, a)));
        let negative = attr.is_some_and(|a| self.not_values.iter().any(|v| m(v, a)));
        positive && !negative
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Source {
    pub principals: Field<StringMatch>,
    pub namespaces: Field<StringMatch>,
    /// `namespace/serviceaccount` of the peer identity.
    pub service_accounts: Field<(String, String)>,
    pub ip_blocks: Field<IpNet>,
    // L7 (waypoint) fields.
    pub request_principals: Field<StringMatch>,
    pub remote_ip_blocks: Field<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Operation {
    pub ports: Field<u16>,
    // L7 (waypoint) fields.
    pub hosts: Field<StringMatch>,
    pub methods: Field<StringMatch>,
    pub paths: Field<PathMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    // L7
    RemoteIp,
    RequestHeader(String),
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaim(Vec<String>),
    ConnectionSni,
}

/// A `when` value, parsed once (at validation) for its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionValue {
    Ip(IpNet),
    Port(u16),
    Str(StringMatch),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Vec<ConditionValue>,
    pub not_values: Vec<ConditionValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
    /// Kept in place (so rule indexes stay as written) but never matches: an ALLOW rule that
    /// needs HTTP attributes, at a node agent.
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    pub scope: Scope,
    pub action: Action,
    /// `None`: `rules` unset, matches nothing.
    pub rules: Option<Vec<Rule>>,
    pub dry_run: bool,
}

/// The policy and rule that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub namespace: String,
    pub name: String,
    pub rule: usize,
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} rule {}", self.namespace, self.name, self.rule)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies, and no DENY matched.
    NoAllowPolicies,
    AllowedBy(PolicyRule),
    DeniedBy(PolicyRule),
    /// ALLOW policies apply (listed as `ns/name`) and none matched.
    NoAllowMatched(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// Dry-run policies that would have changed the outcome: (policy rule, would allow).
    pub dry_run: Vec<(PolicyRule, bool)>,
    /// AUDIT policies whose rules matched.
    pub audited: Vec<PolicyRule>,
}

impl Decision {
    /// `ns/name` of the deciding policy, for metrics and logs: when no ALLOW rule matched,
    /// the ALLOW policies that applied; "" when no policy applied.
    pub fn policy(&self) -> String {
        match &self.reason {
            Reason::AllowedBy(p) | Reason::DeniedBy(p) => format!("{}/{}", p.namespace, p.name),
            Reason::NoAllowMatched(ps) => ps.join(","),
            Reason::NoAllowPolicies => String::new(),
        }
    }
}

impl Reason {
    /// A short, fixed label for metrics (the Display form is for logs).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::NoAllowPolicies => "no_allow_policies",
            Reason::AllowedBy(_) => "allowed",
            Reason::DeniedBy(_) => "deny_matched",
            Reason::NoAllowMatched(_) => "no_allow_matched",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoAllowPolicies => write!(f, "allowed: no ALLOW policy applies"),
            Reason::AllowedBy(p) => write!(f, "allowed by {p}"),
            Reason::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
            Reason::NoAllowMatched(ps) => write!(
                f,
                "denied: no rule of ALLOW policies {} matched",
                ps.join(", ")
            ),
        }
    }
}

/// HTTP attributes, present at a waypoint.
#[derive(Clone, Debug, Default)]
pub struct HttpAttrs<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Headers<'a>,
    /// `iss/sub` of a validated JWT.
    pub request_principal: Option<&'a str>,
    pub claims: Option<&'a serde_json::Value>,
    pub remote_ip: Option<IpAddr>,
}

/// A request's headers, read only when a `request.headers[…]` condition asks: most policies
/// never look, and a waypoint should not copy every header of every request for them.
#[derive(Clone, Copy, Debug)]
pub enum Headers<'a> {
    Map(&'a http::HeaderMap),
    /// Lower-case name, value (the CLI's `explain`, tests).
    Pairs(&'a [(&'a str, &'a str)]),
}

impl Default for Headers<'_> {
    fn default() -> Self {
        Headers::Pairs(&[])
    }
}

impl<'a> Headers<'a> {
    /// The first value of a header, by lower-case name; a value that is not visible ASCII
    /// reads as absent (no string condition could match it).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        match *self {
            Headers::Map(m) => m.get(name)?.to_str().ok(),
            Headers::Pairs(p) => p.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
        }
    }
}

/// What a decision looks at.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The peer's principal without `spiffe://` (`td/ns/x/sa/y`); None on plaintext.
    pub principal: Option<&'a str>,
    pub source_namespace: Option<&'a str>,
    pub source_service_account: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub http: Option<HttpAttrs<'a>>,
}

// === impl Rule ===

impl Source {
    pub fn has_l7(&self) -> bool {
        !self.request_principals.is_empty() || !self.remote_ip_blocks.is_empty()
    }

    fn without_l7(&self) -> Self {
        Source {
            request_principals: Field::default(),
            remote_ip_blocks: Field::default(),
            ..self.clone()
        }
    }

    fn matches(&self, r: &Request<'_>) -> bool {
        let http = r.http.as_ref();
        self.principals.check(r.principal, |m, a| m.matches(a))
            && self
                .namespaces
                .check(r.source_namespace, |m, a| m.matches(a))
            && self.service_accounts.check(
                r.source_namespace.zip(r.source_service_account).as_ref(),
                |(ns, sa), (a_ns, a_sa)| ns == a_ns && sa == a_sa,
            )
            && self
                .ip_blocks
                .check(Some(&r.source_ip), |n, a| n.contains(a))
            && self
                .request_principals
                .check(http.and_then(|h| h.request_principal), |m, a| m.matches(a))
            && self.remote_ip_blocks.check(
                http.and_then(|h| h.remote_ip)
                    .or(Some(r.source_ip))
                    .as_ref(),
                |n, a| n.contains(a),
            )
    }
}

impl Operation {
    pub fn has_l7(&self) -> bool {
        !self.hosts.is_empty() || !self.methods.is_empty() || !self.paths.is_empty()
    }

    fn without_l7(&self) -> Self {
        Operation {
            ports: self.ports.clone(),
            ..Default::default()
        }
    }

    fn matches(&self, r: &Request<'_>) -> bool {
        let http = r.http.as_ref();
        self.ports.check(Some(&r.destination_port), |p, a| p == a)
            && self
                .hosts
                .check(http.map(|h| h.host), |m, a| m.matches_ignore_case(a))
            && self
                .methods
                .check(http.map(|h| h.method), |m, a| m.matches(a))
            && self.paths.check(http.map(|h| h.path), |m, a| m.matches(a))
    }
}

impl ConditionKey {
    pub fn is_l7(&self) -> bool {
        !matches!(
            self,
            ConditionKey::SourceIp
                | ConditionKey::SourceNamespace
                | ConditionKey::SourcePrincipal
                | ConditionKey::DestinationIp
                | ConditionKey::DestinationPort
        )
    }
}

impl Condition {
    fn matches(&self, r: &Request<'_>) -> bool {
        let http = r.http.as_ref();
        let ip_in =
            |ip: IpAddr, v: &ConditionValue| matches!(v, ConditionValue::Ip(n) if n.contains(&ip));
        let string_in = |attr: Option<&str>, v: &ConditionValue| matches!((attr, v), (Some(a), ConditionValue::Str(m)) if m.matches(a));
        let one = |v: &ConditionValue| -> bool {
            match &self.key {
                ConditionKey::SourceIp => ip_in(r.source_ip, v),
                ConditionKey::DestinationIp => ip_in(r.destination_ip, v),
                ConditionKey::RemoteIp => {
                    ip_in(http.and_then(|h| h.remote_ip).unwrap_or(r.source_ip), v)
                }
                ConditionKey::SourceNamespace => string_in(r.source_namespace, v),
                ConditionKey::SourcePrincipal => string_in(r.principal, v),
                ConditionKey::DestinationPort => {
                    matches!(v, ConditionValue::Port(p) if *p == r.destination_port)
                }
                ConditionKey::RequestHeader(name) => {
                    let value = http.and_then(|h| h.headers.get(name));
                    string_in(value, v)
                }
                ConditionKey::AuthPrincipal => string_in(http.and_then(|h| h.request_principal), v),
                ConditionKey::AuthAudiences => claim_values(http, &["aud".into()])
                    .iter()
                    .any(|a| string_in(Some(a), v)),
                ConditionKey::AuthPresenter => claim_values(http, &["azp".into()])
                    .iter()
                    .any(|a| string_in(Some(a), v)),
                ConditionKey::AuthClaim(path) => claim_values(http, path)
                    .iter()
                    .any(|a| string_in(Some(a), v)),
                ConditionKey::ConnectionSni => false,
            }
        };
        let positive = self.values.is_empty() || self.values.iter().any(&one);
        let negative = self.not_values.iter().any(one);
        positive && !negative
    }
}

/// String values of a (nested) claim: a string, or each string of a list.
fn claim_values(http: Option<&HttpAttrs<'_>>, path: &[String]) -> Vec<String> {
    let Some(mut v) = http.and_then(|h| h.claims) else {
        return vec![];
    };
    for p in path {
        match v.get(p) {
            Some(next) => v = next,
            None => return vec![],
        }
    }
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::Bool(b) => vec![b.to_string()],
        serde_json::Value::Number(n) => vec![n.to_string()],
        _ => vec![],
    }
}

impl Rule {
    pub fn has_l7(&self) -> bool {
        self.from.iter().any(Source::has_l7)
            || self.to.iter().any(Operation::has_l7)
            || self.when.iter().any(|c| c.key.is_l7())
    }

    pub fn matches(&self, r: &Request<'_>) -> bool {
        !self.disabled
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(r)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(r)))
            && self.when.iter().all(|c| c.matches(r))
    }
}

// === impl AuthorizationPolicy ===

impl AuthorizationPolicy {
    /// The form a node agent enforces: without HTTP, an ALLOW rule that needs L7 attributes
    /// can never be satisfied and is disabled; a DENY (or AUDIT) rule is kept without its L7
    /// parts, so that it denies more rather than less. Returns the projection and a warning,
    /// or `None` when the policy needs no change (the common case: share it as it is).
    pub fn for_l4(&self) -> Option<(Self, String)> {
        let rules = self.rules.as_ref()?;
        if !rules.iter().any(Rule::has_l7) {
            return None;
        }
        let (rules, warning) = match self.action {
            Action::Allow => (
                rules.iter().map(|r| Rule { disabled: r.has_l7(), ..r.clone() }).collect::<Vec<_>>(),
                "ALLOW rules with HTTP attributes are ignored at the node agent (they never match without a waypoint)",
            ),
            _ => (
                rules
                    .iter()
                    .map(|r| Rule {
                        from: r.from.iter().map(Source::without_l7).collect(),
                        to: r.to.iter().map(Operation::without_l7).collect(),
                        when: r.when.iter().filter(|c| !c.key.is_l7()).cloned().collect(),
                        disabled: r.disabled,
                    })
                    .collect(),
                "DENY rules are enforced at the node agent without their HTTP attributes (they deny more)",
            ),
        };
        let mut p = self.clone();
        p.rules = Some(rules);
        Some((
            p,
            format!(
                "AuthorizationPolicy {}/{}: {warning}",
                self.namespace, self.name
            ),
        ))
    }

    /// Index of the first matching rule.
    fn first_match(&self, r: &Request<'_>) -> Option<usize> {
        self.rules.as_ref()?.iter().position(|rule| rule.matches(r))
    }

    fn rule_ref(&self, rule: usize) -> PolicyRule {
        PolicyRule {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            rule,
        }
    }
}

/// Evaluates the policies that apply to one destination, in Istio's order: CUSTOM (not here),
/// then any matching DENY denies, then no ALLOW policy allows, then any matching ALLOW allows,
/// else deny. AUDIT never changes the outcome; dry-run policies are reported, not enforced.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p AuthorizationPolicy> + Clone,
    r: &Request<'_>,
) -> Decision {
    decide(policies.clone(), r).into_decision(policies)
}

/// What decided, by reference: the waypoint asks this per request and writes a [`Decision`]
/// out (names copied) only when it denies.
pub struct Verdict<'p> {
    decided: Decided<'p>,
    dry_run: Vec<(&'p AuthorizationPolicy, usize, bool)>,
    audited: Vec<(&'p AuthorizationPolicy, usize)>,
}

enum Decided<'p> {
    NoAllowPolicies,
    AllowedBy(&'p AuthorizationPolicy, usize),
    DeniedBy(&'p AuthorizationPolicy, usize),
    NoAllowMatched,
}

/// [`evaluate`] without writing the outcome out.
pub fn decide<'p>(
    policies: impl IntoIterator<Item = &'p AuthorizationPolicy>,
    r: &Request<'_>,
) -> Verdict<'p> {
    // One pass: the first enforced DENY match decides at once; otherwise the first ALLOW
    // match is kept while the remaining policies are still checked for a DENY.
    let mut dry_run = Vec::new();
    let mut audited = Vec::new();
    let mut any_allow = false;
    let mut allowed = None;
    for p in policies {
        match (p.action, p.dry_run) {
            (Action::Deny, false) => {
                if let Some(i) = p.first_match(r) {
                    return Verdict {
                        decided: Decided::DeniedBy(p, i),
                        dry_run,
                        audited,
                    };
                }
            }
            (Action::Allow, false) => {
                any_allow = true;
                if allowed.is_none() {
                    allowed = p.first_match(r).map(|i| (p, i));
                }
            }
            (Action::Deny | Action::Allow, true) => {
                let hit = p.first_match(r);
                let would_allow = (p.action == Action::Allow) == hit.is_some();
                dry_run.push((p, hit.unwrap_or(0), would_allow));
            }
            (Action::Audit, _) => {
                if let Some(i) = p.first_match(r) {
                    audited.push((p, i));
                }
            }
            (Action::Custom, _) => {}
        }
    }
    let decided = match (allowed, any_allow) {
        (Some((p, i)), _) => Decided::AllowedBy(p, i),
        (None, false) => Decided::NoAllowPolicies,
        (None, true) => Decided::NoAllowMatched,
    };
    Verdict {
        decided,
        dry_run,
        audited,
    }
}

// === impl Verdict ===

impl<'p> Verdict<'p> {
    pub fn allowed(&self) -> bool {
        matches!(
            self.decided,
            Decided::AllowedBy(..) | Decided::NoAllowPolicies
        )
    }

    /// Writes the outcome out; `policies` are those [`decide`] was given.
    pub fn into_decision(
        self,
        policies: impl IntoIterator<Item = &'p AuthorizationPolicy>,
    ) -> Decision {
        let reason = match self.decided {
            Decided::AllowedBy(p, i) => Reason::AllowedBy(p.rule_ref(i)),
            Decided::DeniedBy(p, i) => Reason::DeniedBy(p.rule_ref(i)),
            Decided::NoAllowPolicies => Reason::NoAllowPolicies,
            // Names are only spelled out on the (rarer) denial path.
            Decided::NoAllowMatched => Reason::NoAllowMatched(
                policies
                    .into_iter()
                    .filter(|p| p.action == Action::Allow && !p.dry_run)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect(),
            ),
        };
        Decision {
            allowed: matches!(reason, Reason::AllowedBy(_) | Reason::NoAllowPolicies),
            reason,
            dry_run: self
                .dry_run
                .into_iter()
                .map(|(p, i, would_allow)| (p.rule_ref(i), would_allow))
                .collect(),
            audited: self
                .audited
                .into_iter()
                .map(|(p, i)| p.rule_ref(i))
                .collect(),
        }
    }
}

/// Whether a policy's scope covers a workload with `labels` in `namespace`, at a node agent.
pub fn applies_to(
    p: &AuthorizationPolicy,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if p.namespace != root_namespace && p.namespace != namespace {
        return false;
    }
    match &p.scope {
        Scope::Namespace => true,
        Scope::Selector(sel) => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        Scope::TargetRefs(_) => false,
    }
}
