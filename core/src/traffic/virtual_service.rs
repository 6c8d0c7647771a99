//! A VirtualService in the form a waypoint routes with: hosts resolved, matchers compiled
//! (regexes are RE2-style full matches), defaults filled in as Istio fills them.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;

/// A compiled regex, compared by its source so that config objects can be compared.
#[derive(Clone, Debug)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl std::ops::Deref for Pattern {
    type Target = Regex;
    fn deref(&self) -> &Regex {
        &self.0
    }
}

use super::host::Host;
use super::wire::{
    DestinationWire, HeaderOpsWire, HeadersWire, HttpMatchWire, HttpRouteWire, PercentWire,
    RouteDestinationWire, StringMatchWire, TcpRouteWire, VirtualServiceSpec,
};
use super::{duration_field, Invalid};

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<Host>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    /// Accepted fields this data plane does not act on, for operators to see.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
    /// `{}`: the header or parameter is present, whatever its value.
    Present,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StrMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub headers: Vec<(HeaderName, StrMatch)>,
    pub without_headers: Vec<(HeaderName, StrMatch)>,
    pub query_params: Vec<(String, StrMatch)>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

/// Where a route sends traffic: a host (resolved), optionally a subset and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WeightedDestination {
    pub destination: Destination,
    pub weight: u32,
    pub headers: HeaderRules,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub code: StatusCode,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    Forward(Vec<WeightedDestination>),
    Redirect(Redirect),
    Direct { status: StatusCode, body: String },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub regex: Option<(Pattern, String)>,
}

/// When a failed attempt is retried: Envoy's `retry_on` conditions as Istio passes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub any_5xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub status_codes: Vec<u16>,
    /// gRPC statuses (by code) that are retried.
    pub grpc: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Istio's `attempts`).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

impl Default for RetryPolicy {
    /// Istio's default when `retries` is omitted: 2 retries on connection failures, refused
    /// streams, gRPC unavailable/cancelled, and 503.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: parse_retry_on(DEFAULT_RETRY_ON).expect("default retryOn is valid"),
        }
    }
}

impl RetryPolicy {
    /// The default, shared: a request without a route of its own borrows it.
    pub fn istio_default() -> &'static RetryPolicy {
        static DEFAULT: std::sync::LazyLock<RetryPolicy> =
            std::sync::LazyLock::new(RetryPolicy::default);
        &DEFAULT
    }
}

pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

#[derive(Clone, Debug, PartialEq)]
pub enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// Delay and the fraction (0..=1) of requests it applies to.
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub destination: Destination,
    /// Where the destination is written (`spec.http[0].mirror` or
    /// `spec.http[0].mirrors[1].destination`), for findings about it.
    pub field: String,
    /// Fraction (0..=1) of requests copied.
    pub fraction: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cors {
    pub allow_origins: Vec<StrMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    pub name: Option<String>,
    pub matches: Vec<HttpMatch>,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    pub headers: HeaderRules,
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TcpRoute {
    pub ports: Vec<u16>,
    pub source_labels: Vec<BTreeMap<String, String>>,
    pub route: Vec<WeightedDestination>,
}

/// What a route matches on, taken from one request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Path with its query string.
    pub path_and_query: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    pub port: u16,
    pub source_labels: Option<&'a BTreeMap<String, String>>,
    pub source_namespace: Option<&'a str>,
}

// === impl StrMatch ===

impl StrMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v == e,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(v),
            StrMatch::Present => true,
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => v
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            // Compiled case-insensitive when `ignoreUriCase` is set.
            StrMatch::Regex(r) => r.is_match(v),
            StrMatch::Present => true,
        }
    }
}

// === impl HttpMatch ===

impl HttpMatch {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        let (path, query) = match r.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (r.path_and_query, None),
        };
        if let Some(m) = &self.uri {
            let ok = if self.ignore_uri_case {
                m.matches_ignore_case(path)
            } else {
                m.matches(path)
            };
            if !ok {
                return false;
            }
        }
        let simple = [
            (&self.method, r.method),
            (&self.scheme, r.scheme),
            (&self.authority, r.authority),
        ];
        if simple
            .iter()
            .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(v)))
        {
            return false;
        }
        if self.port.is_some_and(|p| p != r.port) {
            return false;
        }
        let header_ok = |name: &HeaderName, m: &StrMatch| {
            r.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        };
        if !self.headers.iter().all(|(n, m)| header_ok(n, m)) {
            return false;
        }
        if self.without_headers.iter().any(|(n, m)| header_ok(n, m)) {
            return false;
        }
        if !self.query_params.is_empty() {
            let params: Vec<(&str, &str)> = query
                .unwrap_or_default()
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                .collect();
            let ok = self
                .query_params
                .iter()
                .all(|(k, m)| params.iter().any(|(pk, pv)| pk == k && m.matches(pv)));
            if !ok {
                return false;
            }
        }
        if !self.source_labels.is_empty() {
            let Some(labels) = r.source_labels else {
                return false;
            };
            if !self
                .source_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                return false;
            }
        }
        if let Some(ns) = &self.source_namespace {
            if r.source_namespace != Some(ns.as_str()) {
                return false;
            }
        }
        true
    }
}

// === impl VirtualService ===

impl VirtualService {
    /// The first HTTP route whose matches accept the request (a route without matches
    /// accepts everything), with its index.
    pub fn route(&self, r: &RequestView<'_>) -> Option<(usize, &HttpRoute)> {
        self.http.iter().enumerate().find(|(_, route)| {
            route.matches.is_empty() || route.matches.iter().any(|m| m.matches(r))
        })
    }

    /// The first TCP route for a connection to `port` from a source with `labels`.
    pub fn tcp_route(
        &self,
        port: u16,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Option<&TcpRoute> {
        self.tcp.iter().find(|t| {
            (t.ports.is_empty() || t.ports.contains(&port))
                && (t.source_labels.is_empty()
                    || t.source_labels.iter().any(|sel| {
                        labels.is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
                    }))
        })
    }

    /// Whether any route injects faults (a fault left on should be visible).
    pub fn has_fault(&self) -> bool {
        self.http.iter().any(|r| r.fault.is_some())
    }

    pub fn validate(
        namespace: &str,
        name: &str,
        spec: &VirtualServiceSpec,
        cluster_domain: &str,
    ) -> Result<Self, Invalid> {
        let mut warnings = Vec::new();
        if spec.hosts.is_empty() {
            return Err(("spec.hosts".into(), "at least one host is required".into()));
        }
        let mut hosts = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            if h.is_empty() || (h.contains('*') && !h.starts_with('*')) {
                return Err((
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{h:?} is not a host name (a wildcard may only lead: \"*.example.com\")"
                    ),
                ));
            }
            hosts.push(Host::resolve(h, namespace, cluster_domain));
        }
        if spec.gateways.iter().any(|g| g != "mesh") {
            warnings.push(
                "spec.gateways: only the mesh applies here; ingress gateways are not served by Lanyard"
                    .to_string(),
            );
        }
        if spec.tls.is_some() {
            warnings.push("spec.tls: TLS routes are not supported and are ignored".to_string());
        }
        let cx = Ctx {
            namespace,
            cluster_domain,
        };
        let http = spec
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| cx.http_route(&format!("spec.http[{i}]"), r, &mut warnings))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = spec
            .tcp
            .iter()
            .enumerate()
            .map(|(i, r)| cx.tcp_route(&format!("spec.tcp[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtualService {
            namespace: namespace.to_string(),
            name: name.to_string(),
            hosts,
            http,
            tcp,
            warnings,
        })
    }
}

/// What validation needs to resolve names.
struct Ctx<'a> {
    namespace: &'a str,
    cluster_domain: &'a str,
}

fn err<T>(field: impl Into<String>, msg: impl Into<String>) -> Result<T, Invalid> {
    Err((field.into(), msg.into()))
}

impl Ctx<'_> {
    fn http_route(
        &self,
        f: &str,
        r: &HttpRouteWire,
        warnings: &mut Vec<String>,
    ) -> Result<HttpRoute, Invalid> {
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| self.http_match(&format!("{f}.match[{i}]"), m, warnings))
            .collect::<Result<Vec<_>, _>>()?;
        if r.delegate.is_some() {
            return err(format!("{f}.delegate"), "delegation is not supported");
        }
        let action = match (&r.redirect, &r.direct_response, r.route.is_empty()) {
            (Some(_), Some(_), _) | (Some(_), _, false) | (_, Some(_), false) => {
                return err(
                    f,
                    "only one of route, redirect and directResponse may be set",
                )
            }
            (Some(rd), None, true) => {
                let code = rd.redirect_code.unwrap_or(301);
                let code = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| c.is_redirection())
                    .map_or_else(
                        || {
                            err(
                                format!("{f}.redirect.redirectCode"),
                                format!("{code} is not a 3xx status"),
                            )
                        },
                        Ok,
                    )?;
                RouteAction::Redirect(Redirect {
                    uri: rd.uri.clone(),
                    authority: rd.authority.clone(),
                    port: rd
                        .port
                        .map(|p| port(&format!("{f}.redirect.port"), p))
                        .transpose()?,
                    scheme: rd.scheme.clone(),
                    code,
                })
            }
            (None, Some(d), true) => {
                let status = u16::try_from(d.status)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .map_or_else(
                        || {
                            err(
                                format!("{f}.directResponse.status"),
                                format!("{} is not an HTTP status", d.status),
                            )
                        },
                        Ok,
                    )?;
                let body = d
                    .body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default();
                RouteAction::Direct { status, body }
            }
            (None, None, true) => {
                return err(
                    format!("{f}.route"),
                    "a route needs at least one destination (or a redirect or directResponse)",
                )
            }
            (None, None, false) => {
                RouteAction::Forward(self.weighted(&format!("{f}.route"), &r.route)?)
            }
        };
        let rewrite = match &r.rewrite {
            None => None,
            Some(rw) => {
                if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                    return err(
                        format!("{f}.rewrite"),
                        "uri and uriRegexRewrite cannot both be set",
                    );
                }
                let regex = match &rw.uri_regex_rewrite {
                    None => None,
                    Some(rr) => Some((
                        compile(
                            &format!("{f}.rewrite.uriRegexRewrite.match"),
                            &rr.pattern,
                            false,
                            false,
                        )?,
                        rr.rewrite.replace("\\", "$"),
                    )),
                };
                Some(Rewrite {
                    uri: rw.uri.clone(),
                    authority: rw.authority.clone(),
                    regex,
                })
            }
        };
        let timeout = duration_field(&format!("{f}.timeout"), &r.timeout)?.filter(|d| !d.is_zero());
        let retries = match &r.retries {
            None => RetryPolicy::default(),
            Some(rt) => {
                let attempts = rt.attempts.unwrap_or(0);
                let attempts = u32::try_from(attempts).map_or_else(
                    |_| {
                        err(
                            format!("{f}.retries.attempts"),
                            format!("{attempts} must not be negative"),
                        )
                    },
                    Ok,
                )?;
                let retry_on = match &rt.retry_on {
                    None => parse_retry_on(DEFAULT_RETRY_ON).expect("default is valid"),
                    Some(raw) => parse_retry_on(raw).map_err(|bad| {
                        (
                            format!("{f}.retries.retryOn"),
                            format!("{bad:?} is not a retry condition"),
                        )
                    })?,
                };
                RetryPolicy {
                    attempts,
                    per_try_timeout: duration_field(
                        &format!("{f}.retries.perTryTimeout"),
                        &rt.per_try_timeout,
                    )?,
                    retry_on,
                }
            }
        };
        let fault = match &r.fault {
            None => None,
            Some(fw) => {
                let delay = match &fw.delay {
                    None => None,
                    Some(d) => {
                        if d.exponential_delay.is_some() {
                            return err(
                                format!("{f}.fault.delay.exponentialDelay"),
                                "is not supported; use fixedDelay",
                            );
                        }
                        let Some(fixed) =
                            duration_field(&format!("{f}.fault.delay.fixedDelay"), &d.fixed_delay)?
                        else {
                            return err(format!("{f}.fault.delay.fixedDelay"), "is required");
                        };
                        Some((
                            fixed,
                            fraction(&format!("{f}.fault.delay"), &d.percentage, d.percent)?,
                        ))
                    }
                };
                let abort = match &fw.abort {
                    None => None,
                    Some(a) => {
                        let fr = fraction(&format!("{f}.fault.abort"), &a.percentage, None)?;
                        let kind = match (a.http_status, &a.grpc_status, &a.http2_error) {
                            (Some(s), None, None) => Abort::Http(
                                u16::try_from(s)
                                    .ok()
                                    .filter(|s| (200..600).contains(s))
                                    .and_then(|s| StatusCode::from_u16(s).ok())
                                    .map_or_else(
                                        || {
                                            err(
                                                format!("{f}.fault.abort.httpStatus"),
                                                format!("{s} is not an HTTP status"),
                                            )
                                        },
                                        Ok,
                                    )?,
                            ),
                            (None, Some(g), None) => Abort::Grpc(grpc_code(g).map_or_else(
                                || {
                                    err(
                                        format!("{f}.fault.abort.grpcStatus"),
                                        format!("{g:?} is not a gRPC status"),
                                    )
                                },
                                Ok,
                            )?),
                            (None, None, Some(_)) => {
                                return err(
                                    format!("{f}.fault.abort.http2Error"),
                                    "is not supported; use httpStatus or grpcStatus",
                                )
                            }
                            _ => {
                                return err(
                                    format!("{f}.fault.abort"),
                                    "exactly one of httpStatus and grpcStatus is required",
                                )
                            }
                        };
                        Some((kind, fr))
                    }
                };
                Some(Fault { delay, abort })
            }
        };
        let mut mirrors = Vec::new();
        if let Some(m) = &r.mirror {
            let pct = match (&r.mirror_percentage, r.mirror_percent) {
                (Some(p), _) => percent(&format!("{f}.mirrorPercentage"), p)?,
                (None, Some(p)) => f64::from(p.min(100)) / 100.0,
                (None, None) => 1.0,
            };
            let field = format!("{f}.mirror");
            mirrors.push(Mirror {
                destination: self.destination(&field, m)?,
                field,
                fraction: pct,
            });
        }
        for (i, m) in r.mirrors.iter().flatten().enumerate() {
            let mf = format!("{f}.mirrors[{i}]");
            let field = format!("{mf}.destination");
            mirrors.push(Mirror {
                destination: self.destination(&field, &m.destination)?,
                field,
                fraction: match &m.percentage {
                    Some(p) => percent(&format!("{mf}.percentage"), p)?,
                    None => 1.0,
                },
            });
        }
        let cors = match &r.cors_policy {
            None => None,
            Some(c) => {
                let mut allow_origins = Vec::new();
                for (i, o) in c.allow_origins.iter().flatten().enumerate() {
                    allow_origins.push(str_match(
                        &format!("{f}.corsPolicy.allowOrigins[{i}]"),
                        o,
                        false,
                    )?);
                }
                allow_origins.extend(c.allow_origin.iter().flatten().map(|o| {
                    if o == "*" {
                        StrMatch::Present
                    } else {
                        StrMatch::Exact(o.clone())
                    }
                }));
                Some(Cors {
                    allow_origins,
                    allow_methods: c.allow_methods.join(","),
                    allow_headers: c.allow_headers.join(","),
                    expose_headers: c.expose_headers.join(","),
                    max_age: duration_field(&format!("{f}.corsPolicy.maxAge"), &c.max_age)?,
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                })
            }
        };
        Ok(HttpRoute {
            name: r.name.clone(),
            matches,
            action,
            rewrite,
            headers: header_rules(&format!("{f}.headers"), &r.headers)?,
            timeout,
            retries,
            fault,
            mirrors,
            cors,
        })
    }

    fn http_match(
        &self,
        f: &str,
        m: &HttpMatchWire,
        warnings: &mut Vec<String>,
    ) -> Result<HttpMatch, Invalid> {
        if !m.gateways.is_empty() {
            warnings.push(format!("{f}.gateways: ignored (no ingress gateways here)"));
        }
        let opt = |name: &str, w: &Option<StringMatchWire>, ci: bool| {
            w.as_ref()
                .map(|w| str_match(&format!("{f}.{name}"), w, ci))
                .transpose()
        };
        let headers = |name: &str, map: &BTreeMap<String, StringMatchWire>| {
            map.iter()
                .map(|(k, w)| {
                    let field = format!("{f}.{name}.{k}");
                    let hn = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| (field.clone(), format!("{k:?} is not a header name")))?;
                    Ok((hn, str_match(&field, w, false)?))
                })
                .collect::<Result<Vec<_>, Invalid>>()
        };
        Ok(HttpMatch {
            name: m.name.clone(),
            uri: opt("uri", &m.uri, m.ignore_uri_case)?,
            ignore_uri_case: m.ignore_uri_case,
            scheme: opt("scheme", &m.scheme, false)?,
            method: opt("method", &m.method, false)?,
            authority: opt("authority", &m.authority, false)?,
            headers: headers("headers", &m.headers)?,
            without_headers: headers("withoutHeaders", &m.without_headers)?,
            query_params: m
                .query_params
                .iter()
                .map(|(k, w)| {
                    Ok((
                        k.clone(),
                        str_match(&format!("{f}.queryParams.{k}"), w, false)?,
                    ))
                })
                .collect::<Result<_, Invalid>>()?,
            port: m.port.map(|p| port(&format!("{f}.port"), p)).transpose()?,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    fn tcp_route(&self, f: &str, r: &TcpRouteWire) -> Result<TcpRoute, Invalid> {
        let mut ports = Vec::new();
        let mut source_labels = Vec::new();
        for (i, m) in r.matches.iter().enumerate() {
            if let Some(p) = m.port {
                ports.push(port(&format!("{f}.match[{i}].port"), p)?);
            }
            if !m.source_labels.is_empty() {
                source_labels.push(m.source_labels.clone());
            }
        }
        if r.route.is_empty() {
            return err(format!("{f}.route"), "at least one destination is required");
        }
        Ok(TcpRoute {
            ports,
            source_labels,
            route: self.weighted(&format!("{f}.route"), &r.route)?,
        })
    }

    fn destination(&self, f: &str, d: &DestinationWire) -> Result<Destination, Invalid> {
        if d.host.is_empty() {
            return err(format!("{f}.host"), "is required");
        }
        if d.host.contains('*') {
            return err(format!("{f}.host"), "a destination cannot be a wildcard");
        }
        let host = match Host::resolve(&d.host, self.namespace, self.cluster_domain) {
            Host::Exact(h) => h,
            _ => unreachable!("wildcards are refused above"),
        };
        Ok(Destination {
            host,
            subset: d.subset.clone().filter(|s| !s.is_empty()),
            port: d
                .port
                .as_ref()
                .and_then(|p| p.number)
                .map(|p| port(&format!("{f}.port.number"), p))
                .transpose()?,
        })
    }

    /// Destinations with Istio's weight rules: one destination takes everything; several share
    /// by relative weight; omitted weights are 0, and if all are 0 they share evenly.
    fn weighted(
        &self,
        f: &str,
        route: &[RouteDestinationWire],
    ) -> Result<Vec<WeightedDestination>, Invalid> {
        let mut out = Vec::new();
        for (i, rd) in route.iter().enumerate() {
            let Some(d) = &rd.destination else {
                return err(format!("{f}[{i}].destination"), "is required");
            };
            let weight = rd.weight.unwrap_or(0);
            let weight = u32::try_from(weight).map_or_else(
                |_| {
                    err(
                        format!("{f}[{i}].weight"),
                        format!("{weight} must not be negative"),
                    )
                },
                Ok,
            )?;
            out.push(WeightedDestination {
                destination: self.destination(&format!("{f}[{i}].destination"), d)?,
                weight,
                headers: header_rules(&format!("{f}[{i}].headers"), &rd.headers)?,
            });
        }
        if out.len() == 1 || out.iter().all(|d| d.weight == 0) {
            for d in &mut out {
                d.weight = 1;
            }
        }
        Ok(out)
    }
}

fn port(field: &str, p: u32) -> Result<u16, Invalid> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .map_or_else(|| err(field, format!("{p} is not a port number")), Ok)
}

fn percent(field: &str, p: &PercentWire) -> Result<f64, Invalid> {
    if !(0.0..=100.0).contains(&p.value) {
        return err(
            format!("{field}.value"),
            format!("{} is not a percentage (0-100)", p.value),
        );
    }
    Ok(p.value / 100.0)
}

/// Istio's fault percentage: `percentage.value` wins, then the deprecated integer `percent`;
/// neither means 0 (nothing is injected).
fn fraction(field: &str, p: &Option<PercentWire>, legacy: Option<i64>) -> Result<f64, Invalid> {
    match (p, legacy) {
        (Some(p), _) => percent(&format!("{field}.percentage"), p),
        (None, Some(n)) if (0..=100).contains(&n) => Ok(n as f64 / 100.0),
        (None, Some(n)) => err(
            format!("{field}.percent"),
            format!("{n} is not a percentage (0-100)"),
        ),
        (None, None) => Ok(0.0),
    }
}

fn compile(field: &str, re: &str, ignore_case: bool, anchored: bool) -> Result<Pattern, Invalid> {
    let pattern = if anchored {
        format!("^(?:{re})$")
    } else {
        re.to_string()
    };
    regex::RegexBuilder::new(&pattern)
        .case_insensitive(ignore_case)
        .size_limit(1 << 20)
        .build()
        .map(Pattern)
        .map_err(|e| (field.to_string(), format!("invalid regex {re:?}: {e}")))
}

fn str_match(field: &str, w: &StringMatchWire, ignore_case: bool) -> Result<StrMatch, Invalid> {
    match (&w.exact, &w.prefix, &w.regex) {
        (None, None, None) => Ok(StrMatch::Present),
        (Some(e), None, None) => Ok(StrMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(StrMatch::Prefix(p.clone())),
        // RE2 semantics as Envoy applies them: the whole value must match.
        (None, None, Some(r)) => Ok(StrMatch::Regex(compile(
            &format!("{field}.regex"),
            r,
            ignore_case,
            true,
        )?)),
        _ => err(field, "only one of exact, prefix and regex may be set"),
    }
}

fn header_ops(field: &str, w: &HeaderOpsWire) -> Result<HeaderOps, Invalid> {
    let name = |k: &str| {
        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| {
            (
                format!("{field}.{k}"),
                format!("{k:?} is not a header name"),
            )
        })
    };
    let pairs = |map: &BTreeMap<String, String>, kind: &str| {
        map.iter()
            .map(|(k, v)| {
                let value = HeaderValue::from_str(v).map_err(|_| {
                    (
                        format!("{field}.{kind}.{k}"),
                        format!("{v:?} is not a header value"),
                    )
                })?;
                Ok((name(k)?, value))
            })
            .collect::<Result<Vec<_>, Invalid>>()
    };
    Ok(HeaderOps {
        set: pairs(&w.set, "set")?,
        add: pairs(&w.add, "add")?,
        remove: w.remove.iter().map(|k| name(k)).collect::<Result<_, _>>()?,
    })
}

fn header_rules(field: &str, w: &Option<HeadersWire>) -> Result<HeaderRules, Invalid> {
    let Some(w) = w else {
        return Ok(HeaderRules::default());
    };
    Ok(HeaderRules {
        request: w
            .request
            .as_ref()
            .map(|r| header_ops(&format!("{field}.request"), r))
            .transpose()?
            .unwrap_or_default(),
        response: w
            .response
            .as_ref()
            .map(|r| header_ops(&format!("{field}.response"), r))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// gRPC status by name (`UNAVAILABLE`) or number.
pub fn grpc_code(raw: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(n) = raw.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(raw))
        .map(|p| p as u32)
}

/// Parses Envoy's `retry_on` list as Istio passes it through; bare numbers are retriable
/// status codes. Returns the first unknown condition on failure.
pub fn parse_retry_on(raw: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "5xx" => on.any_5xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" | "reset-before-request" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            // Envoy's default retriable status code under Istio is 503.
            "retriable-status-codes" => {
                if !on.status_codes.contains(&503) {
                    on.status_codes.push(503)
                }
            }
            "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
            other => {
                if let Ok(code) = other.parse::<u16>() {
                    if !(100..600).contains(&code) {
                        return Err(other.to_string());
                    }
                    on.status_codes.push(code);
                } else if let Some(g) = grpc_code(&other.replace('-', "_")) {
                    on.grpc.push(g);
                } else {
                    return Err(other.to_string());
                }
            }
        }
    }
    Ok(on)
}
