//! Which browser origins may open a WebSocket on the client port
//! (`LIFELINE_WS_ORIGINS`). A browser sends `Origin` with every upgrade, and a
//! page on any site can open a WebSocket to any host: the allow-list is what
//! stops a foreign page from using its visitors' browsers as clients. A
//! request without `Origin` is not a browser's and is not held to it.

/// The allow-list; empty: any origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// Comma-separated origins (`https://app.example.com`,
    /// `http://localhost:8080`, `null`); empty or `*`: any. `Err` carries
    /// the entry that is not an origin.
    pub fn parse(value: &str) -> Result<OriginPolicy, String> {
        let mut allowed = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Ok(OriginPolicy::default());
            }
            let origin = entry.trim_end_matches('/').to_ascii_lowercase();
            let valid = origin == "null"
                || ["http://", "https://"].iter().any(|scheme| {
                    origin.strip_prefix(scheme).is_some_and(|host| {
                        !host.is_empty()
                            && !host.contains(['/', '?', '#', '@', ' '])
                            && host.is_ascii()
                    })
                });
            if !valid {
                return Err(entry.to_string());
            }
            allowed.push(origin);
        }
        Ok(OriginPolicy { allowed })
    }

    pub fn allows_any(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether an upgrade whose head is `head` may proceed.
    pub fn allows(&self, head: &[u8]) -> bool {
        if self.allows_any() {
            return true;
        }
        match origin_of(head) {
            None => true,
            Some(origin) => {
                let origin = origin.trim_ascii();
                self.allowed
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
            }
        }
    }
}

/// The `Origin` header of a request head, if it has one.
fn origin_of(head: &[u8]) -> Option<&[u8]> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("origin"))
        .map(|h| h.value)
}

/// The answer to an upgrade from an origin not on the list.
pub fn write_forbidden(out: &mut Vec<u8>) {
    let body = b"forbidden: this origin may not open a WebSocket here (LIFELINE_WS_ORIGINS)\n";
    out.extend_from_slice(
        format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(origin: Option<&str>) -> Vec<u8> {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n");
        if let Some(o) = origin {
            head.push_str(&format!("Origin: {o}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    #[test]
    fn only_listed_origins_pass_and_requests_without_one_are_not_browsers() {
        let any = OriginPolicy::parse("").unwrap();
        assert!(any.allows_any() && any.allows(&upgrade(Some("https://evil.test"))));
        assert!(OriginPolicy::parse(" * ").unwrap().allows_any());
        let list = OriginPolicy::parse("https://App.example.com/, http://localhost:8080").unwrap();
        assert!(list.allows(&upgrade(Some("https://app.example.com"))));
        assert!(list.allows(&upgrade(Some("http://localhost:8080"))));
        assert!(!list.allows(&upgrade(Some("http://localhost:8081"))));
        assert!(!list.allows(&upgrade(Some("https://evil.test"))));
        assert!(!list.allows(&upgrade(Some("null"))));
        assert!(list.allows(&upgrade(None)));
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a b",
        ] {
            assert_eq!(OriginPolicy::parse(bad), Err(bad.to_string()), "{bad}");
        }
    }
}
