//! The hash a request gives to RING_HASH and MAGLEV clusters, from the route's `hash_policy`
//! list as Envoy computes it (pure).
//!
//! Each policy that finds its value contributes `xxHash64(value)`; a second contribution is
//! mixed in as `rotl(hash, 1) ^ new`; a terminal policy that produced a hash ends the list. A
//! cookie policy with a TTL whose cookie is missing makes one up from the connection's
//! addresses, hashes it, and asks for it to be set on the response.

use std::net::SocketAddr;

use http::HeaderMap;
use xxhash_rust::xxh64::xxh64;

use crate::config::route::{HashKey, HashPolicy};
use crate::upstream::hash_lb::xxhash_all;

/// The request's hash and, when a cookie was made up, the `Set-Cookie` value for the response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<String>,
}

/// The request's hash under `policies`. `downstream`/`local` are the connection's peer and
/// local addresses (source IP policy, made-up cookies).
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    authority: Option<&str>,
    query: Option<&str>,
    downstream: SocketAddr,
    local: SocketAddr,
) -> RequestHash {
    let mut out = RequestHash::default();
    for p in policies {
        let new = match &p.key {
            HashKey::Header(name) => header_hash(headers, authority, name),
            HashKey::Cookie { name, ttl, path } => match cookie(headers, name) {
                Some(v) => Some(xxh64(v.as_bytes(), 0)),
                None => match ttl {
                    Some(ttl) => {
                        // Envoy: the same value for every request of a connection.
                        let value = format!(
                            "{:016x}",
                            xxh64(format!("{downstream}{local}").as_bytes(), 0)
                        );
                        out.set_cookie = Some(set_cookie(name, &value, path, ttl.as_secs()));
                        Some(xxh64(value.as_bytes(), 0))
                    }
                    None => None,
                },
            },
            HashKey::SourceIp => Some(xxh64(downstream.ip().to_string().as_bytes(), 0)),
            HashKey::QueryParameter(name) => {
                query_value(query.unwrap_or(""), name).map(|v| xxh64(v.as_bytes(), 0))
            }
        };
        if let Some(new) = new {
            out.hash = Some(match out.hash {
                Some(h) => h.rotate_left(1) ^ new,
                None => new,
            });
        }
        if p.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

/// `xxHash64` over the header's values in sorted order (so their order does not matter).
fn header_hash(headers: &HeaderMap, authority: Option<&str>, name: &str) -> Option<u64> {
    if name == ":authority" || name == "host" {
        return authority.map(|a| xxh64(a.as_bytes(), 0));
    }
    let mut values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(xxhash_all(values))
}

/// The value of cookie `name` (quotes stripped), from any `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The first value of query parameter `name`, as sent (not decoded, as Envoy).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// Envoy's `Set-Cookie` for a generated cookie: quoted value, `Max-Age`, `Path`, `HttpOnly`.
fn set_cookie(name: &str, value: &str, path: &str, max_age: u64) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if max_age > 0 {
        s.push_str(&format!("; Max-Age={max_age}"));
    }
    if !path.is_empty() {
        s.push_str(&format!("; Path={path}"));
    }
    s.push_str("; HttpOnly");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(key: HashKey, terminal: bool) -> HashPolicy {
        HashPolicy { key, terminal }
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const PEER: &str = "10.0.0.7:40000";
    const LOCAL: &str = "10.96.0.10:8080";

    fn hash(policies: &[HashPolicy], h: &HeaderMap, query: Option<&str>) -> RequestHash {
        request_hash(
            policies,
            h,
            Some("svc:8080"),
            query,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
        )
    }

    #[test]
    fn header_values_hash_in_any_order_and_missing_headers_give_nothing() {
        let p = [policy(HashKey::Header("x-user".into()), false)];
        let a = hash(&p, &headers(&[("x-user", "alice")]), None).hash;
        assert_eq!(a, Some(xxh64(b"alice", 0)));
        assert_ne!(a, hash(&p, &headers(&[("x-user", "bob")]), None).hash);
        let ab = hash(&p, &headers(&[("x-user", "a"), ("x-user", "b")]), None).hash;
        let ba = hash(&p, &headers(&[("x-user", "b"), ("x-user", "a")]), None).hash;
        assert_eq!(ab, ba);
        assert_eq!(hash(&p, &headers(&[]), None), RequestHash::default());
        let host = [policy(HashKey::Header(":authority".into()), false)];
        assert_eq!(
            hash(&host, &headers(&[]), None).hash,
            Some(xxh64(b"svc:8080", 0))
        );
    }

    #[test]
    fn policies_combine_by_rotate_and_xor_and_terminal_stops() {
        let user = policy(HashKey::Header("x-user".into()), false);
        let ip = policy(HashKey::SourceIp, false);
        let h = headers(&[("x-user", "alice")]);
        let (u, s) = (xxh64(b"alice", 0), xxh64(b"10.0.0.7", 0));
        assert_eq!(hash(std::slice::from_ref(&ip), &h, None).hash, Some(s));
        assert_eq!(
            hash(&[user.clone(), ip.clone()], &h, None).hash,
            Some(u.rotate_left(1) ^ s)
        );
        let terminal = policy(HashKey::Header("x-user".into()), true);
        assert_eq!(
            hash(&[terminal.clone(), ip.clone()], &h, None).hash,
            Some(u)
        );
        // A terminal policy without a value does not stop the list.
        assert_eq!(hash(&[terminal, ip], &headers(&[]), None).hash, Some(s));
    }

    #[test]
    fn cookies_are_read_or_made_up_with_their_ttl() {
        let with_ttl = [policy(
            HashKey::Cookie {
                name: "session".into(),
                ttl: Some(Duration::from_secs(3600)),
                path: "/".into(),
            },
            false,
        )];
        let made = hash(&with_ttl, &headers(&[]), None);
        let cookie = made.set_cookie.clone().unwrap();
        assert!(cookie.starts_with("session=\""), "{cookie}");
        assert!(
            cookie.ends_with("\"; Max-Age=3600; Path=/; HttpOnly"),
            "{cookie}"
        );
        // Sending the cookie back gives the same hash, and no new cookie.
        let value = cookie.split('"').nth(1).unwrap();
        let back = hash(
            &with_ttl,
            &headers(&[("cookie", &format!("a=1; session=\"{value}\""))]),
            None,
        );
        assert_eq!(back.hash, made.hash);
        assert_eq!(back.set_cookie, None);
        // Unquoted works the same.
        let plain = hash(
            &with_ttl,
            &headers(&[("cookie", &format!("session={value}"))]),
            None,
        );
        assert_eq!(plain.hash, made.hash);
        // Without a TTL nothing is made up.
        let no_ttl = [policy(
            HashKey::Cookie {
                name: "session".into(),
                ttl: None,
                path: String::new(),
            },
            false,
        )];
        assert_eq!(hash(&no_ttl, &headers(&[]), None), RequestHash::default());
    }

    #[test]
    fn query_parameters_hash_their_first_value() {
        let p = [policy(HashKey::QueryParameter("user".into()), false)];
        assert_eq!(
            hash(&p, &headers(&[]), Some("a=1&user=bob&user=eve")).hash,
            Some(xxh64(b"bob", 0))
        );
        assert_eq!(hash(&p, &headers(&[]), Some("username=bob")).hash, None);
        assert_eq!(hash(&p, &headers(&[]), None).hash, None);
    }
}
