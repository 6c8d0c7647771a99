//! Replies the waypoint makes itself (denials, faults, no route, overflow), each with the
//! Envoy response flag that Istio's metrics and logs carry.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::upstream::Body;

#[derive(Debug, Clone)]
pub struct Local {
    pub status: StatusCode,
    /// Envoy's response flag: `NR` no route, `NC` no cluster (e.g. undefined subset), `UH` no
    /// healthy upstream, `UO` overflow, `UF` connect failure, `URX` retries exhausted, `UT`
    /// timeout, `FI`/`DI` fault abort/delay.
    pub flags: &'static str,
    pub body: String,
    /// For gRPC callers: the status to answer with (trailers-only) instead of HTTP.
    pub grpc: Option<u32>,
}

impl Local {
    pub fn new(status: StatusCode, flags: &'static str, body: impl Into<String>) -> Self {
        Local {
            status,
            flags,
            body: body.into(),
            grpc: None,
        }
    }

    /// The reply as sent; gRPC callers get a trailers-only response with a gRPC status, as
    /// Envoy maps HTTP statuses for them.
    pub fn response(&self, grpc_request: bool) -> Response<Body> {
        if grpc_request {
            let code = self.grpc.unwrap_or_else(|| grpc_for_http(self.status));
            let mut r = Response::new(empty());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from(code));
            if let Ok(v) = HeaderValue::from_str(&self.body) {
                r.headers_mut().insert("grpc-message", v);
            }
            return r;
        }
        let mut r = Response::new(full(self.body.clone()));
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}

/// gRPC's mapping of HTTP statuses (as in grpc's http-grpc-status-mapping).
pub fn grpc_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

pub fn full(s: impl Into<Bytes>) -> Body {
    let s = s.into();
    if s.is_empty() {
        return empty();
    }
    Full::new(s).map_err(|never| match never {}).boxed()
}

/// A body of nothing; boxing it allocates nothing (most requests carry no body).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
