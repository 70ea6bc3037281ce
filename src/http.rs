//! HTTP/1.1 for the admin API: requests parsed incrementally with `httparse`
//! from a connection's buffer, responses written into a caller's Vec. No I/O.
//!
//! Bodies come with a Content-Length or chunked ([`chunked`], decoded as
//! they arrive into the connection's [`BodyState`]). A request that says
//! `Expect: 100-continue` is reported as soon as its head is complete
//! ([`Parsed::AwaitingBody`]), so the caller can tell the client to send the
//! body, or refuse before it comes.

mod chunked;

use std::io::Write as _;

pub use chunked::ChunkedDecoder;

/// Request line plus headers may not exceed this (431 beyond).
pub const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    Other,
}

/// One parsed request; everything borrows from the connection's buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// Percent-encoded path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub authorization: Option<&'a [u8]>,
    pub last_event_id: Option<&'a str>,
    /// `Idempotency-Key`, raw (validated where it is used).
    pub idempotency_key: Option<&'a [u8]>,
    pub keep_alive: bool,
}

/// What [`parse`] found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole request, `len` bytes long.
    Complete {
        request: Request<'a>,
        len: usize,
    },
    /// The head is complete and asks `Expect: 100-continue`; none of the
    /// body has come yet (`request.body` is empty).
    AwaitingBody {
        request: Request<'a>,
    },
    Partial,
}

/// What a connection keeps of a request whose chunked body is still
/// arriving; a fresh one for each request.
#[derive(Debug, Default)]
pub struct BodyState {
    decoder: ChunkedDecoder,
    body: Vec<u8>,
    /// Bytes after the head already given to the decoder.
    fed: usize,
}

/// A request that cannot be served; each maps to a status code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request line and headers exceed {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("body exceeds {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("only Expect: 100-continue is understood")]
    ExpectationFailed,
    #[error("transfer codings other than chunked are not accepted")]
    UnsupportedEncoding,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::ExpectationFailed => 417,
            HttpError::UnsupportedEncoding => 501,
            HttpError::Malformed(_) => 400,
        }
    }
}

/// Parses the request at the front of `buf`. A body larger than `max_body`
/// is refused as soon as its Content-Length (or a chunk's size) says so.
/// `state` carries a chunked body's decoding from one call to the next, as
/// `buf` grows; the caller starts each request with a fresh one.
pub fn parse<'a>(
    buf: &'a [u8],
    max_body: usize,
    state: &'a mut BodyState,
) -> Result<Parsed<'a>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(httparse_reason(e))),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("DELETE") => Method::Delete,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut authorization = None;
    let mut last_event_id = None;
    let mut idempotency_key = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(HttpError::Malformed("Content-Length is not a number"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` alone is a coding a request body may have here.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::UnsupportedEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            // An HTTP/1.0 client does not know 100 Continue (RFC 9110 10.1.1).
            expect_continue = http11;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = std::str::from_utf8(h.value).ok().map(str::trim);
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            idempotency_key = Some(h.value);
        }
    }
    if content_length > max_body {
        return Err(HttpError::BodyTooLarge { max: max_body });
    }
    let mut request = Request {
        method,
        path,
        query,
        body: &[],
        authorization,
        last_event_id,
        idempotency_key,
        keep_alive,
    };
    // Nothing of the body yet: the client may be waiting for 100 Continue.
    let body_due = chunked || content_length > 0;
    if expect_continue && body_due && buf.len() == head_len {
        return Ok(Parsed::AwaitingBody { request });
    }
    if chunked {
        // Transfer-Encoding overrides any Content-Length (RFC 9112 6.3).
        let rest = &buf[head_len + state.fed..];
        state.fed += state.decoder.feed(rest, &mut state.body, max_body)?;
        if !state.decoder.is_done() {
            return Ok(Parsed::Partial);
        }
        let state: &'a BodyState = state;
        request.body = &state.body;
        return Ok(Parsed::Complete {
            request,
            len: head_len + state.fed,
        });
    }
    let len = head_len + content_length;
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    request.body = &buf[head_len..len];
    Ok(Parsed::Complete { request, len })
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// The value of `key` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| decode(v))
    })
}

/// Percent-decodes a path segment or query value ('+' is a space in queries
/// only, and ids never contain one, so it is left alone).
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        417 => "Expectation Failed",
        501 => "Not Implemented",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

/// Writes a whole response with a Content-Length.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    write_response_with(out, status, content_type, body, keep_alive, &[]);
}

/// [`write_response`] with more header fields (`Allow`, ...).
pub fn write_response_with(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    headers: &[(&str, &str)],
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
    }
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A JSON response.
pub fn write_json(out: &mut Vec<u8>, status: u16, value: &serde_json::Value, keep_alive: bool) {
    let body = value.to_string();
    write_response(out, status, "application/json", body.as_bytes(), keep_alive);
}

/// `{"error": ..., "detail": ...}` with the given status.
pub fn write_error(out: &mut Vec<u8>, status: u16, error: &str, detail: &str, keep_alive: bool) {
    let value = serde_json::json!({ "error": error, "detail": detail });
    write_json(out, status, &value, keep_alive);
}

/// The interim response that asks a client waiting on
/// `Expect: 100-continue` for its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The head of a Server-Sent Events stream (no length: it stays open).
pub fn write_event_stream_head(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        // Leaked: a test's state outlives the request borrowed from it.
        let state = Box::leak(Box::default());
        match parse(buf, 1024, state).unwrap() {
            Parsed::Complete { request, len } => (request, len),
            other => panic!("{other:?}"),
        }
    }

    fn parse_fresh(buf: &[u8], max: usize) -> Result<Parsed<'_>, HttpError> {
        parse(buf, max, Box::leak(Box::default()))
    }

    #[test]
    fn parses_pipelined_requests_and_waits_for_bodies() {
        let buf = b"POST /clients/a%40b/push?wait_ack_ms=50 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nAuthorization: Bearer t\r\nIdempotency-Key: k-1\r\n\r\nhelloGET /healthz HTTP/1.1\r\n\r\n";
        let (req, len) = complete(buf);
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.path, "/clients/a%40b/push");
        assert_eq!(decode("a%40b"), "a@b");
        assert_eq!(query_param(req.query, "wait_ack_ms").as_deref(), Some("50"));
        assert_eq!(req.body, b"hello");
        assert_eq!(req.authorization, Some(&b"Bearer t"[..]));
        assert_eq!(req.idempotency_key, Some(&b"k-1"[..]));
        assert!(req.keep_alive);
        let (req, _) = complete(&buf[len..]);
        assert_eq!((req.method, req.path), (Method::Get, "/healthz"));
        assert_eq!(req.idempotency_key, None);
        for cut in 0..len {
            assert!(
                matches!(parse_fresh(&buf[..cut], 1024), Ok(Parsed::Partial)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_fresh(big_head.as_bytes(), 10).unwrap_err().status(),
            431
        );
        let big_body = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(parse_fresh(big_body, 10).unwrap_err().status(), 413);
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse_fresh(gzip, 10).unwrap_err().status(), 501);
        let expect = b"POST / HTTP/1.1\r\nExpect: something\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(parse_fresh(expect, 10).unwrap_err().status(), 417);
        let chunked_big = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nB\r\n";
        assert_eq!(parse_fresh(chunked_big, 10).unwrap_err().status(), 413);
        let chunked_bad = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse_fresh(chunked_bad, 10).unwrap_err().status(), 400);
        assert_eq!(
            parse_fresh(b"GARBAGE\0\r\n\r\n", 10).unwrap_err().status(),
            400
        );
        let close = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!complete(close).0.keep_alive);
    }

    #[test]
    fn chunked_bodies_decode_across_calls_as_the_buffer_grows() {
        let request = b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n";
        let end = request.len() - "GET /healthz HTTP/1.1\r\n\r\n".len();
        let mut state = BodyState::default();
        for cut in 0..end {
            assert!(
                matches!(
                    parse(&request[..cut], 1024, &mut state),
                    Ok(Parsed::Partial)
                ),
                "cut {cut}"
            );
        }
        match parse(request, 1024, &mut state).unwrap() {
            Parsed::Complete { request: r, len } => {
                assert_eq!((r.body, len), (&b"abcde"[..], end));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expect_continue_is_reported_before_the_body() {
        let head = b"POST /x HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse_fresh(head, 10),
            Ok(Parsed::AwaitingBody { request }) if request.path == "/x" && request.body.is_empty()
        ));
        let with_body = [&head[..], b"hi"].concat();
        assert_eq!(complete(&with_body).0.body, b"hi");
        // HTTP/1.0 knows no 100 Continue; a bodiless request needs none.
        let old = b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(parse_fresh(old, 10), Ok(Parsed::Partial)));
        let empty = b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(
            parse_fresh(empty, 10),
            Ok(Parsed::Complete { .. })
        ));
    }
}
