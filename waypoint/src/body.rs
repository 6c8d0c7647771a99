//! The body a client receives: an endpoint's response, or one the waypoint made, counted as
//! it is sent so that the request is recorded when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use hyper::body::{Frame, SizeHint};

use crate::forward::grpc_status;
use crate::metrics::{Metrics, RequestRecord};
use crate::pool::PooledBody;
use crate::upstream::{Body, BoxError};

/// A response body, not boxed: an endpoint's (the common case) is served as it is, where a
/// `BoxBody` cost one allocation per request.
pub enum ResponseBody {
    Upstream(PooledBody),
    /// Made here (local replies, redirects, the `101` of an upgrade) or otherwise boxed.
    Local(Body),
}

// === impl ResponseBody ===

impl From<Body> for ResponseBody {
    fn from(b: Body) -> Self {
        Self::Local(b)
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
            Self::Local(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Local(b) => b.size_hint(),
        }
    }
}

/// Wraps a response body so that the request is counted and logged when the body ends (or
/// the client goes away), with the bytes actually sent.
pub fn record_on_finish(
    resp: Response<ResponseBody>,
    metrics: Arc<Metrics>,
    rec: RequestRecord,
    start: Instant,
) -> Response<Recorded> {
    resp.map(|inner| Recorded {
        inner,
        bytes: 0,
        done: Some(Box::new(Done {
            metrics,
            rec,
            start,
        })),
    })
}

/// The body a client receives: the response's, counted. Served as it is, not boxed again.
pub struct Recorded {
    inner: ResponseBody,
    bytes: u64,
    /// Boxed: hyper moves the response several times on its way out, and the record is
    /// most of its size (unboxed, a `memmove` census showed about 1.3 KiB more copied per
    /// request).
    done: Option<Box<Done>>,
}

/// What is recorded when the body ends.
struct Done {
    metrics: Arc<Metrics>,
    rec: RequestRecord,
    start: Instant,
}

// === impl Recorded ===

impl Recorded {
    /// A body that records nothing (an h2c upgrade's `101`: its requests record themselves).
    pub fn unrecorded(inner: Body) -> Self {
        Self {
            inner: inner.into(),
            bytes: 0,
            done: None,
        }
    }
}

impl hyper::body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                self.bytes += d.len() as u64;
            } else if let Some(t) = f.trailers_ref() {
                // gRPC's status usually arrives in trailers.
                if let (Some(s), Some(done)) = (grpc_status(t), self.done.as_mut()) {
                    done.rec.grpc_status = Some(s);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let Done {
                metrics,
                mut rec,
                start,
            } = *done;
            rec.response_bytes = self.bytes;
            rec.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            metrics.record(rec);
        }
    }
}
