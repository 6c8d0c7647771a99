//! Workload certificates on a node: one per identity in use, fetched on first demand, cached,
//! renewed at half-life (with jitter) and retried with capped exponential backoff. Private
//! keys are generated here and never leave the process. While the CA is unreachable, a
//! cached certificate that is still valid keeps being served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::ca::{self, CertificateProvider};
use crate::identity::Identity;
use crate::tls::{self, WorkloadCert};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("no certificate for {identity} yet: {reason}")]
    Unavailable {
        identity: Identity,
        reason: Arc<str>,
    },
}

#[derive(Clone, Debug)]
pub struct SecretConfig {
    pub validity: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a caller waits for a first certificate before giving up.
    pub fetch_timeout: Duration,
}

impl Default for SecretConfig {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Default)]
struct Slot {
    cert: Option<Arc<WorkloadCert>>,
    last_error: Option<Arc<str>>,
}

struct Worker {
    rx: watch::Receiver<Slot>,
    task: AbortHandle,
}

/// What `/certs` shows for one identity.
#[derive(Debug, Clone)]
pub struct CertStatus {
    pub identity: Identity,
    pub cert: Option<Arc<WorkloadCert>>,
    pub last_error: Option<Arc<str>>,
}

pub struct SecretManager<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for SecretManager<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P> {
    provider: P,
    roots: Vec<CertificateDer<'static>>,
    config: SecretConfig,
    workers: Mutex<HashMap<Identity, Worker>>,
}

impl<P> Drop for Inner<P> {
    fn drop(&mut self) {
        let workers = self.workers.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in workers.values() {
            w.task.abort();
        }
    }
}

// === impl SecretManager ===

impl<P: CertificateProvider> SecretManager<P> {
    /// `roots` are the mesh trust anchors peers are checked against.
    pub fn new(provider: P, roots: Vec<CertificateDer<'static>>, config: SecretConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                roots,
                config,
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The current certificate for `identity`, waiting for the first one if needed.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        let mut rx = self.worker(identity);
        let usable = |s: &Slot| s.cert.as_ref().is_some_and(|c| !c.is_expired());
        let waited = tokio::time::timeout(self.inner.config.fetch_timeout, async {
            rx.wait_for(usable).await.map(|s| s.clone()).ok()
        })
        .await;
        match waited {
            Ok(Some(Slot {
                cert: Some(cert), ..
            })) => Ok(cert),
            _ => Err(Error::Unavailable {
                identity: identity.clone(),
                reason: rx
                    .borrow()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "timed out waiting for the CA".into()),
            }),
        }
    }

    /// Starts fetching without waiting (e.g. when a pod is enrolled).
    pub fn prefetch(&self, identity: &Identity) {
        self.worker(identity);
    }

    /// Stops renewing `identity`: no local workload uses it any more.
    pub fn forget(&self, identity: &Identity) {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = workers.remove(identity) {
            w.task.abort();
        }
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = workers
            .iter()
            .map(|(id, w)| {
                let slot = w.rx.borrow();
                CertStatus {
                    identity: id.clone(),
                    cert: slot.cert.clone(),
                    last_error: slot.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    fn worker(&self, identity: &Identity) -> watch::Receiver<Slot> {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = workers.get(identity) {
            return w.rx.clone();
        }
        let (tx, rx) = watch::channel(Slot::default());
        // The task holds a weak reference so that dropping the manager stops it.
        let inner = Arc::downgrade(&self.inner);
        let id = identity.clone();
        let task = tokio::spawn(async move { refresh_loop(inner, id, tx).await }).abort_handle();
        workers.insert(
            identity.clone(),
            Worker {
                rx: rx.clone(),
                task,
            },
        );
        rx
    }
}

async fn refresh_loop<P: CertificateProvider>(
    inner: std::sync::Weak<Inner<P>>,
    id: Identity,
    tx: watch::Sender<Slot>,
) {
    let mut backoff = None::<Duration>;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let result = request(&strong, &id).await;
        let (initial, max) = (strong.config.initial_backoff, strong.config.max_backoff);
        drop(strong);
        let wait = match result {
            Ok(cert) => {
                info!(target: "secrets", identity = %id, expires = ?cert.not_after, "certificate issued");
                let refresh = jittered_refresh(&cert);
                tx.send_modify(|s| {
                    s.cert = Some(cert);
                    s.last_error = None;
                });
                backoff = None;
                refresh
            }
            Err(e) => {
                let next = backoff.map_or(initial, |b| (b * 2).min(max));
                backoff = Some(next);
                let cached = tx.borrow().cert.as_ref().is_some_and(|c| !c.is_expired());
                warn!(target: "secrets", identity = %id, retry_in = ?next, serving_cached = cached, "certificate request failed: {e}");
                tx.send_modify(|s| s.last_error = Some(e.to_string().into()));
                next.mul_f64(rand::rng().random_range(0.8..1.2))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn jittered_refresh(cert: &WorkloadCert) -> Duration {
    let life = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    // Up to 10% of the lifetime early, so that identities issued together do not renew together.
    let jitter = life.mul_f64(rand::rng().random_range(0.0..0.1));
    let at = cert.refresh_at() - jitter;
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::from_millis(100))
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Ca(#[from] ca::Error),
    #[error("CA returned an unusable certificate: {0}")]
    Tls(#[from] tls::Error),
    #[error("CA returned a certificate that is not PEM")]
    Pem,
    #[error("CA issued {got} when {want} was asked for")]
    WrongIdentity { got: Identity, want: Identity },
}

async fn request<P: CertificateProvider>(
    inner: &Inner<P>,
    id: &Identity,
) -> Result<Arc<WorkloadCert>, RequestError> {
    let (csr, key) = ca::csr_for(id)?;
    let chain_pem = inner
        .provider
        .create_certificate(id, csr, inner.config.validity)
        .await?;
    let chain = chain_pem
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).map(|c| c.into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| RequestError::Pem)?;
    let cert = WorkloadCert::new(chain, inner.roots.clone(), key)?;
    if &cert.identity != id {
        return Err(RequestError::WrongIdentity {
            got: cert.identity.clone(),
            want: id.clone(),
        });
    }
    Ok(Arc::new(cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct FakeCa {
        authority: Authority,
        calls: AtomicUsize,
        down: AtomicBool,
        ttl: Duration,
    }

    impl CertificateProvider for Arc<FakeCa> {
        async fn create_certificate(
            &self,
            id: &Identity,
            csr: String,
            _v: Duration,
        ) -> Result<Vec<String>, ca::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(ca::Error::Unreachable("fake CA is down".into()));
            }
            self.authority.sign(&csr, id, self.ttl)
        }
    }

    fn setup(ttl: Duration) -> (Arc<FakeCa>, SecretManager<Arc<FakeCa>>) {
        let authority = Authority::generate("cluster.local").unwrap();
        let root = CertificateDer::from_pem_slice(authority.root_pem().as_bytes())
            .unwrap()
            .into_owned();
        let ca = Arc::new(FakeCa {
            authority,
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            ttl,
        });
        let config = SecretConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            fetch_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        (ca.clone(), SecretManager::new(ca, vec![root], config))
    }

    fn id() -> Identity {
        "spiffe://cluster.local/ns/demo/sa/app".parse().unwrap()
    }

    #[tokio::test]
    async fn fetches_once_and_caches() {
        let (ca, mgr) = setup(Duration::from_secs(3600));
        let a = mgr.fetch(&id()).await.unwrap();
        let b = mgr.fetch(&id()).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.identity, id());
        assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn renews_before_expiry() {
        // The fake CA backdates by 60 s, so a 62 s certificate is past half-life at once:
        // the worker must renew it right away, and keep doing so.
        let (ca, mgr) = setup(Duration::from_secs(62));
        let first = mgr.fetch(&id()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ca.calls.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ca.calls.load(Ordering::SeqCst) >= 3, "expected renewals");
        let later = mgr.fetch(&id()).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
    }

    #[tokio::test]
    async fn serves_cached_cert_while_ca_is_down() {
        let (ca, mgr) = setup(Duration::from_secs(62));
        mgr.fetch(&id()).await.unwrap();
        ca.down.store(true, Ordering::SeqCst);
        // Wait (bounded) for a renewal to have failed: a fixed sleep flaked on a loaded machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while mgr.status()[0].last_error.is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cert = mgr.fetch(&id()).await.unwrap();
        assert!(!cert.is_expired());
        let status = mgr.status();
        assert!(status[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("fake CA is down"));
        // A new identity cannot be had while the CA is down, and says why.
        let other: Identity = "spiffe://cluster.local/ns/demo/sa/other".parse().unwrap();
        let err = mgr.fetch(&other).await.unwrap_err().to_string();
        assert!(err.contains("fake CA is down"), "{err}");
    }
}
