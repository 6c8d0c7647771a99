//! A workload's certificate, key and trust roots, with the rustls configurations built from
//! them once (not per connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{provider, verify::ExpectedIdentity, Error, ALPN_H2};
use crate::identity::Identity;

/// SPIFFE workload identities in a certificate's URI SANs.
pub fn identities_in(der: &[u8]) -> Result<Vec<Identity>, Error> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Ok(id) = uri.parse::<Identity>() {
                    out.push(id);
                }
            }
        }
    }
    Ok(out)
}

fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), Error> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
    let v = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first; intermediates follow; the root is not included.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Arc<RootCertStore>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    key: PrivatePkcs8KeyDer<'static>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<Identity, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

// === impl WorkloadCert ===

impl WorkloadCert {
    /// `chain` is what a CA returned (leaf first, root last); `trust_roots` are the roots
    /// this node trusts. The root in the chain is dropped from what we present.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        trust_roots: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, Error> {
        let leaf = chain.first().ok_or(Error::EmptyChain)?;
        let identity = identities_in(leaf)?
            .into_iter()
            .next()
            .ok_or(Error::NoIdentity)?;
        let (not_before, not_after) = validity(leaf)?;
        let mut roots = RootCertStore::empty();
        for r in &trust_roots {
            roots
                .add(r.clone())
                .map_err(|e| Error::BadCertificate(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let presented: Vec<_> = chain
            .iter()
            .filter(|c| !trust_roots.contains(c))
            .cloned()
            .collect();
        let key = PrivatePkcs8KeyDer::from(key_pkcs8);

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| Error::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(presented.clone(), PrivateKeyDer::Pkcs8(key.clone_key()))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        // HBONE connections are long-lived and pooled; tickets only cost memory here.
        server.send_tls13_tickets = 0;

        Ok(Self {
            identity,
            chain: presented,
            roots,
            not_before,
            not_after,
            key,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that presents this certificate and accepts only a server
    /// proving `expected`. Cached per expected identity.
    pub fn client_config(&self, expected: &Identity) -> Result<Arc<ClientConfig>, Error> {
        // The lock is never held across an await, and only guards a small map.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(expected) {
            return Ok(c.clone());
        }
        let verifier = ExpectedIdentity::new(self.roots.clone(), vec![expected.clone()]);
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        clients.insert(expected.clone(), config.clone());
        Ok(config)
    }

    /// When to fetch a new certificate: half-way through its life.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn is_expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}
