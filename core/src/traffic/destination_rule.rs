//! A DestinationRule in the form a waypoint applies it: subsets by labels, and the traffic
//! policy (load balancing, connection pool limits, outlier detection), with subset-level
//! policy layered over the top-level one field by field, as Istio merges them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::host::Host;
use super::wire::{DestinationRuleSpec, TrafficPolicyWire};
use super::{duration_field, Invalid};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
    QueryParam(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash(HashOn),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub pool: ConnectionPool,
    pub outlier: Option<OutlierDetection>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Already merged over the rule's top-level policy.
    pub policy: TrafficPolicy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub host: Host,
    pub policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
    pub warnings: Vec<String>,
}

// === impl DestinationRule ===

impl DestinationRule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    pub fn validate(
        namespace: &str,
        name: &str,
        spec: &DestinationRuleSpec,
        cluster_domain: &str,
    ) -> Result<Self, Invalid> {
        if spec.host.is_empty() {
            return Err(("spec.host".into(), "is required".into()));
        }
        let mut warnings = Vec::new();
        if spec.workload_selector.is_some() {
            warnings.push("spec.workloadSelector: ignored (applies to sidecars only)".into());
        }
        let policy = match &spec.traffic_policy {
            Some(p) => traffic_policy(
                "spec.trafficPolicy",
                p,
                &TrafficPolicy::default(),
                &mut warnings,
            )?,
            None => TrafficPolicy::default(),
        };
        let mut subsets = Vec::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            let f = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                return Err((format!("{f}.name"), "is required".into()));
            }
            if subsets.iter().any(|o: &Subset| o.name == s.name) {
                return Err((
                    format!("{f}.name"),
                    format!("subset {:?} is defined twice", s.name),
                ));
            }
            let sp = match &s.traffic_policy {
                Some(p) => {
                    traffic_policy(&format!("{f}.trafficPolicy"), p, &policy, &mut warnings)?
                }
                None => policy.clone(),
            };
            subsets.push(Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy: sp,
            });
        }
        Ok(DestinationRule {
            namespace: namespace.to_string(),
            name: name.to_string(),
            host: Host::resolve(&spec.host, namespace, cluster_domain),
            policy,
            subsets,
            warnings,
        })
    }
}

fn count(field: &str, v: Option<i64>) -> Result<Option<u32>, Invalid> {
    v.map(|n| {
        u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| (field.to_string(), format!("{n} must be a positive number")))
    })
    .transpose()
}

/// Reads a traffic policy; fields it leaves out come from `base` (the rule's top level).
fn traffic_policy(
    f: &str,
    w: &TrafficPolicyWire,
    base: &TrafficPolicy,
    warnings: &mut Vec<String>,
) -> Result<TrafficPolicy, Invalid> {
    let mut out = base.clone();
    for (name, set) in [
        ("tls", w.tls.is_some()),
        ("portLevelSettings", w.port_level_settings.is_some()),
        ("tunnel", w.tunnel.is_some()),
        ("proxyProtocol", w.proxy_protocol.is_some()),
        ("retryBudget", w.retry_budget.is_some()),
    ] {
        if set {
            warnings.push(format!("{f}.{name}: not supported, ignored"));
        }
    }
    if let Some(lb) = &w.load_balancer {
        let lf = format!("{f}.loadBalancer");
        out.load_balancer = Some(match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => {
                return Err((
                    lf,
                    "only one of simple and consistentHash may be set".into(),
                ))
            }
            (Some(s), None) => match s.as_str() {
                "ROUND_ROBIN" | "UNSPECIFIED" => LoadBalancer::RoundRobin,
                "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
                "RANDOM" => LoadBalancer::Random,
                "PASSTHROUGH" => {
                    return Err((
                        format!("{lf}.simple"),
                        "PASSTHROUGH is not supported".into(),
                    ))
                }
                other => {
                    return Err((
                        format!("{lf}.simple"),
                        format!("{other:?} is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM"),
                    ))
                }
            },
            (None, Some(ch)) => {
                let hf = format!("{lf}.consistentHash");
                let on = match (
                    &ch.http_header_name,
                    &ch.http_cookie,
                    ch.use_source_ip.unwrap_or(false),
                    &ch.http_query_parameter_name,
                ) {
                    (Some(h), None, false, None) => HashOn::Header(h.to_ascii_lowercase()),
                    (None, Some(c), false, None) => HashOn::Cookie(c.name.clone()),
                    (None, None, true, None) => HashOn::SourceIp,
                    (None, None, false, Some(q)) => HashOn::QueryParam(q.clone()),
                    _ => {
                        return Err((
                            hf,
                            "exactly one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName is required".into(),
                        ))
                    }
                };
                LoadBalancer::ConsistentHash(on)
            }
            (None, None) => LoadBalancer::RoundRobin,
        });
        if lb.locality_lb_setting.is_some() {
            warnings.push(format!("{lf}.localityLbSetting: not supported, ignored"));
        }
    }
    if let Some(cp) = &w.connection_pool {
        let pf = format!("{f}.connectionPool");
        if let Some(tcp) = &cp.tcp {
            if let Some(n) = count(&format!("{pf}.tcp.maxConnections"), tcp.max_connections)? {
                out.pool.max_connections = Some(n);
            }
            if let Some(d) =
                duration_field(&format!("{pf}.tcp.connectTimeout"), &tcp.connect_timeout)?
            {
                out.pool.connect_timeout = Some(d);
            }
        }
        if let Some(h) = &cp.http {
            let hf = format!("{pf}.http");
            let fields = [
                (
                    "http1MaxPendingRequests",
                    h.http1_max_pending_requests,
                    &mut out.pool.http1_max_pending,
                ),
                (
                    "http2MaxRequests",
                    h.http2_max_requests,
                    &mut out.pool.http2_max_requests,
                ),
                (
                    "maxRequestsPerConnection",
                    h.max_requests_per_connection,
                    &mut out.pool.max_requests_per_connection,
                ),
                ("maxRetries", h.max_retries, &mut out.pool.max_retries),
            ];
            for (name, v, slot) in fields {
                if let Some(n) = count(&format!("{hf}.{name}"), v)? {
                    *slot = Some(n);
                }
            }
        }
    }
    if let Some(od) = &w.outlier_detection {
        let of = format!("{f}.outlierDetection");
        let five = count(
            &format!("{of}.consecutive5xxErrors"),
            od.consecutive_5xx_errors.or(od.consecutive_errors),
        )?;
        let gw = count(
            &format!("{of}.consecutiveGatewayErrors"),
            od.consecutive_gateway_errors,
        )?;
        let pct = od.max_ejection_percent.unwrap_or(10);
        if !(0..=100).contains(&pct) {
            return Err((
                format!("{of}.maxEjectionPercent"),
                format!("{pct} is not a percentage (0-100)"),
            ));
        }
        out.outlier = Some(OutlierDetection {
            // Envoy's default when neither threshold is given: 5 consecutive 5xx.
            consecutive_5xx: if five.is_none() && gw.is_none() {
                Some(5)
            } else {
                five
            },
            consecutive_gateway: gw,
            interval: duration_field(&format!("{of}.interval"), &od.interval)?
                .unwrap_or(Duration::from_secs(10)),
            base_ejection: duration_field(
                &format!("{of}.baseEjectionTime"),
                &od.base_ejection_time,
            )?
            .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: pct as u32,
        });
    }
    Ok(out)
}
