//! Sending a routed request to an endpoint: pool admission, endpoint choice, retries with
//! per-try and overall timeouts, mirroring, and the metrics record written when the response
//! body ends.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use lanyard_core::state::{MeshState, Protocol, Service, Workload};
use lanyard_core::traffic::destination_rule::{HashOn, OutlierDetection, TrafficPolicy};
use lanyard_core::traffic::virtual_service::{
    Destination, HttpRoute, Mirror, RetryPolicy, WeightedDestination,
};
use lanyard_core::traffic::LoadBalancer;
use rand::Rng;
use smallvec::{smallvec, SmallVec};

use crate::body::ResponseBody;
use crate::lb::{Cluster, ClusterRef, Outcome};
use crate::local::{self, Local};
use crate::metrics::RequestRecord;
use crate::pool::PooledBody;
use crate::route::Inputs;
use crate::upstream::{Body, BoxError};

/// A plan's endpoints. Inline up to a few: most services have that many per subset, and a
/// `Vec` here, with the addresses' own below, was two allocations per request.
pub type Endpoints = SmallVec<[(SocketAddr, Arc<Workload>); 4]>;

/// Where and how one request is sent, decided before the first attempt. Borrows the route
/// it was planned from: a request copies none of its policies.
pub struct Plan<'a> {
    pub cluster: Arc<Cluster>,
    pub endpoints: Endpoints,
    pub lb: LoadBalancer,
    pub outlier: Option<OutlierDetection>,
    pub h2: bool,
    /// The route's, or Istio's default; owned only when `maxRetries` lowers the attempts.
    pub retries: Cow<'a, RetryPolicy>,
    pub timeout: Option<Duration>,
    /// `maxRequestsPerConnection: 1`: no keep-alive upstream.
    pub close_after: bool,
    pub mirrors: &'a [Mirror],
    /// The DestinationRule's `connectTimeout`; None: the waypoint's default.
    pub connect_timeout: Option<Duration>,
}

// === impl Plan ===

impl<'a> Plan<'a> {
    /// Plans a request to a route destination: the service's endpoints on the port, narrowed
    /// to the subset's labels, with the DestinationRule's traffic policy.
    pub fn to_service(
        inputs: &Inputs,
        state: &MeshState,
        wd: &WeightedDestination,
        route: Option<&'a HttpRoute>,
        dialed_port: u16,
    ) -> Result<Plan<'a>, Local> {
        let d = &wd.destination;
        let svc = state.service_by_host(&d.host).ok_or_else(|| {
            Local::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NC",
                format!("no service for host {}", d.host),
            )
        })?;
        let port = resolve_port(svc, d, dialed_port)?;
        let dr = state.destination_rule_for(&d.host, &inputs.config.waypoint.namespace);
        let empty = Default::default();
        let (labels, policy) = match &d.subset {
            Some(name) => {
                let subset = dr.and_then(|dr| dr.subset(name)).ok_or_else(|| {
                    Local::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "NC",
                        format!(
                            "no DestinationRule defines subset {name:?} of host {}",
                            d.host
                        ),
                    )
                })?;
                (&subset.labels, subset.policy.clone())
            }
            None => (&empty, dr.map(|dr| dr.policy.clone()).unwrap_or_default()),
        };
        let endpoints = state
            .subset_endpoints(svc, port, labels)
            .filter_map(|e| {
                Some((
                    SocketAddr::new(e.workload.ip?.into(), e.port),
                    e.workload.clone(),
                ))
            })
            .collect();
        let h2 = svc.port(port).map(|p| p.protocol()) == Some(Protocol::Http2);
        let key = ClusterRef {
            host: &d.host,
            subset: d.subset.as_deref(),
            port,
        };
        Ok(Self::build(inputs, key, endpoints, policy, h2, route))
    }

    /// Plans a request addressed to one workload (no service routing applies).
    pub fn to_workload(
        inputs: &Inputs,
        w: &Arc<Workload>,
        port: u16,
        route: Option<&'a HttpRoute>,
    ) -> Result<Plan<'a>, Local> {
        let ip = w.ip.ok_or_else(|| {
            Local::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UH",
                "workload has no address",
            )
        })?;
        let endpoints = smallvec![(SocketAddr::new(ip.into(), port), w.clone())];
        let key = ClusterRef {
            host: &w.name,
            subset: None,
            port,
        };
        Ok(Self::build(
            inputs,
            key,
            endpoints,
            TrafficPolicy::default(),
            false,
            route,
        ))
    }

    fn build(
        inputs: &Inputs,
        key: ClusterRef<'_>,
        endpoints: Endpoints,
        policy: TrafficPolicy,
        h2: bool,
        route: Option<&'a HttpRoute>,
    ) -> Plan<'a> {
        let cluster = inputs.balancer.cluster(key, &policy.pool);
        let mut retries = Cow::Borrowed(route.map_or(RetryPolicy::istio_default(), |r| &r.retries));
        if let Some(max) = policy.pool.max_retries.filter(|m| *m < retries.attempts) {
            retries.to_mut().attempts = max;
        }
        Plan {
            cluster,
            endpoints,
            lb: policy.load_balancer.clone().unwrap_or_default(),
            outlier: policy.outlier.clone(),
            h2,
            retries,
            timeout: route.and_then(|r| r.timeout),
            close_after: policy.pool.max_requests_per_connection == Some(1),
            mirrors: route.map_or(&[], |r| &r.mirrors),
            connect_timeout: policy.pool.connect_timeout,
        }
    }

    /// The endpoints' addresses, for `Cluster::pick`.
    pub fn addrs(&self) -> SmallVec<[SocketAddr; 8]> {
        self.endpoints.iter().map(|(a, _)| *a).collect()
    }
}

/// The destination's port: as written, else the dialed one if the service has it, else the
/// service's only port.
fn resolve_port(svc: &Service, d: &Destination, dialed: u16) -> Result<u16, Local> {
    if let Some(p) = d.port {
        return Ok(p);
    }
    if svc.port(dialed).is_some() {
        return Ok(dialed);
    }
    match svc.ports.as_slice() {
        [only] => Ok(only.port),
        _ => Err(Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NC",
            format!(
                "destination {} has several ports; the route must name one",
                d.host
            ),
        )),
    }
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    // Most messages carry none: one pass over the names (standard ones compare as enums)
    // instead of a hash lookup per hop-by-hop name.
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in listed {
        h.remove(name.as_str());
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    if keep_te_trailers && te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Drops an `Upgrade: h2c` offer the waypoint did not take itself (`h2c.rs` declines
/// offers with a body or malformed settings). Passed upstream, it would splice the
/// connection after a 101, and every later request on it would pass unrouted and
/// unauthorized. HTTP/1.1 lets a server ignore an upgrade: the request continues as HTTP/1.1.
fn strip_h2c_upgrade(h: &mut HeaderMap) {
    let Some(offer) = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let protocols: Vec<&str> = offer
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !protocols.iter().any(|p| p.eq_ignore_ascii_case("h2c")) {
        return;
    }
    let rest = protocols
        .iter()
        .filter(|p| !p.eq_ignore_ascii_case("h2c"))
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    h.remove("http2-settings");
    match HeaderValue::from_str(&rest) {
        Ok(v) if !rest.is_empty() => {
            h.insert(header::UPGRADE, v);
        }
        _ => {
            h.remove(header::UPGRADE);
        }
    }
}

/// Whether a response asks for another attempt under `policy`.
fn retriable(policy: &RetryPolicy, status: StatusCode, headers: &HeaderMap) -> bool {
    let on = &policy.retry_on;
    let s = status.as_u16();
    if on.status_codes.contains(&s)
        || (on.any_5xx && s >= 500)
        || (on.gateway_error && matches!(s, 502..=504))
        || (on.retriable_4xx && s == 409)
    {
        return true;
    }
    let grpc = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    grpc.is_some_and(|g| on.grpc.contains(&g))
}

fn hash_key(
    lb: &LoadBalancer,
    headers: &HeaderMap,
    path: &str,
    src_ip: Option<IpAddr>,
) -> Option<String> {
    let LoadBalancer::ConsistentHash(on) = lb else {
        return None;
    };
    match on {
        HashOn::Header(h) => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        // The client pod's address, as the tunnel delivered it (Envoy's downstream address).
        HashOn::SourceIp => src_ip.map(|ip| ip.to_string()),
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        HashOn::QueryParam(q) => path
            .split_once('?')
            .map(|(_, qs)| qs)
            .into_iter()
            .flat_map(|qs| qs.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k == q)
            .map(|(_, v)| v.to_string()),
    }
}

/// Sends the request per `plan`. Bodies up to `max_buffered_body` are kept, so that retries
/// and mirrors can resend them; larger or unsized bodies stream once, without retries.
pub async fn forward(
    inputs: &Inputs,
    state: &MeshState,
    plan: Plan<'_>,
    mut req: Request<Incoming>,
    rec: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Local> {
    if plan.endpoints.is_empty() {
        return Err(Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream",
        ));
    }
    rec.cluster = Some(plan.cluster.clone());
    let _admission = plan.cluster.admit().await.map_err(|_| {
        Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UO",
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        )
    })?;
    strip_h2c_upgrade(req.headers_mut());
    // An HTTP/1.1 upgrade (WebSocket): the upgrade headers go through, and after a 101 the
    // two connections are spliced.
    let upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let max = inputs.config.max_buffered_body as u64;
    let want_copy = plan.retries.attempts > 0 || !plan.mirrors.is_empty();
    let small = body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= max);
    let mut streaming = None;
    let buffered = if want_copy && small {
        let bytes = http_body_util::Limited::new(body, max as usize)
            .collect()
            .await
            .map_err(|e| {
                Local::new(
                    StatusCode::BAD_REQUEST,
                    "DPE",
                    format!("reading request body: {e}"),
                )
            })?
            .to_bytes();
        Some(bytes)
    } else {
        streaming = Some(body);
        None
    };
    rec.request_bytes = buffered.as_ref().map_or_else(
        || {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        },
        |b| b.len() as u64,
    );
    let upgrade_headers = upgrade.then(|| {
        (
            parts.headers.get(header::CONNECTION).cloned(),
            parts.headers.get(header::UPGRADE).cloned(),
        )
    });
    strip_hop_by_hop(&mut parts.headers, plan.h2);
    if let Some((Some(conn), Some(up))) = upgrade_headers {
        parts.headers.insert(header::CONNECTION, conn);
        parts.headers.insert(header::UPGRADE, up);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(rec.authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if plan.close_after && !plan.h2 {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let (Some(body), false) = (&buffered, upgrade) {
        for m in plan.mirrors {
            if m.fraction > 0.0 && (m.fraction >= 1.0 || rand::rng().random::<f64>() < m.fraction) {
                mirror(inputs, state, m, &parts, body.clone(), rec);
            }
        }
    }
    let key = hash_key(&plan.lb, &parts.headers, path, rec.src_ip);
    let addrs = plan.addrs();
    let allowed = if buffered.is_some() {
        1 + plan.retries.attempts
    } else {
        1
    };
    let deadline = plan.timeout.map(|t| Instant::now() + t);
    let mut last = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        rec.attempts = attempt;
        let more = attempt < allowed;
        let addr = plan
            .cluster
            .pick(&addrs, &plan.lb, key.as_deref(), last)
            .ok_or_else(|| {
                Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream")
            })?;
        last = Some(addr);
        let body: Body = match (&buffered, streaming.take()) {
            (Some(b), _) => local::full(b.clone()),
            (None, Some(s)) => s.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
            (None, None) => local::empty(),
        };
        let out = outgoing(&parts, body, plan.h2);
        let per_try = match (plan.retries.per_try_timeout, deadline) {
            (p, Some(d)) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Local::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "UT",
                        "upstream request timeout",
                    ));
                }
                Some(p.map_or(left, |p| p.min(left)))
            }
            (p, None) => p,
        };
        // Only least-request balancing reads the counts.
        let in_flight =
            matches!(plan.lb, LoadBalancer::LeastRequest).then(|| plan.cluster.start(addr));
        let sent = inputs
            .upstream
            .send(plan.h2, addr, plan.connect_timeout, out);
        let result = match per_try {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        drop(in_flight);
        let on = &plan.retries.retry_on;
        match result {
            Ok(Ok((mut resp, lease))) => {
                let status = resp.status();
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        fill_destination(rec, &plan, addr);
                        let server_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice(client_side, server_side));
                        let (parts, _) = resp.into_parts();
                        return Ok(Response::from_parts(parts, local::empty().into()));
                    }
                }
                report(inputs, &plan, addr, Outcome::Status(status.as_u16()), rec);
                if more && retriable(&plan.retries, status, resp.headers()) {
                    backoff(attempt).await;
                    continue;
                }
                fill_destination(rec, &plan, addr);
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers, false);
                let lease = lease.filter(|_| !plan.close_after);
                let body = PooledBody::new(rbody, lease);
                return Ok(Response::from_parts(rparts, ResponseBody::Upstream(body)));
            }
            Ok(Err(e)) => {
                report(inputs, &plan, addr, Outcome::ConnectFailure, rec);
                let connect = e.is_connect();
                if more
                    && ((connect && on.connect_failure)
                        || on.reset
                        || (on.refused_stream && !connect))
                {
                    backoff(attempt).await;
                    continue;
                }
                fill_destination(rec, &plan, addr);
                let flags = if attempt > 1 {
                    "URX"
                } else if connect {
                    "UF"
                } else {
                    "UC"
                };
                return Err(Local::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    flags,
                    format!("upstream connect error or disconnect/reset before headers: {e}"),
                ));
            }
            Err(()) => {
                report(inputs, &plan, addr, Outcome::ConnectFailure, rec);
                let overall = deadline.is_some_and(|d| Instant::now() >= d);
                if more && !overall && (on.any_5xx || on.gateway_error || on.reset) {
                    backoff(attempt).await;
                    continue;
                }
                fill_destination(rec, &plan, addr);
                return Err(Local::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                ));
            }
        }
    }
}

/// One attempt's request: origin-form URI (`Upstream::send` makes it absolute for HTTP/2).
fn outgoing(parts: &http::request::Parts, body: Body, h2: bool) -> Request<Body> {
    let mut out = Request::new(body);
    *out.method_mut() = parts.method.clone();
    if let Some(pq) = parts.uri.path_and_query() {
        *out.uri_mut() = http::Uri::from(pq.clone());
    }
    *out.headers_mut() = parts.headers.clone();
    *out.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    out
}

/// Copies both ways between an upgraded client connection and the upgraded upstream one.
async fn splice(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    let (Ok(c), Ok(s)) = tokio::join!(client, server) else {
        return;
    };
    let (mut c, mut s) = (
        hyper_util::rt::TokioIo::new(c),
        hyper_util::rt::TokioIo::new(s),
    );
    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
}

fn report(
    inputs: &Inputs,
    plan: &Plan<'_>,
    addr: SocketAddr,
    outcome: Outcome,
    rec: &RequestRecord,
) {
    if plan
        .cluster
        .report(addr, outcome, plan.outlier.as_ref(), plan.endpoints.len())
    {
        inputs
            .metrics
            .ejections
            .with_label_values(&[&rec.dst_service().to_string(), &addr.to_string()])
            .inc();
    }
}

/// Envoy's retry back-off: 25 ms base, doubling, fully jittered, capped at 250 ms.
async fn backoff(attempt: u32) {
    let cap = (25u64 << attempt.min(4)).min(250);
    let ms = rand::rng().random_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn fill_destination(rec: &mut RequestRecord, plan: &Plan<'_>, addr: SocketAddr) {
    rec.upstream = Some(addr);
    rec.dst = plan
        .endpoints
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, w)| w.clone());
}

/// A gRPC status from response headers or trailers.
pub(crate) fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Sends a copy to a mirror destination and forgets it: its response is never awaited by
/// the client. The authority gets Envoy's `-shadow` suffix.
fn mirror(
    inputs: &Inputs,
    state: &MeshState,
    m: &Mirror,
    parts: &http::request::Parts,
    body: Bytes,
    rec: &RequestRecord,
) {
    let wd = WeightedDestination {
        destination: m.destination.clone(),
        weight: 1,
        headers: Default::default(),
    };
    let dialed = rec
        .authority
        .as_str()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(80);
    let Ok(plan) = Plan::to_service(inputs, state, &wd, None, dialed) else {
        return;
    };
    let addrs = plan.addrs();
    let Some(addr) = plan.cluster.pick(&addrs, &plan.lb, None, None) else {
        return;
    };
    let mut out = outgoing(parts, local::full(body), plan.h2);
    let host = rec.authority.as_str().split(':').next().unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow")) {
        out.headers_mut().insert(header::HOST, v);
    }
    let upstream = inputs.upstream.clone();
    let (h2, connect_timeout) = (plan.h2, plan.connect_timeout);
    tokio::spawn(async move {
        let sent = upstream.send(h2, addr, connect_timeout, out);
        if let Ok(Ok((resp, lease))) = tokio::time::timeout(Duration::from_secs(30), sent).await {
            let _ = PooledBody::new(resp.into_body(), lease).collect().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// `useSourceIp` keys on the client's address, so that pods sharing a service account
    /// (one principal) still spread over endpoints.
    #[test]
    fn consistent_hash_on_source_ip_keys_on_the_client_address() {
        let lb = LoadBalancer::ConsistentHash(HashOn::SourceIp);
        let key = |ip: [u8; 4]| hash_key(&lb, &HeaderMap::new(), "/", Some(IpAddr::from(ip)));
        assert_eq!(key([10, 0, 0, 1]).as_deref(), Some("10.0.0.1"));
        assert_ne!(key([10, 0, 0, 1]), key([10, 0, 0, 2]));
        assert_eq!(hash_key(&lb, &HeaderMap::new(), "/", None), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = headers(&[
            ("connection", "x-trace-hop, Keep-Alive"),
            ("x-trace-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end-to-end"]);

        let mut h = headers(&[
            ("te", "trailers, deflate"),
            ("content-type", "application/grpc"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("te").unwrap(),
            "trailers",
            "HTTP/2 keeps `te: trailers` only"
        );

        let mut h = headers(&[("host", "a"), ("accept", "*/*"), ("x-request-id", "r")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 3, "nothing hop-by-hop: untouched");
    }

    #[test]
    fn an_h2c_upgrade_offer_is_dropped_and_other_upgrades_kept() {
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        strip_h2c_upgrade(&mut h);
        assert!(h.get("upgrade").is_none());
        assert!(h.get("http2-settings").is_none());

        let mut h = headers(&[("upgrade", "H2C, websocket")]);
        strip_h2c_upgrade(&mut h);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");

        let mut h = headers(&[("upgrade", "websocket"), ("http2-settings", "x")]);
        strip_h2c_upgrade(&mut h);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(
            h.get("http2-settings").unwrap(),
            "x",
            "untouched without h2c"
        );
    }
}
