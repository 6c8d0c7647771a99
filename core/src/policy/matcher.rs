//! Value matchers with Istio's semantics: exact, `prefix*`, `*suffix`, `*` (present and
//! non-empty); path templates with `{*}` (one segment) and `{**}` (one or more, last); IP
//! addresses and CIDR blocks.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    /// Parses Istio's form; `None` when a wildcard stands anywhere but at one end.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw == "*" {
            return Some(StringMatch::Present);
        }
        // One wildcard at most, and only at an end.
        let inner =
            &raw[usize::from(raw.starts_with('*'))..raw.len() - usize::from(raw.ends_with('*'))];
        if inner.contains('*') || (raw.starts_with('*') && raw.ends_with('*')) {
            return None;
        }
        Some(if let Some(p) = raw.strip_suffix('*') {
            StringMatch::Prefix(p.to_string())
        } else if let Some(s) = raw.strip_prefix('*') {
            StringMatch::Suffix(s.to_string())
        } else {
            StringMatch::Exact(raw.to_string())
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(e) => v == e,
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Present => !v.is_empty(),
        }
    }

    /// Case-insensitive, as Istio compares hosts.
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.to_ascii_lowercase();
        match self {
            StringMatch::Exact(e) => v == e.to_ascii_lowercase(),
            StringMatch::Prefix(p) => v.starts_with(&p.to_ascii_lowercase()),
            StringMatch::Suffix(s) => v.ends_with(&s.to_ascii_lowercase()),
            StringMatch::Present => !v.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Plain(StringMatch),
    /// Segments of a template; `None` is `{*}`, and `Rest` ends with `{**}`.
    Template {
        segments: Vec<Option<String>>,
        rest: bool,
    },
}

impl PathMatch {
    /// Parses a path, or an error message for an invalid template.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.contains('{') {
            return StringMatch::parse(raw)
                .map(PathMatch::Plain)
                .ok_or_else(|| {
                    format!("{raw:?}: a wildcard may only stand at the start or the end")
                });
        }
        let body = raw
            .strip_prefix('/')
            .ok_or_else(|| format!("{raw:?}: a path template must start with /"))?;
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::new();
        let mut rest = false;
        for (i, p) in parts.iter().enumerate() {
            match *p {
                "{*}" => segments.push(None),
                "{**}" if i == parts.len() - 1 => rest = true,
                "{**}" => return Err(format!("{raw:?}: {{**}} must be the last operator")),
                p if p.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "{raw:?}: only whole segments {{*}} and {{**}} are supported"
                    ))
                }
                p => segments.push(Some(p.to_string())),
            }
        }
        Ok(PathMatch::Template { segments, rest })
    }

    pub fn matches(&self, path: &str) -> bool {
        // Query strings are not part of the path that policies match.
        let path = path.split('?').next().unwrap_or_default();
        match self {
            PathMatch::Plain(m) => m.matches(path),
            PathMatch::Template { segments, rest } => {
                let Some(body) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = body.split('/').collect();
                let fixed = segments.len();
                if *rest {
                    if parts.len() <= fixed || parts[fixed..].iter().any(|p| p.is_empty()) {
                        return false;
                    }
                } else if parts.len() != fixed {
                    return false;
                }
                segments.iter().zip(&parts).all(|(s, p)| match s {
                    None => !p.is_empty(),
                    Some(lit) => lit == p,
                })
            }
        }
    }
}

/// An address or a CIDR block (`ipBlocks`).
pub fn parse_ip_block(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let m = |p: &str, v: &str| StringMatch::parse(p).unwrap().matches(v);
        assert!(m("abc", "abc") && !m("abc", "abcd"));
        assert!(m("abc*", "abcd") && !m("abc*", "xabc"));
        assert!(m("*abc", "xabc") && !m("*abc", "abcx"));
        assert!(m("*", "x") && !m("*", ""));
        for bad in ["a*b", "*a*", "**", "a**"] {
            assert_eq!(StringMatch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn path_templates() {
        let m = |p: &str, v: &str| PathMatch::parse(p).unwrap().matches(v);
        assert!(m("/api/{*}/items", "/api/v1/items"));
        assert!(!m("/api/{*}/items", "/api/v1/v2/items"));
        assert!(!m("/api/{*}/items", "/api//items"));
        assert!(m("/api/{**}", "/api/a/b/c"));
        assert!(m("/api/{**}", "/api/a"));
        assert!(!m("/api/{**}", "/api"));
        assert!(m("/api/{*}", "/api/x?y=1"));
        assert!(PathMatch::parse("/api/{**}/x").is_err());
        assert!(PathMatch::parse("/api/a{*}").is_err());
    }

    #[test]
    fn ip_blocks() {
        let net = parse_ip_block("10.1.0.0/16").unwrap();
        assert!(net.contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(parse_ip_block("10.1.2.3")
            .unwrap()
            .contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(parse_ip_block("10.1.2.300").is_none());
    }
}
