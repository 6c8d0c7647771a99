//! Endpoint choice per cluster (a host, subset and port): load balancing as DestinationRules
//! ask, outlier detection that ejects failing endpoints, and connection-pool limits that
//! turn overload into an immediate 503 rather than a queue.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Per-request lookups; keys come from config and endpoints, not from clients, so a fast
/// seeded hash is safe here.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lanyard_core::traffic::destination_rule::{ConnectionPool, OutlierDetection};
use lanyard_core::traffic::LoadBalancer;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterKey {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
}

/// A [`ClusterKey`] borrowed from a route, to find its cluster without copying the names.
/// Hashes as the key does (same fields, same order; `String` hashes as `str`).
#[derive(Clone, Copy, Debug, Hash)]
pub struct ClusterRef<'a> {
    pub host: &'a str,
    pub subset: Option<&'a str>,
    pub port: u16,
}

impl hashbrown::Equivalent<ClusterKey> for ClusterRef<'_> {
    fn equivalent(&self, k: &ClusterKey) -> bool {
        self.host == k.host && self.subset == k.subset.as_deref() && self.port == k.port
    }
}

impl ClusterRef<'_> {
    fn to_owned(self) -> ClusterKey {
        ClusterKey {
            host: self.host.to_string(),
            subset: self.subset.map(str::to_string),
            port: self.port,
        }
    }
}

#[derive(Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

pub struct Cluster {
    /// Envoy's cluster name, `outbound|<port>|<subset>|<host>`: the `destination_cluster`
    /// label and the access log's `upstream_cluster`.
    pub name: Box<str>,
    rr: AtomicUsize,
    limits: ConnectionPool,
    /// Requests allowed to run at once (None: unlimited).
    active: Option<Arc<Semaphore>>,
    /// Requests waiting for `active`, bounded by http1MaxPendingRequests.
    pending: AtomicUsize,
    health: Mutex<Map<SocketAddr, Health>>,
    in_flight: Mutex<Map<SocketAddr, Arc<AtomicUsize>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The pool limit was reached: Envoy's `UO` (upstream overflow).
#[derive(Debug)]
pub struct Overflow;

/// Holds a request's place in its cluster until dropped.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Counts a request as in flight to one endpoint (least-request balancing) until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an attempt at an endpoint came to, for outlier detection.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Status(u16),
    /// Could not connect, or the connection failed before a response: a gateway error.
    ConnectFailure,
}

#[derive(Default)]
pub struct Balancer {
    clusters: Mutex<hashbrown::HashMap<ClusterKey, Arc<Cluster>, foldhash::fast::RandomState>>,
}

// === impl Balancer ===

impl Balancer {
    /// The cluster's shared state, rebuilt when its pool limits change.
    pub fn cluster(&self, key: ClusterRef<'_>, limits: &ConnectionPool) -> Arc<Cluster> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clusters.get(&key).filter(|c| &c.limits == limits) {
            return c.clone();
        }
        let c = Arc::new(Cluster::new(key, limits.clone()));
        clusters.insert(key.to_owned(), c.clone());
        c
    }
}

// === impl Cluster ===

impl Cluster {
    fn new(key: ClusterRef<'_>, limits: ConnectionPool) -> Self {
        // HTTP/2 caps requests; HTTP/1 caps connections, each carrying one request at a time.
        let cap = limits.http2_max_requests.or(limits.max_connections);
        Cluster {
            name: format!(
                "outbound|{}|{}|{}",
                key.port,
                key.subset.unwrap_or_default(),
                key.host
            )
            .into(),
            rr: AtomicUsize::new(0),
            active: cap.map(|n| Arc::new(Semaphore::new(n as usize))),
            pending: AtomicUsize::new(0),
            limits,
            health: Mutex::new(Map::default()),
            in_flight: Mutex::new(Map::default()),
        }
    }

    /// Admits a request within the pool limits: past the running cap it may wait, as one of
    /// at most `http1MaxPendingRequests`; past that it overflows.
    pub async fn admit(&self) -> Result<Admission, Overflow> {
        let Some(sem) = &self.active else {
            return Ok(Admission { _permit: None });
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Admission { _permit: Some(p) });
        }
        let max_pending = self.limits.http1_max_pending.unwrap_or(u32::MAX) as usize;
        // HTTP/2 limits are on requests: nothing queues.
        if self.limits.http2_max_requests.is_some() && self.limits.max_connections.is_none() {
            return Err(Overflow);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        let permit = sem.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit
            .map(|p| Admission { _permit: Some(p) })
            .map_err(|_| Overflow)
    }

    /// Picks an endpoint among `candidates`, skipping ejected ones (unless all are: then all
    /// serve, as Envoy's panic threshold does) and `avoid` (a retry's previous choice) when
    /// there is another.
    pub fn pick(
        &self,
        candidates: &[SocketAddr],
        lb: &LoadBalancer,
        hash_key: Option<&str>,
        avoid: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        // The common case (nothing ever ejected, first attempt) chooses among the candidates
        // as they are, without copying them.
        let narrowed;
        let pool: &[SocketAddr] = {
            let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            let avoid = avoid.filter(|_| candidates.len() > 1);
            if health.is_empty() && avoid.is_none() {
                candidates
            } else {
                let now = Instant::now();
                let ejected = |a: &SocketAddr| {
                    health
                        .get(a)
                        .and_then(|h| h.ejected_until)
                        .is_some_and(|t| t > now)
                };
                let mut healthy: Vec<SocketAddr> =
                    candidates.iter().copied().filter(|a| !ejected(a)).collect();
                if healthy.is_empty() {
                    healthy = candidates.to_vec();
                }
                if healthy.len() > 1 {
                    if let Some(a) = avoid {
                        healthy.retain(|c| *c != a);
                    }
                }
                narrowed = healthy;
                &narrowed
            }
        };
        if pool.is_empty() {
            return None;
        }
        let i = match lb {
            LoadBalancer::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % pool.len(),
            LoadBalancer::Random => rand::rng().random_range(0..pool.len()),
            LoadBalancer::LeastRequest => {
                // Power of two choices, as Envoy's LEAST_REQUEST does.
                let mut rng = rand::rng();
                let (a, b) = (
                    rng.random_range(0..pool.len()),
                    rng.random_range(0..pool.len()),
                );
                if self.load(pool[b]) < self.load(pool[a]) {
                    b
                } else {
                    a
                }
            }
            LoadBalancer::ConsistentHash(_) => match hash_key {
                // Rendezvous hashing: stable for a key while the endpoint set allows.
                Some(key) => (0..pool.len())
                    .max_by_key(|&i| {
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        (key, pool[i]).hash(&mut h);
                        h.finish()
                    })
                    .unwrap_or(0),
                None => rand::rng().random_range(0..pool.len()),
            },
        };
        Some(pool[i])
    }

    fn load(&self, a: SocketAddr) -> usize {
        let m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&a).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn start(&self, a: SocketAddr) -> InFlight {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(a).or_default().clone();
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// Records an attempt's outcome; returns true when it ejected the endpoint.
    pub fn report(
        &self,
        a: SocketAddr,
        outcome: Outcome,
        od: Option<&OutlierDetection>,
        cluster_size: usize,
    ) -> bool {
        let Some(od) = od else { return false };
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ejected_now = health
            .values()
            .filter(|h| h.ejected_until.is_some_and(|t| t > now))
            .count();
        let h = health.entry(a).or_default();
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure => (true, true),
        };
        if !is_5xx {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return false;
        }
        h.consecutive_5xx += 1;
        if is_gateway {
            h.consecutive_gateway += 1;
        }
        let tripped = od.consecutive_5xx.is_some_and(|n| h.consecutive_5xx >= n)
            || od
                .consecutive_gateway
                .is_some_and(|n| h.consecutive_gateway >= n);
        let already = h.ejected_until.is_some_and(|t| t > now);
        // maxEjectionPercent bounds how much of the cluster may be out at once; as in Envoy,
        // one endpoint may always be ejected whatever the percentage.
        let room = ejected_now == 0
            || (ejected_now + 1) * 100 <= cluster_size * od.max_ejection_percent as usize;
        if tripped && !already && room {
            h.ejections += 1;
            h.ejected_until = Some(now + od.base_ejection * h.ejections);
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::traffic::destination_rule::HashOn;
    use std::time::Duration;

    fn key() -> ClusterRef<'static> {
        ClusterRef {
            host: "backend.demo.svc.cluster.local",
            subset: Some("v1"),
            port: 80,
        }
    }

    /// The borrowed key finds the cluster its owned copy was stored under (they hash alike),
    /// and only that one.
    #[test]
    fn a_cluster_is_found_again_by_its_borrowed_key() {
        let b = Balancer::default();
        let limits = ConnectionPool::default();
        let first = b.cluster(key(), &limits);
        assert!(Arc::ptr_eq(&first, &b.cluster(key(), &limits)));
        let others = [
            ClusterRef {
                subset: None,
                ..key()
            },
            ClusterRef {
                subset: Some("v2"),
                ..key()
            },
            ClusterRef { port: 81, ..key() },
            ClusterRef {
                host: "backend",
                ..key()
            },
        ];
        for other in others {
            let c = b.cluster(other, &limits);
            assert!(!Arc::ptr_eq(&first, &c), "{other:?}");
            assert!(Arc::ptr_eq(&c, &b.cluster(other, &limits)), "{other:?}");
        }
        assert!(Arc::ptr_eq(&first, &b.cluster(key(), &limits)));
        assert_eq!(
            &*first.name,
            "outbound|80|v1|backend.demo.svc.cluster.local"
        );
    }

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    fn od(n: u32, max_pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Some(n),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: max_pct,
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let c = Cluster::new(key(), ConnectionPool::default());
        let a = addrs(3);
        let mut seen = HashMap::new();
        for _ in 0..300 {
            *seen
                .entry(c.pick(&a, &LoadBalancer::RoundRobin, None, None).unwrap())
                .or_insert(0) += 1;
        }
        assert!(seen.values().all(|n| *n == 100), "{seen:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_per_key_and_spreads_keys() {
        let c = Cluster::new(key(), ConnectionPool::default());
        let a = addrs(4);
        let lb = LoadBalancer::ConsistentHash(HashOn::Header("x-user".into()));
        let first = c.pick(&a, &lb, Some("alice"), None);
        for _ in 0..20 {
            assert_eq!(c.pick(&a, &lb, Some("alice"), None), first);
        }
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|i| c.pick(&a, &lb, Some(&format!("user{i}")), None))
            .collect();
        assert!(spread.len() >= 3, "keys spread over endpoints: {spread:?}");
    }

    #[test]
    fn consecutive_5xx_eject_within_max_percent_and_a_success_resets() {
        let c = Cluster::new(key(), ConnectionPool::default());
        let a = addrs(2);
        let od = od(2, 10);
        assert!(!c.report(a[0], Outcome::Status(503), Some(&od), 2));
        assert!(
            !c.report(a[0], Outcome::Status(200), Some(&od), 2),
            "success resets the count"
        );
        assert!(!c.report(a[0], Outcome::Status(500), Some(&od), 2));
        assert!(
            c.report(a[0], Outcome::Status(502), Some(&od), 2),
            "one endpoint may always go, whatever the percentage"
        );
        for _ in 0..10 {
            assert_eq!(
                c.pick(&a, &LoadBalancer::RoundRobin, None, None),
                Some(a[1])
            );
        }
        // 10% of 2 endpoints: the second may not be ejected too.
        c.report(a[1], Outcome::ConnectFailure, Some(&od), 2);
        assert!(!c.report(a[1], Outcome::ConnectFailure, Some(&od), 2));
    }

    #[test]
    fn all_ejected_means_all_serve_and_retries_avoid_the_last_choice() {
        let c = Cluster::new(key(), ConnectionPool::default());
        let a = addrs(1);
        c.report(a[0], Outcome::Status(503), Some(&od(1, 100)), 1);
        assert_eq!(
            c.pick(&a, &LoadBalancer::Random, None, None),
            Some(a[0]),
            "panic mode"
        );
        let two = addrs(2);
        for _ in 0..10 {
            assert_eq!(
                c.pick(&two, &LoadBalancer::Random, None, Some(two[0])),
                Some(two[1])
            );
        }
    }

    #[tokio::test]
    async fn pool_limits_queue_then_overflow() {
        let c = Arc::new(Cluster::new(
            key(),
            ConnectionPool {
                max_connections: Some(1),
                http1_max_pending: Some(1),
                ..Default::default()
            },
        ));
        let running = c.admit().await.unwrap();
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.admit().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            c.admit().await.is_err(),
            "one running and one pending: the third overflows"
        );
        drop(running);
        assert!(
            waiting.await.unwrap().is_ok(),
            "the pending one runs once there is room"
        );
    }
}
