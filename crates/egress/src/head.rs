//! Reading and parsing the client's HTTP/1.x request head, by hand.
//!
//! Why not an HTTP library: the proxy forwards a plain HTTP request to a destination, and what
//! it forwards must be exactly what it checked. Parsing the few lines of a request head here
//! gives byte-exact control over that: the request line is rebuilt in origin-form, `Host`
//! comes from the URL that was checked (never from the client's own `Host` header), hop-by-hop
//! and `Proxy-*` headers are dropped, and anything ambiguous (a bare CR or LF, whitespace
//! before a colon, folded lines, conflicting `Content-Length`s, `Transfer-Encoding`) is refused
//! rather than normalized, so the proxy and the destination cannot disagree on where a request
//! ends (request smuggling).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header lines in order: the name as received and the value with surrounding whitespace
    /// trimmed.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why no head was read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client closed (or failed) before sending a single byte: not an attempt.
    Silent,
    /// No blank line within the size bound. Carries what was read.
    TooLarge(Vec<u8>),
    /// Not complete within the time bound. Carries what was read.
    Timeout(Vec<u8>),
    /// The client closed or the socket failed mid-head. Carries what was read.
    Truncated(Vec<u8>),
}

/// Why a request head that was read is refused (answered 400, recorded as denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MalformedHead {
    #[error("bare CR or LF in the request head")]
    BareCrLf,
    #[error("empty request")]
    Empty,
    #[error("the request line is not METHOD TARGET VERSION")]
    RequestLine,
    #[error("bad method")]
    Method,
    #[error("bad request target")]
    Target,
    #[error("only HTTP/1.0 and HTTP/1.1 are spoken here")]
    Version,
    #[error("folded header lines are not accepted")]
    Folded,
    #[error("a header line without a colon")]
    NoColon,
    #[error("bad header name")]
    HeaderName,
    #[error("control characters in a header value")]
    HeaderValue,
}

/// Why a URL (a forwarded request's target) or an authority (a CONNECT target) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTarget {
    #[error("the URL must start with http:// or https://")]
    Scheme,
    #[error("user info in URLs (user@host) is not allowed")]
    UserInfo,
    #[error("spaces or control characters in the URL")]
    Characters,
    #[error("unclosed [ in the host")]
    UnclosedBracket,
    #[error("junk after ] in the host")]
    AfterBracket,
    #[error("IPv6 addresses must be in brackets")]
    Ipv6Brackets,
    #[error("no host")]
    NoHost,
    #[error("bad port {0:?}")]
    Port(String),
    #[error("a port is required (host:port)")]
    NoPort,
}

/// Reads until the blank line ending a request head. Returns the head (without the blank
/// line) and whatever the client sent after it (the start of a body or of tunneled data).
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => return Err(HeadError::Timeout(buf)),
            Ok(Err(_)) | Ok(Ok(0)) if buf.is_empty() => return Err(HeadError::Silent),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(HeadError::Truncated(buf)),
            Ok(Ok(n)) => n,
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
            let end = from + i;
            if end + 4 > max {
                return Err(HeadError::TooLarge(buf));
            }
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge(buf));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The method as best it can be told from a head that could not be parsed, for the audit:
/// the token before the first space, if it is a short token.
pub(crate) fn guess_method(raw: &[u8]) -> String {
    let first = raw.split(|b| *b == b' ').next().unwrap_or_default();
    if !first.is_empty() && first.len() <= 16 && first.iter().all(|b| is_tchar(*b)) {
        String::from_utf8_lossy(first).into_owned()
    } else {
        String::new()
    }
}

/// RFC 9110 token characters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_tchar(*b))
}

/// A header value may hold visible ASCII, spaces, tabs and obs-text, and no other control
/// character.
pub(crate) fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Parses a head (without its blank line). Strict: see the module docs.
pub(crate) fn parse(raw: &[u8]) -> Result<Head, MalformedHead> {
    // Every line ends with CRLF once the last one gets back the CRLF read_head cut off.
    let mut text = raw.to_vec();
    text.extend_from_slice(b"\r\n");
    let mut lines = text.split(|b| *b == b'\n');
    let _ = lines.next_back(); // the empty piece after the final "\n"
    let mut next = move || -> Option<Result<&[u8], MalformedHead>> {
        let line = lines.next()?;
        Some(match line.strip_suffix(b"\r") {
            Some(l) if !l.contains(&b'\r') => Ok(l),
            _ => Err(MalformedHead::BareCrLf),
        })
    };
    let request_line = next().ok_or(MalformedHead::Empty)??;
    let parts: Vec<&[u8]> = request_line.split(|b| *b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(MalformedHead::RequestLine);
    };
    if !is_token(method) {
        return Err(MalformedHead::Method);
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(MalformedHead::Target);
    }
    if *version != b"HTTP/1.1" && *version != b"HTTP/1.0" {
        return Err(MalformedHead::Version);
    }
    let mut headers = Vec::new();
    while let Some(line) = next() {
        let line = line?;
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(MalformedHead::Folded);
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(MalformedHead::NoColon);
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !is_token(name) {
            return Err(MalformedHead::HeaderName);
        }
        let value = value.trim_ascii();
        if !is_field_value(value) {
            return Err(MalformedHead::HeaderValue);
        }
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Ok(Head {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version: String::from_utf8_lossy(version).into_owned(),
        headers,
    })
}

/// An absolute `http://` or `https://` URL, split for routing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Url {
    pub https: bool,
    /// As written between the scheme and the port, brackets kept for IPv6.
    pub host: String,
    pub port: u16,
    /// Origin-form: the path and query, starting with `/`, without any fragment.
    pub path: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Url, BadTarget> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("http://") {
        (false, &url[7..])
    } else if lower.starts_with("https://") {
        (true, &url[8..])
    } else {
        return Err(BadTarget::Scheme);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(BadTarget::UserInfo);
    }
    let (host, port) = parse_authority(authority, Some(if https { 443 } else { 80 }))?;
    let tail = tail.split('#').next().unwrap_or_default();
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    if !path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(BadTarget::Characters);
    }
    Ok(Url {
        https,
        host,
        port,
        path,
    })
}

/// Splits `host:port` (or `[v6]:port`); without a port, `default` is used if given.
pub(crate) fn parse_authority(s: &str, default: Option<u16>) -> Result<(String, u16), BadTarget> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']').ok_or(BadTarget::UnclosedBracket)?;
        let (h, rest) = s.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return Err(BadTarget::AfterBracket),
        }
    } else {
        match s.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(BadTarget::Ipv6Brackets);
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(BadTarget::NoHost);
    }
    let port = match (port, default) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(BadTarget::Port(p.to_owned())),
        },
        (None, Some(d)) => d,
        (None, None) => return Err(BadTarget::NoPort),
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_a_head_strictly() {
        let h = parse(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-A:  b c \t").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "http://a.test/x");
        assert_eq!(h.headers[1], ("X-A".to_string(), b"b c".to_vec()));
        for bad in [
            &b"GET / HTTP/1.1\nHost: a"[..],
            b"GET / HTTP/1.1\r\nHost : a",
            b"GET / HTTP/1.1\r\n folded",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/2",
            b"GET / HTTP/1.1\r\nX: a\rb",
            b"GET / HTTP/1.1\r\nnocolon",
            b"G(T / HTTP/1.1",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn urls_split_into_host_port_and_origin_form() {
        let u = parse_url("HTTP://A.test:8080?q=1#frag").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "A.test", 8080, "/?q=1")
        );
        let u = parse_url("https://[::1]/p").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port), (true, "[::1]", 443));
        assert!(parse_url("http://a.test@b.test/").is_err());
        assert!(parse_url("ftp://a.test/").is_err());
        assert!(parse_url("http://a.test:0/").is_err());
        assert!(parse_url("http://a.test:+80/").is_err());
        assert!(parse_url("http://::1/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn authority_requires_a_port_without_a_default() {
        assert_eq!(
            parse_authority("a.test:443", None).unwrap(),
            ("a.test".into(), 443)
        );
        assert!(parse_authority("a.test", None).is_err());
        assert_eq!(
            parse_authority("[::1]:22", None).unwrap(),
            ("[::1]".into(), 22)
        );
    }
}
