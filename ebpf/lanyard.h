/* Map layouts shared by the BPF programs and the agent.
 *
 * This header is the single source of truth: agent/src/capture/maps.rs mirrors every
 * struct as #[repr(C)] and a unit test checks sizes and offsets against these numbers.
 * Addresses are IPv4 in network byte order; ports are in host byte order. */
#ifndef LANYARD_H
#define LANYARD_H

#include <linux/types.h>

/* The agent's outbound listener inside every enrolled pod's network namespace. */
#define LANYARD_OUTBOUND_PORT 15001
/* Plaintext inbound listener (sk_lookup target) and HBONE listener in each pod netns. */
#define LANYARD_INBOUND_PLAINTEXT_PORT 15006
#define LANYARD_HBONE_PORT 15008

/* Sockets the agent opens carry one of these marks and are never captured.
 * 0x539 additionally means "spoofed source toward the local app" (routed back to lo). */
#define LANYARD_MARK_MASK 0xff0
#define LANYARD_MARK_VALUE 0x530

/* enrolled: netns cookie -> how to redirect outbound connections of that netns. */
struct lanyard_netns {
    __u32 redirect_ip4; /* usually 127.0.0.1 */
    __u16 redirect_port;
    __u16 _pad;
};

/* orig_dst: where an outbound connection was going before connect4 rewrote it. */
struct lanyard_orig_dst {
    __u32 ip4;
    __u16 port;
    __u16 _pad;
};

/* Key of orig_dst_by_tuple: what the agent sees as the peer of the accepted socket. */
struct lanyard_conn_key {
    __u64 netns_cookie;
    __u32 src_ip4;
    __u16 src_port;
    __u16 _pad;
};

/* agent_conns key: a connection the agent itself is opening to a local app, with the client's
 * address as source. sk_lookup leaves these to the normal lookup (no mark is visible there,
 * and the ingress ifindex of loopback-delivered traffic is the address's device, not lo). */
struct lanyard_conn4 {
    __u32 remote_ip4;
    __u32 local_ip4;
    __u16 remote_port;
    __u16 local_port;
};

#endif
