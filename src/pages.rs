//! The files a plain `GET` on the client port is answered with: the demo page
//! and the browser client, both embedded in the binary from `web/`. The
//! WebSocket handshake parser ([`lifeline_wire::ws::parse_upgrade`]) hands
//! back the path; this module decides what it names.

use std::io::Write as _;

use lifeline_wire::ws::{self, HandshakeError};

static INDEX_HTML: &str = include_str!("../web/index.html");
static LIFELINE_JS: &str = include_str!("../web/lifeline.js");

/// A file served to a plain `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET /` or `GET /index.html`: the demo page.
    Index,
    /// `GET /lifeline.js`: the browser client.
    Script,
}

impl Page {
    /// The page at `path` (the request target without its query), if any.
    pub fn find(path: &str) -> Option<Page> {
        match path {
            "/" | "/index.html" => Some(Page::Index),
            "/lifeline.js" => Some(Page::Script),
            _ => None,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Page::Index => INDEX_HTML,
            Page::Script => LIFELINE_JS,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Page::Index => "text/html; charset=utf-8",
            // Browsers refuse a module script served under any other type.
            Page::Script => "text/javascript; charset=utf-8",
        }
    }
}

/// Answers a plain `GET` of `path`: its page, or a 404. Either response says
/// `Connection: close`; the caller closes once it is flushed.
pub fn answer_get(out: &mut Vec<u8>, path: &str) {
    answer_get_if(out, path, true);
}

/// [`answer_get`], or a 404 for every path when the pages are off
/// (`LIFELINE_DEMO_PAGE=off`: the public port then serves WebSocket
/// upgrades only).
pub fn answer_get_if(out: &mut Vec<u8>, path: &str, pages_on: bool) {
    match Page::find(path) {
        Some(page) if pages_on => write_page(out, page),
        _ if pages_on => ws::write_handshake_error(out, &HandshakeError::NotFound),
        _ => write_not_found(out),
    }
}

/// A bare 404 that names nothing this server could serve.
fn write_not_found(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
    );
}

/// Writes a `200` carrying `page`, with `Connection: close`.
pub fn write_page(out: &mut Vec<u8>, page: Page) {
    let body = page.body().as_bytes();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        page.content_type(),
        body.len()
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_wire::ws::{parse_upgrade, Handshake};

    #[test]
    fn plain_gets_serve_the_embedded_files() {
        let page = |req: &str| match parse_upgrade(req.as_bytes()) {
            Ok(Handshake::Get { path, len }) => {
                assert_eq!(len, req.len());
                Page::find(path)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(page("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Page::Index));
        assert_eq!(
            page("GET /index.html?x=1 HTTP/1.0\r\n\r\n"),
            Some(Page::Index)
        );
        assert_eq!(
            page("GET /lifeline.js HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Page::Script)
        );
        assert_eq!(page("GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        let mut out = Vec::new();
        answer_get(&mut out, "/lifeline.js");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Type: text/javascript"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("export class LifelineClient"));
        assert!(Page::Index.body().contains("lifeline.js"));
    }

    #[test]
    fn other_paths_are_not_found() {
        let mut out = Vec::new();
        answer_get(&mut out, "/favicon.ico");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.ends_with(
            "\r\n\r\nnot found: the demo page is at / and the client at /lifeline.js\n"
        ));
        for path in ["/", "/lifeline.js", "/favicon.ico"] {
            let mut out = Vec::new();
            answer_get_if(&mut out, path, false);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert_eq!(body, "not found\n");
        }
    }
}
