//! Protocol detection from a connection's first bytes (Envoy's tls_inspector and http_inspector).

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Tls,
    Http10,
    Http11,
    /// HTTP/2 with prior knowledge (the connection preface).
    H2c,
    /// Something else (or a server-first protocol).
    Opaque,
    /// Not enough bytes to decide yet.
    NeedMore,
}

impl Sniffed {
    /// (transport protocol, application protocols) as filter chains match them.
    pub fn protocols(self) -> (&'static str, Vec<&'static str>) {
        match self {
            Sniffed::Tls => ("tls", vec![]),
            Sniffed::Http10 => ("raw_buffer", vec!["http/1.0"]),
            Sniffed::Http11 => ("raw_buffer", vec!["http/1.1"]),
            Sniffed::H2c => ("raw_buffer", vec!["h2c"]),
            Sniffed::Opaque | Sniffed::NeedMore => ("raw_buffer", vec![]),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
/// The request line is given up on after this many bytes.
pub const MAX_PEEK: usize = 1024;

pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    // TLS handshake record: content type 22, major version 3.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => Sniffed::NeedMore,
            Some(3) => Sniffed::Tls,
            Some(_) => Sniffed::Opaque,
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::H2c
        } else {
            Sniffed::NeedMore
        };
    }
    // HTTP/1: METHOD SP target SP HTTP/1.x CRLF
    let method_ok = METHODS.iter().any(|m| {
        let k = buf.len().min(m.len() + 1);
        let mut want = m.to_vec();
        want.push(b' ');
        buf[..k] == want[..k]
    });
    if !method_ok {
        return Sniffed::Opaque;
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &buf[..end];
            if line.ends_with(b" HTTP/1.1") {
                Sniffed::Http11
            } else if line.ends_with(b" HTTP/1.0") {
                Sniffed::Http10
            } else {
                Sniffed::Opaque
            }
        }
        None if buf.len() < MAX_PEEK => Sniffed::NeedMore,
        None => Sniffed::Opaque,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_protocols() {
        assert_eq!(
            sniff(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n"),
            Sniffed::Http11
        );
        assert_eq!(sniff(b"POST / HTTP/1.0\r\n"), Sniffed::Http10);
        assert_eq!(sniff(b"GET /a"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(H2_PREFACE), Sniffed::H2c);
        assert_eq!(sniff(&H2_PREFACE[..10]), Sniffed::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
        assert_eq!(sniff(b"\x00\x00\x00\x0aHELLO"), Sniffed::Opaque);
        assert_eq!(sniff(b"GETX / HTTP/1.1\r\n"), Sniffed::Opaque);
        assert_eq!(sniff(b"GET / SIP/2.0\r\n"), Sniffed::Opaque);
        assert_eq!(
            sniff(&[b'G', b'E', b'T', b' ', b'/'].repeat(300)),
            Sniffed::Opaque,
            "no request line within the limit"
        );
    }
}
