//! One HTTP request through the waypoint: authorization, VirtualService routing (first match
//! wins), CORS, fault injection, redirects and direct responses; forwarding is `forward.rs`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use lanyard_core::identity::Identity;
use lanyard_core::policy::authz::{decide, Headers, HttpAttrs, Request as AuthzRequest};
use lanyard_core::state::{MeshState, Service, Workload};
use lanyard_core::traffic::virtual_service::{
    Abort, Cors, HeaderOps, HttpRoute, RequestView, RouteAction, StrMatch, WeightedDestination,
};
use rand::Rng;
use tokio::sync::watch;
use tracing::debug;

use crate::body::{self, Recorded, ResponseBody};
use crate::config::Config;
use crate::forward::{self, Plan};
use crate::lb::Balancer;
use crate::local::{self, Local};
use crate::metrics::{Authority, Metrics, RequestRecord};
use crate::upstream::{Body, Upstream};

/// A constant name: inserting by `&str` would build (and allocate) the name per request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every request handler shares.
pub struct Inputs {
    pub config: Arc<Config>,
    pub state: watch::Receiver<Arc<MeshState>>,
    pub upstream: Arc<Upstream>,
    pub balancer: Arc<Balancer>,
    pub metrics: Arc<Metrics>,
    pub jwks: Arc<crate::authn::Jwks>,
}

/// The inbound tunnel a request arrived on: who called, and the address it dialed.
pub struct Downstream {
    pub src_ip: IpAddr,
    pub src_id: Identity,
    pub authority: SocketAddr,
    pub protocol: &'static str,
}

/// What the dialed address names.
#[derive(Clone)]
pub enum Target {
    Service(Arc<Service>),
    Workload(Arc<Workload>),
}

impl Target {
    pub fn resolve(state: &MeshState, addr: SocketAddr) -> Option<Target> {
        let IpAddr::V4(ip) = addr.ip() else {
            return None;
        };
        if let Some(s) = state.service_by_vip(ip) {
            return Some(Target::Service(s.clone()));
        }
        state
            .workload_by_ip(ip)
            .map(|w| Target::Workload(w.clone()))
    }
}

pub async fn handle(
    inputs: Arc<Inputs>,
    down: Arc<Downstream>,
    mut req: Request<Incoming>,
) -> Result<Response<Recorded>, Infallible> {
    if req.headers().contains_key(header::UPGRADE) {
        if let Some(switching) = crate::h2c::upgrade(&inputs, &down, &mut req) {
            return Ok(switching.map(Recorded::unrecorded));
        }
    }
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let mut rec = RequestRecord {
        method: req.method().clone(),
        path: req.uri().path_and_query().cloned(),
        protocol: if grpc { "grpc" } else { down.protocol },
        src_ip: Some(down.src_ip),
        src_principal: Some(down.src_id.clone()),
        ..Default::default()
    };
    let (resp, flags) = match route(&inputs, &down, req, &mut rec).await {
        Ok(r) => (r, rec.flags),
        Err(local) => {
            debug!(status = %local.status, flags = local.flags, "{}", local.body);
            (local.response(grpc).map(ResponseBody::Local), local.flags)
        }
    };
    rec.flags = if flags.is_empty() { "-" } else { flags };
    rec.code = resp.status().as_u16();
    if grpc {
        if let Some(s) = forward::grpc_status(resp.headers()) {
            rec.grpc_status = Some(s);
        }
    }
    Ok(body::record_on_finish(
        resp,
        inputs.metrics.clone(),
        rec,
        start,
    ))
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn route(
    inputs: &Inputs,
    down: &Downstream,
    mut req: Request<Incoming>,
    rec: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Local> {
    let state = inputs.state.borrow().clone();
    rec.state = Some(state.clone());
    let config = &inputs.config;
    rec.request_id = Some(match req.headers().get(&X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    });
    if config.otlp_endpoint.is_some() {
        rec.span = Some(config.tracing.start(req.headers_mut()));
    }
    // Kept once, in the record: the log line and metrics read it there.
    rec.authority = Authority::of(&req, down.authority);
    if let IpAddr::V4(ip) = down.src_ip {
        rec.src = state.workload_by_ip(ip).cloned();
    }
    let target = Target::resolve(&state, down.authority).ok_or_else(|| {
        Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            format!(
                "{} is neither a service nor a workload in the mesh",
                down.authority
            ),
        )
    })?;
    let svc = match &target {
        Target::Service(s) => Some(s.clone()),
        Target::Workload(_) => None,
    };
    rec.service = svc.clone();

    // Authorization sees the real client: the tunnel's peer identity and address.
    let waypoint = &config.waypoint;
    let authns = state.waypoint_request_authns(waypoint, svc.as_deref());
    let user = if authns.is_empty() {
        None
    } else {
        crate::authn::authenticate(&inputs.jwks, authns, &mut req).await?
    };
    // `MeshState::authorize_at_waypoint` inlined: no attributes are gathered without policies.
    let policies = state.waypoint_policies(waypoint, svc.as_deref());
    if !policies.is_empty() {
        let principal = down.src_id.principal();
        let host = rec.authority.as_str();
        let verdict = decide(
            policies.iter().map(|p| p.as_ref()),
            &AuthzRequest {
                principal: Some(principal),
                source_namespace: Some(down.src_id.namespace()),
                source_service_account: Some(down.src_id.service_account()),
                source_ip: down.src_ip,
                destination_ip: down.authority.ip(),
                destination_port: down.authority.port(),
                http: Some(HttpAttrs {
                    host,
                    method: req.method().as_str(),
                    path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                    headers: Headers::Map(req.headers()),
                    request_principal: user.as_ref().map(|u| u.principal.as_str()),
                    claims: user.as_ref().map(|u| &u.claims),
                    remote_ip: Some(down.src_ip),
                }),
            },
        );
        if !verdict.allowed() {
            let decision = verdict.into_decision(policies.iter().map(|p| p.as_ref()));
            let policy = decision.policy();
            inputs
                .metrics
                .denied
                .with_label_values(&[
                    &rec.dst_service().to_string(),
                    &policy,
                    decision.reason.label(),
                ])
                .inc();
            rec.policy = decision.reason.to_string();
            let mut l = Local::new(StatusCode::FORBIDDEN, "-", "RBAC: access denied");
            l.grpc = Some(7);
            return Err(l);
        }
    }

    // Routing: the VirtualService of the service's host, or straight to the target.
    let Some(svc) = svc else {
        let Target::Workload(w) = target else {
            unreachable!()
        };
        let plan = Plan::to_workload(inputs, &w, down.authority.port(), None)?;
        return forward::forward(inputs, &state, plan, req, rec).await;
    };
    let host = state.host_name(&svc);
    let Some(vs) = state.virtual_service_for(&host).cloned() else {
        let default = WeightedDestination {
            destination: lanyard_core::traffic::virtual_service::Destination {
                host: host.into_owned(),
                subset: None,
                port: Some(down.authority.port()),
            },
            weight: 1,
            headers: Default::default(),
        };
        let plan = Plan::to_service(inputs, &state, &default, None, down.authority.port())?;
        return forward::forward(inputs, &state, plan, req, rec).await;
    };
    let (idx, http_route) = {
        let view = RequestView {
            method: req.method().as_str(),
            scheme: "http",
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            authority: rec.authority.as_str(),
            headers: req.headers(),
            port: down.authority.port(),
            source_labels: rec_labels(&state, down.src_ip),
            source_namespace: Some(down.src_id.namespace()),
        };
        match vs.route(&view) {
            Some(found) => found,
            None => {
                return Err(Local::new(
                    StatusCode::NOT_FOUND,
                    "NR",
                    format!(
                        "no route of VirtualService {}/{} matches",
                        vs.namespace, vs.name
                    ),
                ))
            }
        }
    };
    rec.route = Some((vs.clone(), idx));

    if let Some(cors) = &http_route.cors {
        if let Some(resp) = preflight(cors, &req) {
            return Ok(resp.map(ResponseBody::Local));
        }
    }
    if let Some(fault) = &http_route.fault {
        if let Some((delay, fraction)) = fault.delay {
            if chance(fraction) {
                rec.flags = "DI";
                tokio::time::sleep(delay).await;
            }
        }
        if let Some((abort, fraction)) = &fault.abort {
            if chance(*fraction) {
                return Err(match abort {
                    Abort::Http(s) => Local::new(*s, "FI", "fault filter abort"),
                    Abort::Grpc(code) => {
                        let mut l = Local::new(StatusCode::OK, "FI", "fault filter abort");
                        l.grpc = Some(*code);
                        l
                    }
                });
            }
        }
    }
    let dests = match &http_route.action {
        RouteAction::Redirect(rd) => {
            let scheme = rd.scheme.as_deref().unwrap_or("http");
            let host = rd
                .authority
                .clone()
                .unwrap_or_else(|| rec.authority.to_string());
            let host = match rd.port {
                Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(&host)),
                None => host,
            };
            let path = rd.uri.clone().unwrap_or_else(|| rec.path().to_string());
            let mut r = Response::new(local::empty());
            *r.status_mut() = rd.code;
            if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{path}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r.map(ResponseBody::Local));
        }
        RouteAction::Direct { status, body } => {
            let mut r = Response::new(local::full(body.clone()));
            *r.status_mut() = *status;
            return Ok(r.map(ResponseBody::Local));
        }
        RouteAction::Forward(d) => d,
    };
    let chosen = pick_weighted(dests);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let plan = Plan::to_service(
        inputs,
        &state,
        chosen,
        Some(http_route),
        down.authority.port(),
    )?;
    apply(&http_route.headers.request, req.headers_mut());
    apply(&chosen.headers.request, req.headers_mut());
    if let Some(rw) = &http_route.rewrite {
        rewrite(&mut req, rw, http_route, rec.authority.as_str());
    }
    let mut resp = forward::forward(inputs, &state, plan, req, rec).await?;
    apply(&chosen.headers.response, resp.headers_mut());
    apply(&http_route.headers.response, resp.headers_mut());
    if let (Some(cors), Some(origin)) = (&http_route.cors, origin) {
        cors_headers(cors, &origin, resp.headers_mut());
    }
    Ok(resp)
}

fn rec_labels(
    state: &MeshState,
    ip: IpAddr,
) -> Option<&std::collections::BTreeMap<String, String>> {
    let IpAddr::V4(v4) = ip else { return None };
    state.workload_by_ip(v4).map(|w| &w.labels)
}

pub(crate) fn chance(fraction: f64) -> bool {
    fraction > 0.0 && (fraction >= 1.0 || rand::rng().random::<f64>() < fraction)
}

/// Relative weights: each destination's share is its weight over the sum.
pub(crate) fn pick_weighted(dests: &[WeightedDestination]) -> &WeightedDestination {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 || dests.len() == 1 {
        return &dests[0];
    }
    let mut n = rand::rng().random_range(0..total);
    for d in dests {
        if n < u64::from(d.weight) {
            return d;
        }
        n -= u64::from(d.weight);
    }
    &dests[dests.len() - 1]
}

pub fn apply(ops: &HeaderOps, h: &mut HeaderMap) {
    for name in &ops.remove {
        h.remove(name);
    }
    for (k, v) in &ops.set {
        h.insert(k.clone(), v.clone());
    }
    for (k, v) in &ops.add {
        h.append(k.clone(), v.clone());
    }
}

/// Istio's rewrite: `uri` replaces the prefix that matched (or the whole path when the match
/// was not a prefix); `uriRegexRewrite` substitutes; `authority` replaces the host.
fn rewrite<B>(
    req: &mut Request<B>,
    rw: &lanyard_core::traffic::virtual_service::Rewrite,
    route: &HttpRoute,
    authority: &str,
) {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (pq.clone(), None),
    };
    let mut new_path = path.clone();
    if let Some(uri) = &rw.uri {
        let prefix = route.matches.iter().find_map(|m| match &m.uri {
            Some(StrMatch::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.clone()),
            _ => None,
        });
        new_path = match prefix {
            Some(p) => format!("{uri}{}", &path[p.len()..]),
            None => uri.clone(),
        };
    }
    if let Some((re, with)) = &rw.regex {
        new_path = re.replace_all(&path, with.as_str()).into_owned();
    }
    let full = match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = full.parse().ok();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    let host = rw.authority.as_deref().unwrap_or(authority);
    if let Ok(v) = HeaderValue::from_str(host) {
        req.headers_mut().insert(header::HOST, v);
    }
}

fn origin_allowed(cors: &Cors, origin: &HeaderValue) -> bool {
    origin
        .to_str()
        .is_ok_and(|o| cors.allow_origins.iter().any(|m| m.matches(o)))
}

/// Answers a CORS preflight for an allowed origin (others pass through to the app).
fn preflight<B>(cors: &Cors, req: &Request<B>) -> Option<Response<Body>> {
    if req.method() != Method::OPTIONS
        || !req.headers().contains_key("access-control-request-method")
    {
        return None;
    }
    let origin = req.headers().get(header::ORIGIN)?;
    if !origin_allowed(cors, origin) {
        return None;
    }
    let mut r = Response::new(local::empty());
    cors_headers(cors, origin, r.headers_mut());
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let (false, Ok(v)) = (v.is_empty(), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    };
    set(h, "access-control-allow-methods", &cors.allow_methods);
    set(h, "access-control-allow-headers", &cors.allow_headers);
    if let Some(age) = cors.max_age {
        set(h, "access-control-max-age", &age.as_secs().to_string());
    }
    Some(r)
}

fn cors_headers(cors: &Cors, origin: &HeaderValue, h: &mut HeaderMap) {
    if !origin_allowed(cors, origin) {
        return;
    }
    h.insert("access-control-allow-origin", origin.clone());
    if cors.allow_credentials {
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    if let (false, Ok(v)) = (
        cors.expose_headers.is_empty(),
        HeaderValue::from_str(&cors.expose_headers),
    ) {
        h.insert("access-control-expose-headers", v);
    }
}

/// A random (version 4) UUID, as Envoy generates for `x-request-id`.
fn new_request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0x0f)];
        o += 2;
    }
    // Owned by its `Bytes`: the record's clone of it shares the buffer instead of moving it
    // to a new allocation, as a clone of a value built from a slice would.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out))
        .expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{s}");
        assert!(s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{s}");
        assert!(groups[2].starts_with('4'), "version 4: {s}");
        assert!(
            matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
            "RFC 4122 variant: {s}"
        );
    }
}
