//! The files a plain `GET` on the client port is answered with: the demo page
//! and the browser client's ES modules, all embedded in the binary from
//! `web/`. The WebSocket handshake parser ([`lifeline_wire::ws::parse_upgrade`])
//! hands back the path; [`PAGES`] says what it names.

use std::io::Write as _;

use lifeline_wire::ws::{self, HandshakeError};

/// A file served to a plain `GET`: where, as what, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    /// The request path (the request target without its query).
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
/// Browsers refuse a module script served under any other type.
const JS: &str = "text/javascript; charset=utf-8";

static INDEX_HTML: &str = include_str!("../web/index.html");

/// One module of the browser client, `web/<file>`, served at `/<file>`: the
/// path the entry's relative imports (`./xml.js`) resolve to from `/lifeline.js`.
macro_rules! module {
    ($file:literal) => {
        Page {
            path: concat!("/", $file),
            content_type: JS,
            body: include_str!(concat!("../web/", $file)),
        }
    };
}

/// Every file served. `lifeline.js` is the client's entry; the other modules
/// are the ones it imports (a test checks every import is here).
pub static PAGES: &[Page] = &[
    Page {
        path: "/",
        content_type: HTML,
        body: INDEX_HTML,
    },
    Page {
        path: "/index.html",
        content_type: HTML,
        body: INDEX_HTML,
    },
    module!("lifeline.js"),
    module!("delivery.js"),
    module!("errors.js"),
    module!("heartbeat.js"),
    module!("reconnect.js"),
    module!("settings.js"),
    module!("xml.js"),
];

impl Page {
    /// The page at `path` (the request target without its query), if any.
    pub fn find(path: &str) -> Option<&'static Page> {
        PAGES.iter().find(|page| page.path == path)
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
pub fn write_page(out: &mut Vec<u8>, page: &Page) {
    let body = page.body.as_bytes();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        page.content_type,
        body.len()
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_wire::ws::{parse_upgrade, Handshake};

    fn path_of(page: Option<&Page>) -> Option<&'static str> {
        page.map(|page| page.path)
    }

    /// The modules `source` imports or re-exports by relative path
    /// (`from './x.js'`), as the paths a browser requests from `/lifeline.js`.
    fn relative_imports(source: &str) -> Vec<String> {
        source
            .split("from '")
            .skip(1)
            .filter_map(|rest| rest.split_once('\'').map(|(target, _)| target))
            .filter_map(|target| target.strip_prefix("./"))
            .map(|file| format!("/{file}"))
            .collect()
    }

    #[test]
    fn plain_gets_serve_the_embedded_files() {
        let page = |req: &str| match parse_upgrade(req.as_bytes()) {
            Ok(Handshake::Get { path, len }) => {
                assert_eq!(len, req.len());
                path_of(Page::find(path))
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(page("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some("/"));
        assert_eq!(
            page("GET /index.html?x=1 HTTP/1.0\r\n\r\n"),
            Some("/index.html")
        );
        assert_eq!(
            page("GET /lifeline.js HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/lifeline.js")
        );
        assert_eq!(
            page("GET /xml.js HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/xml.js")
        );
        assert_eq!(page("GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        for module in PAGES.iter().filter(|page| page.path.ends_with(".js")) {
            let mut out = Vec::new();
            answer_get(&mut out, module.path);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
            assert!(head.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
            assert!(head.contains("X-Content-Type-Options: nosniff\r\n"));
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert_eq!(body, module.body);
        }
        let entry = Page::find("/lifeline.js").unwrap();
        assert!(entry.body.contains("export class LifelineClient"));
        assert!(Page::find("/").unwrap().body.contains("./lifeline.js"));
    }

    #[test]
    fn every_module_the_client_imports_is_served() {
        let mut seen = vec!["/lifeline.js".to_string()];
        let mut next = 0;
        while let Some(path) = seen.get(next).cloned() {
            let page =
                Page::find(&path).unwrap_or_else(|| panic!("{path} is imported but not in PAGES"));
            assert_eq!(page.content_type, JS, "{path}");
            for import in relative_imports(page.body) {
                if !seen.contains(&import) {
                    seen.push(import);
                }
            }
            next += 1;
        }
        // And nothing in the table that the client does not use.
        for page in PAGES.iter().filter(|page| page.content_type == JS) {
            assert!(
                seen.iter().any(|path| path == page.path),
                "{} is served but never imported",
                page.path
            );
        }
        assert!(seen.len() > 1, "the entry imports its siblings: {seen:?}");
    }

    #[test]
    fn other_paths_are_not_found() {
        let unknown = [
            "/favicon.ico",
            "/web/xml.js",
            "/xml.js/",
            "/XML.js",
            "/lifeline.d.ts",
        ];
        for path in unknown {
            let mut out = Vec::new();
            answer_get(&mut out, path);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
            assert!(text.ends_with(
                "\r\n\r\nnot found: the demo page is at / and the client at /lifeline.js\n"
            ));
        }
        // LIFELINE_DEMO_PAGE=off: every file is gone, and the 404 names none.
        for path in PAGES.iter().map(|page| page.path).chain(unknown) {
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
