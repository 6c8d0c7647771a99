//! Host names as VirtualServices and DestinationRules write them: short names resolve in the
//! object's namespace, `*.example.com` is a wildcard, and comparisons ignore case.

/// A host written in a config object, resolved to a fully-qualified form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Exact(String),
    /// `*.suffix`: the stored suffix starts with the dot.
    Wildcard(String),
    Any,
}

impl Host {
    /// Resolves `raw` as written in an object of `namespace`, as Istio does: `reviews` is
    /// `reviews.<namespace>.svc.<domain>`; a name with a dot is already fully qualified
    /// (`api.example.com`, a ServiceEntry's host), so `reviews.other` is not `reviews` of
    /// namespace `other`.
    pub fn resolve(raw: &str, namespace: &str, cluster_domain: &str) -> Host {
        let raw = raw.to_ascii_lowercase();
        if raw == "*" {
            return Host::Any;
        }
        if let Some(suffix) = raw.strip_prefix('*') {
            return Host::Wildcard(suffix.to_string());
        }
        if raw.contains('.') || raw.parse::<std::net::IpAddr>().is_ok() {
            Host::Exact(raw)
        } else {
            Host::Exact(format!("{raw}.{namespace}.svc.{cluster_domain}"))
        }
    }

    /// Whether the fully-qualified `fqdn` (lower case) is covered.
    pub fn matches(&self, fqdn: &str) -> bool {
        match self {
            Host::Exact(h) => h == fqdn,
            Host::Wildcard(suffix) => fqdn.ends_with(suffix.as_str()),
            Host::Any => true,
        }
    }

    /// How specific a match is: exact beats the longest wildcard, which beats `*`.
    pub fn specificity(&self) -> usize {
        match self {
            Host::Exact(_) => usize::MAX,
            Host::Wildcard(s) => s.len(),
            Host::Any => 0,
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Exact(h) => f.write_str(h),
            Host::Wildcard(s) => write!(f, "*{s}"),
            Host::Any => f.write_str("*"),
        }
    }
}
