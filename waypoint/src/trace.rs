//! Trace context: the waypoint joins the caller's trace (W3C `traceparent`, or B3 in its
//! multi-header or single `b3` form), or starts one, as one span of its own, and forwards
//! the context with that span as the parent. Only done when spans are exported; otherwise
//! trace headers pass through untouched.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use rand::Rng;

use crate::route::chance;

/// The waypoint's span of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried a context.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub start_unix_nanos: u64,
}

/// How the waypoint takes part in traces.
#[derive(Debug, Clone, Copy)]
pub struct Tracing {
    /// Share of new traces (requests without a sampling decision) that are recorded, in
    /// percent, as Istio's `sampling`.
    pub sampling_percent: f64,
}

/// What a request's headers said.
#[derive(Debug, PartialEq, Eq)]
struct Incoming {
    trace_id: [u8; 16],
    parent: [u8; 8],
    /// None: the caller left the decision to us.
    sampled: Option<bool>,
    b3: B3,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum B3 {
    None,
    Multi,
    Single,
}

// === impl Tracing ===

impl Tracing {
    /// This request's span: a child of the caller's, or the root of a new trace. The
    /// headers are rewritten so that the next hop's parent is this span.
    pub fn start(&self, headers: &mut HeaderMap) -> SpanContext {
        let mut rng = rand::rng();
        let (trace_id, parent, sampled, b3) = match parse(headers) {
            Some(i) => (i.trace_id, Some(i.parent), i.sampled, i.b3),
            None => (nonzero(&mut rng), None, None, B3::None),
        };
        let sampled = sampled.unwrap_or_else(|| chance(self.sampling_percent / 100.0));
        let ctx = SpanContext {
            trace_id,
            span_id: nonzero(&mut rng),
            parent,
            sampled,
            start_unix_nanos: if sampled { unix_nanos() } else { 0 },
        };
        propagate(headers, &ctx, b3);
        ctx
    }
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn nonzero<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let b: [u8; N] = rng.random();
        if b.iter().any(|&x| x != 0) {
            return b;
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Hex of exactly `N` bytes, not all zero (both formats call all-zero ids invalid).
fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    out.iter().any(|&x| x != 0).then_some(out)
}

/// A B3 trace id is 64 or 128 bits; a 64-bit one is the low half of a W3C id.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    if s.len() == 16 {
        let low: [u8; 8] = hex_id(s)?;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&low);
        Some(id)
    } else {
        hex_id(s)
    }
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `traceparent` first (version 00 layout; later versions may append fields), then B3.
fn parse(h: &HeaderMap) -> Option<Incoming> {
    if let Some(tp) = header(h, "traceparent") {
        let mut parts = tp.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid_version = version.len() == 2 && version != "ff";
        if valid_version && (version != "00" || parts.next().is_none()) {
            if let (Some(trace_id), Some(parent), Ok(flags)) =
                (hex_id(trace), hex_id(parent), u8::from_str_radix(flags, 16))
            {
                let b3 = if h.contains_key("x-b3-traceid") {
                    B3::Multi
                } else if h.contains_key("b3") {
                    B3::Single
                } else {
                    B3::None
                };
                return Some(Incoming {
                    trace_id,
                    parent,
                    sampled: Some(flags & 1 == 1),
                    b3,
                });
            }
        }
    }
    if let (Some(trace), Some(span)) = (header(h, "x-b3-traceid"), header(h, "x-b3-spanid")) {
        let sampled = match header(h, "x-b3-flags") {
            Some("1") => Some(true),
            _ => header(h, "x-b3-sampled").and_then(b3_sampled),
        };
        return Some(Incoming {
            trace_id: b3_trace_id(trace)?,
            parent: hex_id(span)?,
            sampled,
            b3: B3::Multi,
        });
    }
    // b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]
    let single = header(h, "b3")?;
    let mut parts = single.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    Some(Incoming {
        trace_id: b3_trace_id(trace)?,
        parent: hex_id(span)?,
        sampled: parts.next().and_then(b3_sampled),
        b3: B3::Single,
    })
}

fn hex(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("hex and dashes are valid header text")
}

/// The next hop continues from `ctx`; B3 headers are kept in the form the caller used, so
/// that apps which only read B3 see the same trace.
fn propagate(h: &mut HeaderMap, ctx: &SpanContext, b3: B3) {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    hex(&ctx.trace_id, &mut s);
    s.push('-');
    hex(&ctx.span_id, &mut s);
    s.push_str(if ctx.sampled { "-01" } else { "-00" });
    h.insert("traceparent", value(&s));
    let sampled = if ctx.sampled { "1" } else { "0" };
    match b3 {
        B3::None => {}
        B3::Multi => {
            let (mut span, mut parent) = (String::new(), String::new());
            hex(&ctx.span_id, &mut span);
            h.insert("x-b3-spanid", value(&span));
            if let Some(p) = ctx.parent {
                hex(&p, &mut parent);
                h.insert("x-b3-parentspanid", value(&parent));
            }
            h.insert("x-b3-sampled", HeaderValue::from_static(sampled));
            h.remove("x-b3-flags");
        }
        B3::Single => {
            let mut v = String::new();
            hex(&ctx.trace_id, &mut v);
            v.push('-');
            hex(&ctx.span_id, &mut v);
            v.push('-');
            v.push_str(sampled);
            if let Some(p) = ctx.parent {
                v.push('-');
                hex(&p, &mut v);
            }
            h.insert("b3", value(&v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn tracing(percent: f64) -> Tracing {
        Tracing {
            sampling_percent: percent,
        }
    }

    fn hexs(b: &[u8]) -> String {
        let mut s = String::new();
        hex(b, &mut s);
        s
    }

    #[test]
    fn a_traceparent_is_continued_with_the_waypoint_span_as_parent() {
        let tp = format!("00-{TRACE}-{PARENT}-01");
        let mut h = headers(&[("traceparent", &tp), ("tracestate", "vendor=x")]);
        let ctx = tracing(0.0).start(&mut h);
        assert_eq!(hexs(&ctx.trace_id), TRACE);
        assert_eq!(hexs(&ctx.parent.unwrap()), PARENT);
        assert!(ctx.sampled, "the caller's decision wins over 0 % sampling");
        assert!(ctx.start_unix_nanos > 0);
        let out = format!("00-{TRACE}-{}-01", hexs(&ctx.span_id));
        assert_eq!(h["traceparent"], out.as_str());
        assert_eq!(h["tracestate"], "vendor=x", "tracestate passes unchanged");
    }

    #[test]
    fn an_unsampled_caller_is_not_recorded_but_still_propagated() {
        let tp = format!("00-{TRACE}-{PARENT}-00");
        let mut h = headers(&[("traceparent", &tp)]);
        let ctx = tracing(100.0).start(&mut h);
        assert!(!ctx.sampled);
        assert_eq!(ctx.start_unix_nanos, 0);
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            format!("00-{TRACE}-{PARENT}"),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("00-{}-{PARENT}-01", &TRACE[..30]),
            format!("00-{TRACE}-zzf067aa0ba902b7-01"),
        ] {
            let mut h = headers(&[("traceparent", &bad)]);
            let ctx = tracing(100.0).start(&mut h);
            assert_eq!(ctx.parent, None, "{bad}");
            assert_ne!(hexs(&ctx.trace_id), TRACE, "{bad}");
            assert!(ctx.sampled, "{bad}: new traces follow the sampling rate");
        }
        // A later version may carry more fields after the four it shares with 00.
        let mut h = headers(&[("traceparent", &format!("01-{TRACE}-{PARENT}-01-more"))]);
        assert_eq!(hexs(&tracing(0.0).start(&mut h).trace_id), TRACE);
    }

    #[test]
    fn new_traces_follow_the_sampling_percentage() {
        let never = (0..200)
            .filter(|_| tracing(0.0).start(&mut HeaderMap::new()).sampled)
            .count();
        let always = (0..200)
            .filter(|_| tracing(100.0).start(&mut HeaderMap::new()).sampled)
            .count();
        let half = (0..2000)
            .filter(|_| tracing(50.0).start(&mut HeaderMap::new()).sampled)
            .count();
        assert_eq!((never, always), (0, 200));
        assert!((800..1200).contains(&half), "{half} of 2000 at 50 %");
    }

    #[test]
    fn multi_header_b3_is_continued_in_both_forms() {
        let mut h = headers(&[
            ("x-b3-traceid", &TRACE[16..]),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ]);
        let ctx = tracing(0.0).start(&mut h);
        assert_eq!(
            hexs(&ctx.trace_id),
            format!("{}{}", "0".repeat(16), &TRACE[16..])
        );
        assert!(ctx.sampled);
        let span = hexs(&ctx.span_id);
        assert_eq!(h["x-b3-spanid"], span.as_str());
        assert_eq!(h["x-b3-parentspanid"], PARENT);
        assert_eq!(
            h["x-b3-traceid"],
            &TRACE[16..],
            "the caller's id form is kept"
        );
        assert_eq!(
            h["traceparent"],
            format!("00-{}-{span}-01", hexs(&ctx.trace_id)).as_str()
        );

        // No sampling state: the waypoint decides.
        let mut h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]);
        assert!(!tracing(0.0).start(&mut h).sampled);
        assert_eq!(h["x-b3-sampled"], "0");
        // Debug flag means sampled.
        let mut h = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
        ]);
        assert!(tracing(0.0).start(&mut h).sampled);
    }

    #[test]
    fn single_header_b3_is_rewritten_with_the_waypoint_span() {
        let mut h = headers(&[("b3", &format!("{TRACE}-{PARENT}-1"))]);
        let ctx = tracing(0.0).start(&mut h);
        assert_eq!(hexs(&ctx.trace_id), TRACE);
        assert_eq!(
            h["b3"],
            format!("{TRACE}-{}-1-{PARENT}", hexs(&ctx.span_id)).as_str()
        );
        // A bad single header is ignored.
        let mut h = headers(&[("b3", "nonsense")]);
        assert_eq!(tracing(0.0).start(&mut h).parent, None);
        assert!(h.get("traceparent").is_some());
    }
}
