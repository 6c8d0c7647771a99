//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("identity {0:?} does not start with spiffe://")]
    NotSpiffe(String),
    #[error("identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadPath(String),
}

/// A workload identity. Cheap to clone and one pointer wide: identities are map keys on the
/// data path, and every connection's record holds its peers'.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Parts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: Box<str>,
    namespace: Box<str>,
    service_account: Box<str>,
    /// `spiffe://…`, written once: metrics, logs and policy read it per connection or request.
    uri: Box<str>,
}

const SCHEME: &str = "spiffe://";

// === impl Identity ===

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self(Arc::new(Parts {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            uri: format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").into(),
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn uri(&self) -> &str {
        &self.0.uri
    }

    /// Whether both are the same value, not only equal ones.
    #[cfg(test)]
    pub(crate) fn same_allocation(&self, other: &Identity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The URI form without `spiffe://`, as AuthorizationPolicy `principals` write it.
    pub fn principal(&self) -> &str {
        &self.0.uri[SCHEME.len()..]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| Error::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(Error::BadPath(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/todoui"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "todoui");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/todoui"
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/todoui");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/lanyard/node/n1",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} should be rejected");
        }
    }
}
