//! Source ports for the connections the agent opens to a pod's app from a client's address.
//!
//! Binding to `(client, 0)` lets the kernel pick a port that no socket on that address uses,
//! whatever its destination and TIME_WAIT included: one client that opened more connections
//! a minute than the ephemeral range holds (about 28k) to a node's pods was refused. The
//! kernel's own connect-time choice (`IP_BIND_ADDRESS_NO_PORT`), which only needs the whole
//! 4-tuple to be free, cannot be used either: sk_lookup's exemption is keyed by the port and
//! must be in place before the SYN. So the agent picks the port itself, from the pod's
//! ephemeral range minus its reserved ports, and binds with `SO_REUSEADDR`; `connect()` then
//! refuses only a port whose exact 4-tuple is taken, which is the same per-destination limit
//! a client has without a mesh.

use std::ops::RangeInclusive;

use super::Error;
use crate::capture::netns::Netns;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// One pod's ephemeral port range, read when the pod is enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePorts {
    range: RangeInclusive<u16>,
    reserved: Vec<RangeInclusive<u16>>,
}

// === impl SourcePorts ===

impl SourcePorts {
    /// The ranges `netns` itself uses for ephemeral ports.
    pub fn of(netns: &Netns) -> Result<Self, Error> {
        let (range, reserved) = netns.run(|| -> std::io::Result<_> {
            Ok((
                std::fs::read_to_string(RANGE)?,
                std::fs::read_to_string(RESERVED)?,
            ))
        })??;
        Self::parse(&range, &reserved).ok_or_else(|| Error::Prepare {
            command: format!("reading {RANGE} and {RESERVED}"),
            detail: format!("cannot parse {:?} / {:?}", range.trim(), reserved.trim()),
        })
    }

    /// Parses `ip_local_port_range` ("32768\t60999") and `ip_local_reserved_ports`
    /// ("8080,9000-9010", possibly empty).
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut bounds = range.split_whitespace().map(str::parse::<u16>);
        let (first, last) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
        if bounds.next().is_some() || first == 0 || first > last {
            return None;
        }
        let reserved = reserved
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|r| match r.split_once('-') {
                Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                None => r.parse().ok().map(|p| p..=p),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            range: first..=last,
            reserved,
        })
    }

    /// A random port of the range that is not reserved, or `None` if this draw hit a
    /// reserved one (the caller counts it as a failed attempt, so a range that is all
    /// reserved cannot loop forever).
    pub fn pick(&self) -> Option<u16> {
        let port = rand::random_range(self.range.clone());
        (!self.reserved.iter().any(|r| r.contains(&port))).then_some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let p = SourcePorts::parse("32768\t60999\n", "\n").unwrap();
        assert_eq!(p.range, 32768..=60999);
        assert!(p.reserved.is_empty());
        let p = SourcePorts::parse("1024 2048", "1500,1600-1700\n").unwrap();
        assert_eq!(p.reserved, vec![1500..=1500, 1600..=1700]);
    }

    #[test]
    fn rejects_what_is_not_a_range() {
        for (range, reserved) in [
            ("", ""),
            ("60999 32768", ""),
            ("0 100", ""),
            ("1 2 3", ""),
            ("1024 70000", ""),
            ("1024 2048", "12x"),
            ("1024 2048", "1-"),
        ] {
            assert_eq!(
                SourcePorts::parse(range, reserved),
                None,
                "{range:?} {reserved:?}"
            );
        }
    }

    #[test]
    fn picks_only_unreserved_ports_of_the_range() {
        let p = SourcePorts::parse("40000 40009", "40000-40004,40009").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            if let Some(port) = p.pick() {
                seen.insert(port);
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [40005, 40006, 40007, 40008]
        );
    }
}
