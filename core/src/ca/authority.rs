//! A certificate authority's signing half: a root (generated or loaded) and leaf issuance.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use super::Error;
use crate::identity::Identity;

/// How far back leaf validity starts, so that small clock skew between nodes is harmless.
const BACKDATE: Duration = Duration::from_secs(60);

pub struct Authority {
    root_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn crypto(e: rcgen::Error) -> Error {
    Error::Crypto(e.to_string())
}

// === impl Authority ===

impl Authority {
    /// A new self-signed root (ECDSA P-256, 10 years) for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Lanyard mesh root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(crypto)?;
        let root_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem,
            key_pem,
        })
    }

    /// A root provided by the operator (or persisted by an earlier start).
    pub fn from_pem(root_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::BadRoot(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(root_pem, key)
            .map_err(|e| Error::BadRoot(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            root_pem: root_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn leaf_params(sans: Vec<SanType>, ttl: Duration) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        Ok(params)
    }

    /// Signs `csr_pem` for `identity`. Only the CSR's public key is used: the SAN is the one
    /// the caller is entitled to, whatever the CSR asked for. Returns [leaf, root] as PEM.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, Error> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::BadCsr(e.to_string()))?;
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(crypto)?;
        let params = Self::leaf_params(vec![SanType::URI(uri)], ttl)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(crypto)?;
        Ok(vec![cert.pem(), self.root_pem.clone()])
    }

    /// Issues a certificate and key for the CA's own use (its serving certificate, agents'
    /// bootstrap certificates). Returns (chain PEM, key PEM).
    pub fn issue(
        &self,
        uris: &[String],
        dns: &[String],
        ttl: Duration,
    ) -> Result<(String, String), Error> {
        let mut sans = Vec::new();
        for u in uris {
            sans.push(SanType::URI(
                rcgen::string::Ia5String::try_from(u.as_str()).map_err(crypto)?,
            ));
        }
        for d in dns {
            sans.push(SanType::DnsName(
                rcgen::string::Ia5String::try_from(d.as_str()).map_err(crypto)?,
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let cert = Self::leaf_params(sans, ttl)?
            .signed_by(&key, &self.issuer)
            .map_err(crypto)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A fresh P-256 key and a CSR for `identity`. Returns (CSR PEM, PKCS#8 DER key).
pub fn csr_for(identity: &Identity) -> Result<(String, Vec<u8>), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        rcgen::string::Ia5String::try_from(identity.to_string()).map_err(crypto)?,
    )];
    let csr = params.serialize_request(&key).map_err(crypto)?;
    Ok((csr.pem().map_err(crypto)?, key.serialize_der()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identities_in;

    #[test]
    fn signs_only_the_entitled_identity() {
        let ca = Authority::generate("cluster.local").unwrap();
        let asked: Identity = "spiffe://cluster.local/ns/a/sa/admin".parse().unwrap();
        let granted: Identity = "spiffe://cluster.local/ns/a/sa/app".parse().unwrap();
        let (csr, _key) = csr_for(&asked).unwrap();
        let chain = ca.sign(&csr, &granted, Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.root_pem());
        let der = pem_to_der(&chain[0]);
        assert_eq!(identities_in(&der).unwrap(), vec![granted]);
    }

    #[test]
    fn reloads_a_persisted_root() {
        let ca = Authority::generate("td").unwrap();
        let again = Authority::from_pem(ca.root_pem(), ca.key_pem()).unwrap();
        let id: Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (csr, _) = csr_for(&id).unwrap();
        assert!(again.sign(&csr, &id, Duration::from_secs(60)).is_ok());
        assert!(Authority::from_pem("junk", ca.key_pem()).is_err());
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
