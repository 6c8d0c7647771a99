//! Rust mirrors of the map layouts in `ebpf/lanyard.h`. The header is the source of truth;
//! the test below fails if the two drift apart.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;

/// Sockets the agent opens toward the local app, with a spoofed client source. Policy
/// routing in the pod netns sends replies carrying this mark back over loopback.
pub const MARK_SPOOFED: u32 = 0x539;
/// Every other socket the agent opens in a pod netns. Never captured.
pub const MARK_AGENT: u32 = 0x53a;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsValue {
    pub redirect_ip4: u32,
    pub redirect_port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnKey {
    pub netns_cookie: u64,
    pub src_ip4: u32,
    pub src_port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn4 {
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_port: u16,
    pub local_port: u16,
}

impl Conn4 {
    pub fn new(remote: SocketAddrV4, local: SocketAddrV4) -> Self {
        Self {
            remote_ip4: ip_to_be(*remote.ip()),
            local_ip4: ip_to_be(*local.ip()),
            remote_port: remote.port(),
            local_port: local.port(),
        }
    }
}

// SAFETY: plain-old-data with explicit padding fields and no invalid bit patterns.
unsafe impl aya::Pod for NetnsValue {}
unsafe impl aya::Pod for OrigDst {}
unsafe impl aya::Pod for ConnKey {}
unsafe impl aya::Pod for Conn4 {}

/// Addresses cross the boundary in network byte order: the in-memory bytes are the octets.
pub fn ip_to_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

impl ConnKey {
    pub fn new(netns_cookie: u64, src: SocketAddrV4) -> Self {
        Self {
            netns_cookie,
            src_ip4: ip_to_be(*src.ip()),
            src_port: src.port(),
            _pad: 0,
        }
    }
}

impl OrigDst {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(ip_from_be(self.ip4), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_lanyard_h() {
        let header = include_str!("../../../ebpf/lanyard.h");
        for (name, value) in [
            ("LANYARD_OUTBOUND_PORT", OUTBOUND_PORT as u32),
            (
                "LANYARD_INBOUND_PLAINTEXT_PORT",
                INBOUND_PLAINTEXT_PORT as u32,
            ),
            ("LANYARD_HBONE_PORT", HBONE_PORT as u32),
        ] {
            assert!(
                header.contains(&format!("#define {name} {value}")),
                "{name} differs from lanyard.h"
            );
        }
        assert!(header.contains("#define LANYARD_MARK_MASK 0xff0"));
        assert!(header.contains("#define LANYARD_MARK_VALUE 0x530"));
        for mark in [MARK_SPOOFED, MARK_AGENT] {
            assert_eq!(mark & 0xff0, 0x530);
        }
        assert_eq!(
            (
                size_of::<NetnsValue>(),
                offset_of!(NetnsValue, redirect_port)
            ),
            (8, 4)
        );
        assert_eq!((size_of::<OrigDst>(), offset_of!(OrigDst, port)), (8, 4));
        assert_eq!(
            (
                size_of::<ConnKey>(),
                offset_of!(ConnKey, src_ip4),
                offset_of!(ConnKey, src_port)
            ),
            (16, 8, 12)
        );
        assert_eq!(
            (
                size_of::<Conn4>(),
                offset_of!(Conn4, remote_port),
                offset_of!(Conn4, local_port)
            ),
            (12, 8, 10)
        );
    }

    #[test]
    fn addresses_are_network_order_in_memory() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(ip_to_be(ip).to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(ip_from_be(ip_to_be(ip)), ip);
    }
}
