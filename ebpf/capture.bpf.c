// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Outrigger's eBPF capture: hands a meshed pod's outbound connections to its sidecar without
 * iptables, and answers the sidecar's SO_ORIGINAL_DST from what was recorded.
 *
 *   app connect(10.96.0.10:80)
 *     cgroup/connect4   cookie_orig[cookie] = 10.96.0.10:80; dst := 127.0.0.1:15001 (bind pod IP)
 *     sockops           on ESTABLISHED: tuple_orig[{podIP:eph -> 127.0.0.1:15001}] = 10.96.0.10:80
 *   proxy accept(); getsockopt(SOL_IP, SO_ORIGINAL_DST)
 *     cgroup/getsockopt answers from tuple_orig, keyed by the accepted socket seen from the client
 *   app getpeername()
 *     cgroup/getpeername4 answers 10.96.0.10:80, as after an iptables REDIRECT
 *   data (optional)
 *     sk_msg            bytes go socket to socket through the SOCKHASH
 *
 * Which pods are meshed, and their traffic annotations, come from outrigger-agent through the
 * `pods` map, keyed by network namespace cookie. Connects from any other namespace are untouched.
 * Built with clang-19 -O2 -g -target bpf (cargo xtask build-ebpf).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "capture.h"

#define AF_INET 2
#define AF_INET6 10
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* also IP6T_SO_ORIGINAL_DST at SOL_IPV6 */
#define PAGE_SIZE 4096
#define TCP_CLOSE 7
#define DNS_PORT 53

#define SETTINGS_MAX 1
#define PODS_MAX 1024
#ifndef CONN_MAX
#define CONN_MAX 65536 /* the agent resizes the connection maps at load time */
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SETTINGS_MAX);
	__type(key, __u32);
	__type(value, struct settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODS_MAX);
	__type(key, __u64); /* network namespace cookie */
	__type(value, struct pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODS_MAX * 2);
	__type(key, __u32[4]); /* pod IP, v4-mapped for IPv4 */
	__type(value, __u64);  /* the pod's network namespace cookie */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, __u64); /* socket cookie of the connecting socket */
	__type(value, struct orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cookie_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, struct tuple);
	__type(value, struct orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tuple_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, CONN_MAX);
	__type(key, struct tuple);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

static __always_inline struct settings *get_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

/* The uid or gid of the caller is the proxy's. */
static __always_inline int is_proxy(const struct settings *s)
{
	__u64 ug = bpf_get_current_uid_gid();
	return (__u32)ug == s->proxy_uid || (__u32)(ug >> 32) == s->proxy_gid;
}

static __always_inline void map_v4(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = ip4;
}

static __always_inline int is_v4_mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff);
}

static __always_inline int is_loopback(const __u32 ip[4])
{
	if (is_v4_mapped(ip))
		return (bpf_ntohl(ip[3]) >> 24) == 127;
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline int port_in(const __u16 *list, __u8 n, __u16 port)
{
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (list[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int cidr_in(const struct cidr *list, __u8 n, const __u32 ip[4])
{
	for (int i = 0; i < MAX_CIDRS; i++) {
		if (i >= n)
			break;
		const struct cidr *c = &list[i];
		if ((ip[0] & c->mask[0]) == c->addr[0] && (ip[1] & c->mask[1]) == c->addr[1] &&
		    (ip[2] & c->mask[2]) == c->addr[2] && (ip[3] & c->mask[3]) == c->addr[3])
			return 1;
	}
	return 0;
}

/*
 * The app's outbound rule, in istio-iptables' order: excluded ports, excluded ranges, included
 * ports, included ranges ("*" = all).
 */
static __always_inline int app_captured(const struct pod *p, const __u32 ip[4], __u16 port)
{
	if (port_in(p->excl_out_ports, p->n_excl_out_ports, port))
		return 0;
	if (cidr_in(p->excl_out_cidrs, p->n_excl_out_cidrs, ip))
		return 0;
	if (port_in(p->incl_out_ports, p->n_incl_out_ports, port))
		return 1;
	if (p->flags & POD_OUT_ALL_CIDRS)
		return 1;
	return cidr_in(p->incl_out_cidrs, p->n_incl_out_cidrs, ip);
}

/* Ports a sidecar never captures inbound (istio-iptables' defaults) plus the pod's rules. */
static __always_inline int peer_inbound_captured(const struct pod *p, const struct settings *s,
						 __u16 port)
{
	if (port == s->out_port || port == s->in_port || port == 15000 || port == 15008 ||
	    port == 15020 || port == 15021 || port == 15090 || port == p->status_port)
		return 0;
	if (port_in(p->excl_in_ports, p->n_excl_in_ports, port))
		return 0;
	if (p->flags & POD_IN_ALL_PORTS)
		return 1;
	return port_in(p->incl_in_ports, p->n_incl_in_ports, port);
}

static __always_inline int same_ip(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int own_ip(const struct pod *p, const __u32 ip[4])
{
	if (is_v4_mapped(ip))
		return (p->flags & POD_HAS_IP4) && p->ip4 == ip[3];
	return (p->flags & POD_HAS_IP6) && same_ip(p->ip6, ip);
}

enum verdict { LEAVE, TO_PROXY, TO_PEER, TO_DNS };

/*
 * The decision for one connect (or sendmsg) from a meshed pod. `ip` is v4-mapped for IPv4;
 * `port` is host order.
 */
static __always_inline enum verdict decide(const struct settings *s, const struct pod *p,
					   const __u32 ip[4], __u16 port, int tcp)
{
	if (is_proxy(s)) {
		if (!tcp || !(s->flags & SET_PEER_INBOUND) || own_ip(p, ip)) {
			count(C_SKIP_PROXY);
			return LEAVE;
		}
		__u64 *peer_ns = bpf_map_lookup_elem(&pod_ips, (void *)ip);
		if (!peer_ns) {
			count(C_SKIP_PROXY);
			return LEAVE;
		}
		struct pod *peer = bpf_map_lookup_elem(&pods, peer_ns);
		if (!peer || !peer_inbound_captured(peer, s, port)) {
			count(C_SKIP_PROXY);
			return LEAVE;
		}
		return TO_PEER;
	}
	if (port == DNS_PORT && (s->flags & SET_DNS))
		return TO_DNS;
	if (!tcp)
		return LEAVE;
	if (is_loopback(ip)) {
		count(C_SKIP_LOOPBACK);
		return LEAVE;
	}
	if (own_ip(p, ip) || !app_captured(p, ip, port)) {
		count(C_SKIP_EXCLUDED);
		return LEAVE;
	}
	return TO_PROXY;
}

static __always_inline void remember(void *ctx, const __u32 ip[4], __u16 port_be, __u16 family)
{
	struct orig o = {};
	__builtin_memcpy(o.ip, ip, 16);
	o.port = port_be;
	o.family = family;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&cookie_orig, &cookie, &o, BPF_ANY);
}

SEC("cgroup/connect4")
int outrigger_connect4(struct bpf_sock_addr *ctx)
{
	int tcp = ctx->protocol == IPPROTO_TCP;
	if (!tcp && ctx->protocol != IPPROTO_UDP)
		return 1;
	struct settings *s = get_settings();
	if (!s)
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct pod *p = bpf_map_lookup_elem(&pods, &ns);
	if (!p) {
		if (tcp)
			count(C_NOT_MESHED);
		return 1;
	}
	if (tcp)
		count(C_CONNECT_SEEN);
	__u32 ip[4];
	map_v4(ip, ctx->user_ip4);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	switch (decide(s, p, ip, port, tcp)) {
	case TO_PROXY: {
		remember(ctx, ip, (__u16)ctx->user_port, AF_INET);
		if (p->flags & POD_HAS_IP4) {
			/* The pod IP as source keeps 4-tuples of different pods apart, and is what
			 * the proxy sees after an iptables REDIRECT too. */
			struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = p->ip4};
			bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		}
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(s->out_port);
		count(C_REDIRECTED);
		break;
	}
	case TO_PEER:
		remember(ctx, ip, (__u16)ctx->user_port, AF_INET);
		ctx->user_port = bpf_htons(s->in_port);
		count(C_PEER_INBOUND);
		break;
	case TO_DNS:
		remember(ctx, ip, (__u16)ctx->user_port, AF_INET);
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(s->dns_port);
		count(C_DNS_REDIRECTED);
		break;
	case LEAVE:
		break;
	}
	return 1;
}

SEC("cgroup/connect6")
int outrigger_connect6(struct bpf_sock_addr *ctx)
{
	int tcp = ctx->protocol == IPPROTO_TCP;
	if (!tcp && ctx->protocol != IPPROTO_UDP)
		return 1;
	struct settings *s = get_settings();
	if (!s)
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct pod *p = bpf_map_lookup_elem(&pods, &ns);
	if (!p) {
		if (tcp)
			count(C_NOT_MESHED);
		return 1;
	}
	if (tcp)
		count(C_CONNECT_SEEN);
	__u32 ip[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int mapped = is_v4_mapped(ip);
	__u16 family = mapped ? AF_INET : AF_INET6;

	enum verdict v = decide(s, p, ip, port, tcp);
	if (v == LEAVE)
		return 1;
	remember(ctx, ip, (__u16)ctx->user_port, family);
	if (v == TO_PEER) {
		ctx->user_port = bpf_htons(s->in_port);
		count(C_PEER_INBOUND);
		return 1;
	}
	if (v == TO_PROXY) {
		if (!mapped && (p->flags & POD_HAS_IP6)) {
			struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
			__builtin_memcpy(&sa.sin6_addr, p->ip6, 16);
			bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		}
		count(C_REDIRECTED);
	} else {
		count(C_DNS_REDIRECTED);
	}
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(v == TO_PROXY ? s->out_port : s->dns_port);
	return 1;
}

/* Unconnected UDP (sendto) to :53, for DNS capture. */
SEC("cgroup/sendmsg4")
int outrigger_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	if (!s || !(s->flags & SET_DNS) || ctx->user_port != bpf_htons(DNS_PORT))
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct pod *p = bpf_map_lookup_elem(&pods, &ns);
	if (!p || is_proxy(s))
		return 1;
	__u32 ip[4];
	map_v4(ip, ctx->user_ip4);
	remember(ctx, ip, (__u16)ctx->user_port, AF_INET);
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(s->dns_port);
	count(C_DNS_REDIRECTED);
	return 1;
}

/* The DNS proxy's answer is given the resolver's address back, or the resolver drops it. */
SEC("cgroup/recvmsg4")
int outrigger_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	if (!s || !(s->flags & SET_DNS) || ctx->user_port != bpf_htons(s->dns_port) ||
	    ctx->user_ip4 != bpf_htonl(0x7f000001))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!o || o->family != AF_INET)
		return 1;
	ctx->user_ip4 = o->ip[3];
	ctx->user_port = o->port;
	return 1;
}

/* The same for IPv6 sockets (native IPv6 resolvers, or IPv4 ones through v4-mapped addresses). */
SEC("cgroup/sendmsg6")
int outrigger_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	if (!s || !(s->flags & SET_DNS) || ctx->user_port != bpf_htons(DNS_PORT))
		return 1;
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct pod *p = bpf_map_lookup_elem(&pods, &ns);
	if (!p || is_proxy(s))
		return 1;
	__u32 ip[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	int mapped = is_v4_mapped(ip);
	remember(ctx, ip, (__u16)ctx->user_port, mapped ? AF_INET : AF_INET6);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(s->dns_port);
	count(C_DNS_REDIRECTED);
	return 1;
}

SEC("cgroup/recvmsg6")
int outrigger_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	if (!s || !(s->flags & SET_DNS) || ctx->user_port != bpf_htons(s->dns_port))
		return 1;
	__u32 ip[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	if (!is_loopback(ip))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!o)
		return 1;
	ctx->user_ip6[0] = o->ip[0];
	ctx->user_ip6[1] = o->ip[1];
	ctx->user_ip6[2] = o->ip[2];
	ctx->user_ip6[3] = o->ip[3];
	ctx->user_port = o->port;
	return 1;
}

/* The app sees the address it connected to, as after an iptables REDIRECT. */
SEC("cgroup/getpeername4")
int outrigger_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!o || o->family != AF_INET)
		return 1;
	ctx->user_ip4 = o->ip[3];
	ctx->user_port = o->port;
	count(C_GETPEERNAME_REWRITE);
	return 1;
}

SEC("cgroup/getpeername6")
int outrigger_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!o)
		return 1;
	ctx->user_ip6[0] = o->ip[0];
	ctx->user_ip6[1] = o->ip[1];
	ctx->user_ip6[2] = o->ip[2];
	ctx->user_ip6[3] = o->ip[3];
	ctx->user_port = o->port;
	count(C_GETPEERNAME_REWRITE);
	return 1;
}

/*
 * Builds a tuple from the context's addresses. Every field is read unconditionally: when clang
 * merges per-family branches into one load at a computed context offset, the verifier refuses
 * it ("dereference of modified ctx ptr"), so the reads are volatile and stay where they are.
 */
#define VREAD(field) (*(volatile __u32 *)&(field))
#define TUPLE_FROM(ctx, t, fam, l4, r4, l6, r6)                                                  \
	do {                                                                                     \
		__u32 _l4 = VREAD((ctx)->l4), _r4 = VREAD((ctx)->r4);                            \
		__u32 _l6[4] = {VREAD((ctx)->l6[0]), VREAD((ctx)->l6[1]), VREAD((ctx)->l6[2]),   \
				VREAD((ctx)->l6[3])};                                            \
		__u32 _r6[4] = {VREAD((ctx)->r6[0]), VREAD((ctx)->r6[1]), VREAD((ctx)->r6[2]),   \
				VREAD((ctx)->r6[3])};                                            \
		if ((fam) == AF_INET) {                                                          \
			map_v4((t)->sip, _l4);                                                   \
			map_v4((t)->dip, _r4);                                                   \
		} else {                                                                         \
			__builtin_memcpy((t)->sip, _l6, 16);                                     \
			__builtin_memcpy((t)->dip, _r6, 16);                                     \
		}                                                                                \
	} while (0)

static __always_inline void sockops_tuple(struct bpf_sock_ops *skops, struct tuple *t)
{
	__u32 family = skops->family;
	TUPLE_FROM(skops, t, family, local_ip4, remote_ip4, local_ip6, remote_ip6);
	t->sport = bpf_htons((__u16)skops->local_port);
	t->dport = (__u16)(skops->remote_port >> 16);
}

static __always_inline void reverse(const struct tuple *t, struct tuple *r)
{
	__builtin_memcpy(r->sip, t->dip, 16);
	__builtin_memcpy(r->dip, t->sip, 16);
	r->sport = t->dport;
	r->dport = t->sport;
}

static __always_inline void sockhash_add(struct bpf_sock_ops *skops, struct tuple *t)
{
	if (bpf_sock_hash_update(skops, &sock_pairs, t, BPF_NOEXIST) == 0)
		count(C_SOCKHASH_INSERTED);
}

/*
 * Connection established: the client side turns its cookie entry into a 4-tuple entry (the
 * proxy's accepted socket has another cookie); both sides join the SOCKHASH when the fast path
 * is on; closes clean the maps.
 */
SEC("sockops")
int outrigger_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	struct settings *s = get_settings();
	if (!s)
		return 1;
	struct tuple t = {};
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		cookie = bpf_get_socket_cookie(skops);
		struct orig *o = bpf_map_lookup_elem(&cookie_orig, &cookie);
		sockops_tuple(skops, &t);
		if (o) {
			bpf_map_update_elem(&tuple_orig, &t, o, BPF_ANY);
			count(C_TUPLE_STORED);
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
			if (s->flags & SET_SOCKMAP)
				sockhash_add(skops, &t);
		} else if ((s->flags & SET_SOCKMAP) && skops->family == AF_INET &&
			   skops->local_ip4 == bpf_htonl(0x7f000006)) {
			/* The proxy's inbound passthrough to its own app (source 127.0.0.6). */
			sockhash_add(skops, &t);
		}
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		__u32 port = skops->local_port;
		sockops_tuple(skops, &t);
		if (port == s->out_port || port == s->in_port) {
			/* The proxy's accepted socket: its tuple entry goes when it closes. */
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
			if (s->flags & SET_SOCKMAP)
				sockhash_add(skops, &t);
		} else if ((s->flags & SET_SOCKMAP) && skops->family == AF_INET &&
			   skops->remote_ip4 == bpf_htonl(0x7f000006)) {
			sockhash_add(skops, &t);
		}
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != TCP_CLOSE)
			break;
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_delete_elem(&cookie_orig, &cookie) == 0)
			count(C_CLEANED);
		if (skops->local_port == s->out_port || skops->local_port == s->in_port) {
			struct tuple mine = {};
			sockops_tuple(skops, &mine);
			reverse(&mine, &t);
			if (bpf_map_delete_elem(&tuple_orig, &t) == 0)
				count(C_CLEANED);
		}
		break;
	}
	return 1;
}

/*
 * SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6) on the proxy's accepted socket.
 * Runs after the kernel's own getsockopt, for every getsockopt in the cgroup: anything else is
 * returned untouched.
 */
SEC("cgroup/getsockopt")
int outrigger_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6)) {
		/* Options larger than a page cannot be seen by the program: keep the kernel's. */
		if (ctx->optlen > PAGE_SIZE)
			ctx->optlen = 0;
		return 1;
	}
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct tuple t = {};
	__u32 family = sk->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	/* The accepted socket seen from the client: remote (dst) first. */
	TUPLE_FROM(sk, &t, family, dst_ip4, src_ip4, dst_ip6, src_ip6);
	t.sport = (__u16)sk->dst_port;
	t.dport = bpf_htons((__u16)sk->src_port);
	struct orig *o = bpf_map_lookup_elem(&tuple_orig, &t);
	if (!o)
		return 1;

	if (ctx->level == SOL_IP) {
		if (o->family != AF_INET)
			return 1;
		struct sockaddr_in *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->sin_family = AF_INET;
		sa->sin_port = o->port;
		sa->sin_addr.s_addr = o->ip[3];
		/* Separate 4-byte stores: the verifier refuses one merged 8-byte context write. */
		*(volatile __s32 *)&ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sa, 0, sizeof(*sa));
		sa->sin6_family = AF_INET6;
		sa->sin6_port = o->port;
		__builtin_memcpy(&sa->sin6_addr, o->ip, 16);
		*(volatile __s32 *)&ctx->optlen = sizeof(*sa);
	}
	*(volatile __s32 *)&ctx->retval = 0;
	count(C_GETSOCKOPT_HIT);
	return 1;
}

/* Socket to socket: the peer is the socket whose tuple is ours reversed. */
SEC("sk_msg")
int outrigger_sk_msg(struct sk_msg_md *msg)
{
	struct tuple peer = {};
	__u32 family = msg->family;
	/* The peer's own tuple: ours reversed. */
	TUPLE_FROM(msg, &peer, family, remote_ip4, local_ip4, remote_ip6, local_ip6);
	peer.sport = (__u16)(msg->remote_port >> 16);
	peer.dport = bpf_htons((__u16)msg->local_port);
	if (bpf_msg_redirect_hash(msg, &sock_pairs, &peer, BPF_F_INGRESS) == SK_PASS)
		count(C_MSG_REDIRECTED);
	else
		count(C_MSG_PASSED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
