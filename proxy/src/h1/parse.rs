//! HTTP/1.x message heads parsed into spans of the buffer they arrived in: one pass over the
//! bytes, a table lookup per byte, nothing copied or allocated (the spans reuse the caller's
//! vector).
//!
//! The grammar is RFC 9112's, as strict as httparse's defaults (which the tests check it
//! against): a bare LF is accepted where CRLF ends a line, empty lines before the start line
//! are skipped, no whitespace between a header's name and its colon, no obsolete line folding,
//! optional whitespace around values trimmed, at most [`MAX_HEADERS`] headers.

use thiserror::Error;

use super::wire::{MAX_HEADERS, Span};

/// What makes a head malformed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    #[error("invalid HTTP version")]
    Version,
    #[error("invalid token")]
    Token,
    #[error("invalid response status")]
    Status,
    #[error("invalid header name")]
    HeaderName,
    #[error("invalid header value")]
    HeaderValue,
    #[error("invalid new line")]
    NewLine,
    #[error("too many headers")]
    TooManyHeaders,
}

/// `Ok(None)`: the head is not all there yet.
pub type Parse<T> = Result<Option<T>, HeadError>;

/// A complete request head: where its parts are, and its length (the body starts there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub len: usize,
    pub method: (usize, usize),
    pub target: (usize, usize),
    pub version_11: bool,
}

/// A complete response head: its status, version and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub version_11: bool,
}

/// A table of the bytes a set admits: `table!(b => condition on b)`.
macro_rules! table {
    ($b:ident => $admit:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            t[i] = $admit;
            i += 1;
        }
        t
    }};
}

/// tchar (RFC 9110 section 5.6.2): methods and header names.
static TOKEN: [bool; 256] = table!(b => matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
    | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
    | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'));
/// Header values and reason phrases: HTAB, SP, VCHAR and obs-text.
static TEXT: [bool; 256] = table!(b => b == b'\t' || (b >= 0x20 && b != 0x7f));
/// A request target's bytes (its syntax is left to the URI parser).
static TARGET: [bool; 256] = table!(b => b > b' ' && b != 0x7f);

/// How many bytes from `at` the set admits.
fn run(buf: &[u8], at: usize, set: &[bool; 256]) -> usize {
    buf[at..]
        .iter()
        .position(|b| !set[*b as usize])
        .unwrap_or(buf.len() - at)
}

/// How many bytes from `at` are text (`TEXT`), eight at a time: a word is searched for bytes
/// below 0x20 and for DEL at once, and only a tab among them is looked at alone. Values are
/// most of a head's bytes.
fn text_run(buf: &[u8], at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = at;
    while let Some(word) = buf.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        let x = u64::from_le_bytes(word);
        // The lowest flagged byte is exact (a borrow only flags bytes above a true one).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let del = (x ^ (ONES * 0x7f)).wrapping_sub(ONES) & !(x ^ (ONES * 0x7f)) & HIGH;
        let stop = control | del;
        if stop == 0 {
            i += 8;
            continue;
        }
        i += (stop.trailing_zeros() / 8) as usize;
        if buf[i] != b'\t' {
            return i - at;
        }
        i += 1;
    }
    i + run(buf, i, &TEXT) - at
}

/// The end of a line break at `at` (CRLF or LF), `err` when something else is there.
fn newline(buf: &[u8], at: usize, err: HeadError) -> Parse<usize> {
    match buf.get(at) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(at + 1)),
        Some(b'\r') => match buf.get(at + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(at + 2)),
            Some(_) => Err(err),
        },
        Some(_) => Err(err),
    }
}

/// Where the first non-empty line starts.
fn skip_empty_lines(buf: &[u8]) -> Parse<usize> {
    let mut at = 0;
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => match newline(buf, at, HeadError::NewLine)? {
                Some(next) => at = next,
                None => return Ok(None),
            },
            Some(_) => return Ok(Some(at)),
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1` at `at`: whether it is 1.1.
fn version(buf: &[u8], at: usize) -> Parse<bool> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let have = &buf[at..buf.len().min(at + 8)];
    if have.len() < 8 {
        let n = have.len().min(PREFIX.len());
        return if have[..n] == PREFIX[..n] {
            Ok(None)
        } else {
            Err(HeadError::Version)
        };
    }
    match have {
        b"HTTP/1.1" => Ok(Some(true)),
        b"HTTP/1.0" => Ok(Some(false)),
        _ => Err(HeadError::Version),
    }
}

/// Parses a request head at the start of `buf`, noting each header in `spans`.
pub fn request(buf: &[u8], spans: &mut Vec<Span>) -> Parse<RequestHead> {
    let Some(start) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let ms = start;
    let me = ms + run(buf, ms, &TOKEN);
    match buf.get(me) {
        None => return Ok(None),
        Some(b' ') if me > ms => {}
        Some(_) => return Err(HeadError::Token),
    }
    let ts = me + 1;
    let te = ts + run(buf, ts, &TARGET);
    match buf.get(te) {
        None => return Ok(None),
        Some(b' ') if te > ts => {}
        Some(_) => return Err(HeadError::Token),
    }
    // Bytes above ASCII pass only as UTF-8 (the URI parser refuses them in any case).
    let target = &buf[ts..te];
    if !target.is_ascii() && std::str::from_utf8(target).is_err() {
        return Err(HeadError::Token);
    }
    let Some(version_11) = version(buf, te + 1)? else {
        return Ok(None);
    };
    let Some(line_end) = newline(buf, te + 9, HeadError::NewLine)? else {
        return Ok(None);
    };
    let Some(len) = headers(buf, line_end, spans)? else {
        return Ok(None);
    };
    Ok(Some(RequestHead {
        len,
        method: (ms, me),
        target: (ts, te),
        version_11,
    }))
}

/// Parses a response head at the start of `buf`, noting each header in `spans`. The reason
/// phrase is checked and dropped.
pub fn response(buf: &[u8], spans: &mut Vec<Span>) -> Parse<ResponseHead> {
    let Some(start) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let Some(version_11) = version(buf, start)? else {
        return Ok(None);
    };
    let mut at = start + 8;
    match buf.get(at) {
        None => return Ok(None),
        Some(b' ') => at += 1,
        Some(_) => return Err(HeadError::Version),
    }
    let mut status = 0u16;
    for _ in 0..3 {
        match buf.get(at) {
            None => return Ok(None),
            Some(d @ b'0'..=b'9') => status = status * 10 + u16::from(d - b'0'),
            Some(_) => return Err(HeadError::Status),
        }
        at += 1;
    }
    match buf.get(at) {
        None => return Ok(None),
        Some(b' ') => at += 1 + text_run(buf, at + 1),
        Some(b'\r' | b'\n') => {}
        Some(_) => return Err(HeadError::Status),
    }
    let Some(line_end) = newline(buf, at, HeadError::Status)? else {
        return Ok(None);
    };
    let Some(len) = headers(buf, line_end, spans)? else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        len,
        status,
        version_11,
    }))
}

/// Parses header lines from `at` up to the empty line that ends the head; the head's length.
fn headers(buf: &[u8], mut at: usize, spans: &mut Vec<Span>) -> Parse<usize> {
    spans.clear();
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'\r' | b'\n') => return newline(buf, at, HeadError::NewLine),
            Some(_) => {}
        }
        let ns = at;
        let ne = ns + run(buf, ns, &TOKEN);
        match buf.get(ne) {
            None => return Ok(None),
            Some(b':') if ne > ns => {}
            Some(_) => return Err(HeadError::HeaderName),
        }
        let mut vs = ne + 1;
        while let Some(b' ' | b'\t') = buf.get(vs) {
            vs += 1;
        }
        let stop = vs + text_run(buf, vs);
        let Some(next) = newline(buf, stop, HeadError::HeaderValue)? else {
            return Ok(None);
        };
        let mut ve = stop;
        while ve > vs && matches!(buf[ve - 1], b' ' | b'\t') {
            ve -= 1;
        }
        if spans.len() == MAX_HEADERS {
            return Err(HeadError::TooManyHeaders);
        }
        spans.push((ns, ne, vs, ve));
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::*;

    /// What a parse came to, in terms both parsers share.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Partial,
        TooMany,
        Malformed,
        Request(RequestHead, Vec<Span>),
        Response(ResponseHead, Vec<Span>),
    }

    /// Our parser's answer as an outcome; `whole` wraps a complete head.
    fn ours<T>(
        parse: fn(&[u8], &mut Vec<Span>) -> Parse<T>,
        whole: fn(T, Vec<Span>) -> Outcome,
        buf: &[u8],
    ) -> Outcome {
        let mut spans = Vec::new();
        match parse(buf, &mut spans) {
            Ok(None) => Outcome::Partial,
            Ok(Some(h)) => whole(h, spans),
            Err(HeadError::TooManyHeaders) => Outcome::TooMany,
            Err(_) => Outcome::Malformed,
        }
    }

    fn at(buf: &[u8], part: &[u8]) -> (usize, usize) {
        let s = part.as_ptr() as usize - buf.as_ptr() as usize;
        (s, s + part.len())
    }

    fn spans_of(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Span> {
        headers
            .iter()
            .map(|h| {
                let (ns, ne) = at(buf, h.name.as_bytes());
                let (vs, ve) = at(buf, h.value);
                (ns, ne, vs, ve)
            })
            .collect()
    }

    fn httparse_request(buf: &[u8]) -> Outcome {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Partial) => Outcome::Partial,
            Ok(httparse::Status::Complete(len)) => Outcome::Request(
                RequestHead {
                    len,
                    method: at(buf, req.method.unwrap_or_default().as_bytes()),
                    target: at(buf, req.path.unwrap_or_default().as_bytes()),
                    version_11: req.version == Some(1),
                },
                spans_of(buf, req.headers),
            ),
            Err(httparse::Error::TooManyHeaders) => Outcome::TooMany,
            Err(_) => Outcome::Malformed,
        }
    }

    fn httparse_response(buf: &[u8]) -> Outcome {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Partial) => Outcome::Partial,
            Ok(httparse::Status::Complete(len)) => Outcome::Response(
                ResponseHead {
                    len,
                    status: resp.code.unwrap_or_default(),
                    version_11: resp.version == Some(1),
                },
                spans_of(buf, resp.headers),
            ),
            Err(httparse::Error::TooManyHeaders) => Outcome::TooMany,
            Err(_) => Outcome::Malformed,
        }
    }

    #[test]
    fn heads_parse_into_spans() {
        let buf = b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Empty:\r\nX-Pad: \t v \t\r\n\r\nBODY";
        let mut spans = Vec::new();
        let h = request(buf, &mut spans).unwrap().unwrap();
        assert_eq!(&buf[h.method.0..h.method.1], b"GET");
        assert_eq!(&buf[h.target.0..h.target.1], b"/a?b=1");
        assert!(h.version_11);
        assert_eq!(&buf[h.len..], b"BODY");
        let text: Vec<_> = spans
            .iter()
            .map(|&(ns, ne, vs, ve)| (&buf[ns..ne], &buf[vs..ve]))
            .collect();
        assert_eq!(
            text,
            [
                (&b"Host"[..], &b"svc"[..]),
                (b"X-Empty", b""),
                (b"X-Pad", b"v")
            ]
        );
        let buf = b"HTTP/1.0 404\nServer: s\n\n";
        let h = response(buf, &mut spans).unwrap().unwrap();
        assert_eq!((h.status, h.version_11, h.len), (404, false, buf.len()));
        assert_eq!(spans.len(), 1);
    }

    #[test]
    fn text_runs_stop_at_the_first_control_byte() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let buf: Vec<u8> = (0..len)
                .map(|_| match rng.u8(..8) {
                    0 => rng.u8(..0x20),
                    1 => 0x7f,
                    2 => b'\t',
                    3 => rng.u8(0x80..),
                    _ => rng.u8(0x20..0x7f),
                })
                .collect();
            let at = rng.usize(..=len);
            assert_eq!(
                text_run(&buf, at),
                run(&buf, at, &TEXT),
                "{buf:?} from {at}"
            );
        }
    }

    #[test]
    fn bad_heads_name_what_is_wrong() {
        let mut spans = Vec::new();
        let cases: [(&[u8], HeadError); 8] = [
            (b"GET /a HTTP/2.0\r\n\r\n", HeadError::Version),
            (b"G(T /a HTTP/1.1\r\n\r\n", HeadError::Token),
            (b"GET  /a HTTP/1.1\r\n\r\n", HeadError::Token),
            (
                b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
                HeadError::HeaderName,
            ),
            (
                b"GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                HeadError::HeaderName,
            ),
            (
                b"GET /a HTTP/1.1\r\nHost: a\0b\r\n\r\n",
                HeadError::HeaderValue,
            ),
            (
                b"GET /a HTTP/1.1\r\nHost: ab\rX\r\n\r\n",
                HeadError::HeaderValue,
            ),
            (b"GET /a HTTP/1.1\rX", HeadError::NewLine),
        ];
        for (buf, want) in cases {
            assert_eq!(
                request(buf, &mut spans),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(
            response(b"HTTP/1.1 2x0 OK\r\n\r\n", &mut spans),
            Err(HeadError::Status)
        );
        let many: Vec<u8> = std::iter::once(&b"GET / HTTP/1.1\r\n"[..])
            .chain(std::iter::repeat_n(&b"a: b\r\n"[..], MAX_HEADERS + 1))
            .chain([&b"\r\n"[..]])
            .flatten()
            .copied()
            .collect();
        assert_eq!(request(&many, &mut spans), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn every_prefix_of_a_head_is_partial() {
        let req = b"\r\nPOST /x HTTP/1.1\r\nA: 1\r\nB:2 \r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut spans = Vec::new();
        for n in 0..req.len() {
            assert_eq!(request(&req[..n], &mut spans), Ok(None), "{n}");
        }
        for n in 0..resp.len() {
            assert_eq!(response(&resp[..n], &mut spans), Ok(None), "{n}");
        }
    }

    /// Seeds and mutations drawn from the bytes that matter to the grammar.
    const SEEDS: [&[u8]; 6] = [
        b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        b"POST /up HTTP/1.0\nContent-Length: 5\nX-Y:  z \n\nhello",
        b"\r\n\nDELETE * HTTP/1.1\r\nA:\r\nB: \t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n",
        b"HTTP/1.0 204\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 503 Service \xffUnavailable\r\nX: \xc3\xa9\r\n\r\n",
    ];
    const ALPHABET: &[u8] = b" \t\r\n:/ .1HTP0\x7f\x00\xc3\xa9\xff(aZ";

    fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
        let mut buf = seed.to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..=buf.len());
            let b = ALPHABET[rng.usize(..ALPHABET.len())];
            match rng.u8(..4) {
                0 => buf.insert(at, b),
                1 if at < buf.len() => {
                    buf.remove(at);
                }
                2 if at < buf.len() => buf[at] = b,
                _ => buf.truncate(at),
            }
        }
        buf
    }

    /// Differential: on the seeds and a hundred thousand mutations of them, both parsers agree
    /// on whether a head is complete, partial, malformed or has too many headers, and on where
    /// every part of it lies.
    #[test]
    fn agrees_with_httparse() {
        let mut rng = fastrand::Rng::with_seed(9112);
        for round in 0..100_000 {
            let seed = SEEDS[round % SEEDS.len()];
            let buf = if round < SEEDS.len() {
                seed.to_vec()
            } else {
                mutate(&mut rng, seed)
            };
            assert_eq!(
                ours(request, Outcome::Request, &buf),
                httparse_request(&buf),
                "request {:?}",
                String::from_utf8_lossy(&buf)
            );
            assert_eq!(
                ours(response, Outcome::Response, &buf),
                httparse_response(&buf),
                "response {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
