//! Traffic management: `networking.istio.io` VirtualService and DestinationRule, validated
//! into the form a waypoint routes with. Matching a request against them lives here too, so
//! that `lanyardctl` and the waypoint agree on what a route means.

pub mod destination_rule;
pub mod host;
pub mod virtual_service;
pub mod wire;

use std::time::Duration;

pub use destination_rule::{DestinationRule, LoadBalancer, TrafficPolicy};
pub use virtual_service::{HttpRoute, RouteAction, StrMatch, VirtualService};

/// A validation failure: the field path (under the object) and what is wrong.
pub type Invalid = (String, String);

/// Parses a duration as Istio's CRDs accept it: Go style (`1h2m3.5s`, `250ms`, `10us`),
/// which includes protobuf JSON's `1.5s`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let mut rest = raw.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Reads a duration field, naming it when it is malformed.
pub(crate) fn duration_field(
    field: &str,
    raw: &Option<String>,
) -> Result<Option<Duration>, Invalid> {
    match raw {
        None => Ok(None),
        Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
            (
                field.to_string(),
                format!("{s:?} is not a duration (e.g. \"1.5s\", \"250ms\")"),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
