/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared by capture.bpf.c and outrigger-agent (agent/src/maps.rs encodes the same
 * bytes). Every struct is laid out without implicit padding; the static asserts at the end pin
 * the sizes the agent relies on. Addresses are 16 bytes in network order, IPv4 as v4-mapped
 * IPv6 (::ffff:a.b.c.d); ports are network order unless the field says otherwise.
 */
#ifndef OUTRIGGER_CAPTURE_H
#define OUTRIGGER_CAPTURE_H

#include <linux/types.h>

#define MAX_PORTS 20 /* per list, as Istio's annotations are truncated by Merbridge */
#define MAX_CIDRS 20

/* settings.flags */
#define SET_SOCKMAP (1 << 0)      /* put app<->proxy sockets in the SOCKHASH (sk_msg fast path) */
#define SET_DNS (1 << 1)          /* :53 from the app goes to 127.0.0.1:dns_port */
#define SET_PEER_INBOUND (1 << 2) /* proxy -> same-node meshed pod goes straight to its in_port */

/* One entry of `settings` (ARRAY, 1 entry). Ports in host order. */
struct settings {
	__u32 proxy_uid;
	__u32 proxy_gid;
	__u16 out_port; /* 15001 */
	__u16 in_port;  /* 15006 */
	__u16 dns_port; /* 15053 */
	__u16 flags;
};

/* An address range: (addr & mask) == addr, word by word (both network order). */
struct cidr {
	__u32 addr[4];
	__u32 mask[4];
};

/* pod.flags */
#define POD_HAS_IP4 (1 << 0)
#define POD_HAS_IP6 (1 << 1)
#define POD_OUT_ALL_CIDRS (1 << 2) /* includeOutboundIPRanges "*" */
#define POD_IN_ALL_PORTS (1 << 3)  /* includeInboundPorts "*" */

/*
 * A meshed pod, keyed by the network namespace cookie of the pod (`pods`) and found by IP
 * through `pod_ips`. Lists follow Istio's traffic.sidecar.istio.io annotations. Ports in host
 * order.
 */
struct pod {
	__u32 ip4;    /* network order */
	__u32 ip6[4]; /* network order */
	__u16 status_port;
	__u8 flags;
	__u8 n_excl_out_ports;
	__u8 n_incl_out_ports;
	__u8 n_excl_in_ports;
	__u8 n_incl_in_ports;
	__u8 n_excl_out_cidrs;
	__u8 n_incl_out_cidrs;
	__u8 _pad[3];
	__u16 excl_out_ports[MAX_PORTS];
	__u16 incl_out_ports[MAX_PORTS];
	__u16 excl_in_ports[MAX_PORTS];
	__u16 incl_in_ports[MAX_PORTS];
	struct cidr excl_out_cidrs[MAX_CIDRS];
	struct cidr incl_out_cidrs[MAX_CIDRS];
};

/* Where a redirected connection was going. */
struct orig {
	__u32 ip[4];
	__u16 port;   /* network order */
	__u16 family; /* AF_INET or AF_INET6 */
};

/* A TCP connection as its client sees it: client (s) -> server (d). */
struct tuple {
	__u32 sip[4];
	__u32 dip[4];
	__u16 sport; /* network order */
	__u16 dport; /* network order */
};

/* Indexes of the `counters` per-CPU array. */
enum counter {
	C_CONNECT_SEEN,        /* TCP connects from meshed pods */
	C_REDIRECTED,          /* app connects sent to the proxy's out_port */
	C_PEER_INBOUND,        /* proxy connects sent to a same-node peer's in_port */
	C_SKIP_PROXY,          /* the proxy's own connects left alone */
	C_SKIP_LOOPBACK,       /* destinations in 127.0.0.0/8 or ::1 */
	C_SKIP_EXCLUDED,       /* excluded or not included ports and ranges */
	C_NOT_MESHED,          /* connects from namespaces that are not meshed pods */
	C_TUPLE_STORED,        /* cookie -> 4-tuple bridges made by sockops */
	C_SOCKHASH_INSERTED,   /* sockets put in the SOCKHASH */
	C_GETSOCKOPT_HIT,      /* SO_ORIGINAL_DST answered */
	C_GETPEERNAME_REWRITE, /* getpeername() given the original peer */
	C_MSG_REDIRECTED,      /* sk_msg sends handed socket to socket */
	C_MSG_PASSED,          /* sk_msg sends left on the TCP path */
	C_DNS_REDIRECTED,      /* :53 sent to the DNS proxy */
	C_CLEANED,             /* map entries removed at close */
	C_COUNTERS             /* number of counters */
};

_Static_assert(sizeof(struct settings) == 16, "settings layout");
_Static_assert(sizeof(struct cidr) == 32, "cidr layout");
_Static_assert(sizeof(struct pod) == 32 + 4 * 2 * MAX_PORTS + 2 * 32 * MAX_CIDRS, "pod layout");
_Static_assert(sizeof(struct orig) == 20, "orig layout");
_Static_assert(sizeof(struct tuple) == 36, "tuple layout");

#endif
