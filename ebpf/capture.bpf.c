// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Lanyard traffic capture.
 *
 * Outbound: cgroup/connect4 rewrites the destination of TCP connects from enrolled network
 * namespaces to the agent's listener in that same namespace and remembers the original
 * destination by socket cookie; sockops re-keys it by (netns cookie, source address) once the
 * source port is known, because that is all the agent can see from the accepting side.
 *
 * Inbound: sk_lookup, attached to each enrolled pod netns, hands TCP connections to the pod to
 * the agent's plaintext listener, keeping the original destination as the socket's local
 * address; connections the agent itself opens to the app are registered in agent_conns and
 * left alone.
 *
 * sockops also gives the app's ends of its loopback hops to the agent a congestion control
 * that does not pace.
 *
 * Each entry point is thin; the logic lives in try_*(). */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lanyard.h"

#define SOL_SOCKET 1
#define SO_MARK 36
#define SOL_TCP 6
#define TCP_CONGESTION 13

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct lanyard_netns);
} enrolled SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct lanyard_orig_dst);
} orig_dst_by_cookie SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct lanyard_conn_key);
    __type(value, struct lanyard_orig_dst);
} orig_dst_by_tuple SEC(".maps");

/* pod IPv4 (network order) -> 1 for every enrolled pod. An enrolled pod whose listener is
 * missing (agent restarting) has its inbound connections dropped: fail closed, never let
 * plaintext reach a pod that STRICT mTLS protects. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u32);
} enrolled_pods SEC(".maps");

/* pod IPv4 (network order) -> the agent's plaintext inbound listener in that pod's netns. */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u32); /* socket fd on update, as aya and libbpf pass it */
} inbound_listeners SEC(".maps");

/* IPv4 (network order) -> 1 for each address of the node itself. Connections from the node
 * into a pod are the kubelet's health probes (and host-network pods'): they reach the app
 * directly, so STRICT mTLS and authorization do not fail them. The kernel drops packets from
 * outside that claim a local source address, so only the node can match. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u8);
} node_sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct lanyard_conn4);
    __type(value, __u8);
} agent_conns SEC(".maps");

static __always_inline int is_loopback(__u32 ip4_be)
{
    return (bpf_ntohl(ip4_be) >> 24) == 127;
}

static __always_inline int try_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_TCP)
        return 0;
    __u32 dst = ctx->user_ip4;
    if (is_loopback(dst))
        return 0;

    __u64 netns = bpf_get_netns_cookie(ctx);
    struct lanyard_netns *ns = bpf_map_lookup_elem(&enrolled, &netns);
    if (!ns)
        return 0;

    int mark = 0;
    if (bpf_getsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0 &&
        (mark & LANYARD_MARK_MASK) == LANYARD_MARK_VALUE)
        return 0;

    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct lanyard_orig_dst orig = {
        .ip4 = dst,
        .port = bpf_ntohs((__u16)ctx->user_port),
    };
    if (bpf_map_update_elem(&orig_dst_by_cookie, &cookie, &orig, BPF_ANY) != 0)
        return -1; /* without the original destination the agent could not proxy: leave it */

    ctx->user_ip4 = ns->redirect_ip4;
    ctx->user_port = bpf_htons(ns->redirect_port);
    return 0;
}

SEC("cgroup/connect4")
int lanyard_connect4(struct bpf_sock_addr *ctx)
{
    try_connect4(ctx);
    return 1; /* never refuse an application's connect */
}

/* Both ends of the loopback hop between an app and the agent get a congestion control that
 * does not pace: the hop never crosses a network (see LOCAL_HOP_CONGESTION in
 * agent/src/socket, which sets the agent's ends). Best effort. */
static __always_inline void local_hop(struct bpf_sock_ops *skops)
{
    char cc[] = "cubic";
    bpf_setsockopt(skops, SOL_TCP, TCP_CONGESTION, cc, sizeof(cc));
}

/* An app's captured connect: its socket now ends at the agent's outbound listener. */
static __always_inline int try_connect(struct bpf_sock_ops *skops)
{
    __u64 cookie = bpf_get_socket_cookie(skops);
    struct lanyard_orig_dst *orig = bpf_map_lookup_elem(&orig_dst_by_cookie, &cookie);
    if (!orig)
        return 0;
    struct lanyard_conn_key key = {
        .netns_cookie = bpf_get_netns_cookie(skops),
        .src_ip4 = skops->local_ip4,
        .src_port = (__u16)skops->local_port,
    };
    struct lanyard_orig_dst value = *orig;
    bpf_map_delete_elem(&orig_dst_by_cookie, &cookie);
    local_hop(skops);
    if (bpf_map_update_elem(&orig_dst_by_tuple, &key, &value, BPF_ANY) != 0)
        return -1;
    return 0;
}

/* An app accepting a connection: the agent's own, to deliver a tunnel, is registered in
 * agent_conns until the agent's connect returns; on loopback the agent's final ACK, which
 * establishes the app's socket, is processed before that. */
static __always_inline int try_passive(struct bpf_sock_ops *skops)
{
    struct lanyard_conn4 conn = {
        .remote_ip4 = skops->remote_ip4,
        .local_ip4 = skops->local_ip4,
        /* remote_port holds the network-order port in its upper half. */
        .remote_port = (__u16)bpf_ntohl(skops->remote_port),
        .local_port = (__u16)skops->local_port,
    };
    if (bpf_map_lookup_elem(&agent_conns, &conn))
        local_hop(skops);
    return 0;
}

static __always_inline int try_sockops(struct bpf_sock_ops *skops)
{
    switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        return try_connect(skops);
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        return try_passive(skops);
    }
    return 0;
}

SEC("sockops")
int lanyard_sockops(struct bpf_sock_ops *skops)
{
    try_sockops(skops);
    return 1;
}

/* Returns the verdict itself: SK_DROP is how it fails closed. */
static __always_inline int try_sk_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != IPPROTO_TCP || ctx->family != 2 /* AF_INET */)
        return SK_PASS;
    __u32 port = ctx->local_port;
    if (port == LANYARD_HBONE_PORT || port == LANYARD_INBOUND_PLAINTEXT_PORT ||
        port == LANYARD_OUTBOUND_PORT)
        return SK_PASS;
    __u32 src = ctx->remote_ip4;
    if (bpf_map_lookup_elem(&node_sources, &src))
        return SK_PASS;
    struct lanyard_conn4 conn = {
        .remote_ip4 = ctx->remote_ip4,
        .local_ip4 = ctx->local_ip4,
        .remote_port = bpf_ntohs(ctx->remote_port),
        .local_port = (__u16)port,
    };
    if (bpf_map_lookup_elem(&agent_conns, &conn))
        return SK_PASS;

    __u32 key = ctx->local_ip4;
    if (!bpf_map_lookup_elem(&enrolled_pods, &key))
        return SK_PASS;
    struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listeners, &key);
    if (!sk)
        return SK_DROP;
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err == 0 ? SK_PASS : SK_DROP;
}

SEC("sk_lookup")
int lanyard_sk_lookup(struct bpf_sk_lookup *ctx)
{
    return try_sk_lookup(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
