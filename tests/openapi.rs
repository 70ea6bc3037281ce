//! `docs/admin-openapi.yaml` against the running server: the description is
//! valid OpenAPI 3 (`openapi-spec-validator`, from PyPI), every documented
//! operation is called — as it succeeds, as it fails, without the token,
//! with a method its path does not serve — and each answer's status is one
//! the description lists for it, its content type the documented one, and
//! a JSON body conforms to the documented schema. Every route the server
//! counts in its metrics is documented. In cluster mode, the answers only a
//! cluster gives (a client's `node`, a broadcast's `nodes`, `503
//! cluster-unavailable`) are documented too.

mod cluster_common;
mod common;
mod opskit;

use std::collections::BTreeSet;
use std::process::Command;

use common::ServerProc;
use opskit::{repo, tool, Http, Response};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const SPEC: &str = "docs/admin-openapi.yaml";
const TOKEN: &str = "open-sesame";

fn spec() -> Yaml {
    let text = std::fs::read_to_string(repo().join(SPEC)).unwrap();
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .into_iter()
        .next()
        .expect("one document")
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(reference) => {
            let mut at = doc;
            for part in reference.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            resolve(doc, at)
        }
        None => node,
    }
}

fn keys(node: &Yaml) -> Vec<String> {
    node.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a JSON value against the subset of JSON Schema the document uses.
fn conforms(doc: &Yaml, schema: &Yaml, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        assert_eq!(schema["nullable"].as_bool(), Some(true), "{at}: null");
        return;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value.as_object().unwrap_or_else(|| panic!("{at}: {value}"));
            for required in schema["required"].as_vec().into_iter().flatten() {
                let name = required.as_str().unwrap();
                assert!(object.contains_key(name), "{at}: no {name} in {value}");
            }
            for (name, v) in object {
                let property = &schema["properties"][name.as_str()];
                assert!(!property.is_badvalue(), "{at}: undocumented {name}");
                conforms(doc, property, v, &format!("{at}.{name}"));
            }
        }
        Some("array") => {
            for (i, item) in value.as_array().unwrap().iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => {
            let s = value.as_str().unwrap_or_else(|| panic!("{at}: {value}"));
            if let Some(allowed) = schema["enum"].as_vec() {
                assert!(allowed.iter().any(|a| a.as_str() == Some(s)), "{at}: {s}");
            }
        }
        Some("integer") => assert!(value.is_u64() || value.is_i64(), "{at}: {value}"),
        other => panic!("{at}: schema type {other:?}"),
    }
}

/// One call: an operation of the description, made concrete.
struct Call {
    template: &'static str,
    /// The operation whose documented responses the answer must be among.
    method: &'static str,
    /// The method sent (another one for a 405).
    sent: &'static str,
    path: String,
    headers: String,
    body: &'static [u8],
    /// The status this call must get.
    expect: u16,
}

fn call(
    template: &'static str,
    method: &'static str,
    path: &str,
    body: &'static [u8],
    expect: u16,
) -> Call {
    Call {
        template,
        method,
        sent: leak(method.to_uppercase()),
        path: path.to_string(),
        headers: format!("Authorization: Bearer {TOKEN}\r\n"),
        body,
        expect,
    }
}

fn send(server: &ServerProc, c: &Call) -> Response {
    let admin = server.admin.unwrap();
    let mut http = Http::connect(admin);
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}Content-Length: {}\r\n\r\n",
        c.sent,
        c.path,
        c.headers,
        c.body.len()
    )
    .into_bytes();
    request.extend_from_slice(c.body);
    http.send(&request);
    // An event stream stays open: its head is the answer.
    http.response()
}

#[test]
fn the_description_is_valid_openapi() {
    let Some(validator) = tool("openapi-spec-validator", "openapi-spec-validator (pip)") else {
        return;
    };
    let out = Command::new(validator)
        .arg(repo().join(SPEC))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_documented_route_answers_as_documented() {
    let doc = spec();
    let server = ServerProc::start(&[("LIFELINE_ADMIN_TOKEN", TOKEN)]);
    let mut client = server.login("api");
    // A push whose receipt the receipt route reads (ids are not guessable).
    let pushed = send(
        &server,
        &call("/clients/{id}/push", "post", "/clients/api/push", b"r", 202),
    );
    let receipt = serde_json::from_str::<Value>(&pushed.text()).unwrap()["id"]
        .as_str()
        .expect("the push's id")
        .to_string();
    assert!(client.expect_frame().contains(">r</msg>"));
    let mut calls = vec![
        call("/healthz", "get", "/healthz", b"", 200),
        call("/metrics", "get", "/metrics", b"", 200),
        call("/clients", "get", "/clients?limit=10", b"", 200),
        call("/clients", "get", "/clients?limit=0", b"", 400),
        call("/clients/{id}", "get", "/clients/api", b"", 200),
        call("/clients/{id}", "get", "/clients/nobody", b"", 404),
        call("/clients/{id}", "delete", "/clients/nobody", b"", 404),
        call(
            "/clients/{id}/push",
            "post",
            "/clients/api/push",
            b"first",
            202,
        ),
        call(
            "/clients/{id}/push",
            "post",
            "/clients/api/push?wait_ack_ms=x",
            b"x",
            400,
        ),
        call(
            "/clients/{id}/push",
            "post",
            "/clients/nobody/push",
            b"x",
            404,
        ),
        call(
            "/clients/{id}/push",
            "post",
            "/clients/nobody/push?queue_ttl_ms=60000",
            b"x",
            202,
        ),
        call("/broadcast", "post", "/broadcast", b"all", 202),
        call(
            "/messages/{id}",
            "get",
            &format!("/messages/{receipt}"),
            b"",
            200,
        ),
        call("/messages/{id}", "get", "/messages/p-unknown-999", b"", 404),
        call("/events", "get", "/events", b"", 200),
        call("/events", "get", "/events?last_event_id=x", b"", 400),
    ];
    // Every operation without the token, and every path with a method it
    // does not serve.
    let paths = &doc["paths"];
    let mut operations = BTreeSet::new();
    for template in keys(paths) {
        let template = leak(template);
        let concrete = template.replace("{id}", "api");
        let methods: Vec<String> = keys(&paths[template])
            .into_iter()
            .filter(|m| m != "parameters")
            .collect();
        for method in &methods {
            let method = leak(method.clone());
            operations.insert((template, method));
            let needs_token = paths[template][method]["security"]
                .as_vec()
                .is_none_or(|s| !s.is_empty());
            if needs_token {
                let mut c = call(template, method, &concrete, b"", 401);
                c.headers.clear();
                calls.push(c);
            }
        }
        // A 405 is documented on the path's operations.
        let mut c = call(template, leak(methods[0].clone()), &concrete, b"", 405);
        c.sent = "PUT";
        calls.push(c);
    }
    // The kick last: it takes the client offline.
    calls.push(call("/clients/{id}", "delete", "/clients/api", b"", 204));

    let covered: BTreeSet<(&str, &str)> = calls.iter().map(|c| (c.template, c.method)).collect();
    assert_eq!(covered, operations, "every documented operation is called");

    for c in &calls {
        let r = send(&server, c);
        let what = format!("{} {} -> {}", c.sent, c.path, r.status);
        assert_eq!(r.status, c.expect, "{what}: {}", r.text());
        let operation = &paths[c.template][c.method];
        let documented = &operation["responses"][r.status.to_string().as_str()];
        assert!(
            !documented.is_badvalue(),
            "{what}: status not documented for {} {}",
            c.method,
            c.template
        );
        let documented = resolve(&doc, documented);
        let content = &documented["content"];
        let content_type = r.header("Content-Type").unwrap_or("").to_string();
        match keys(content).first() {
            None => assert!(
                r.body.is_empty() || r.status == 204,
                "{what}: body {}",
                r.text()
            ),
            Some(media) => {
                assert!(
                    content_type.starts_with(media.as_str()),
                    "{what}: {content_type} is not {media}"
                );
                if media == "application/json" {
                    conforms(&doc, &content[media.as_str()]["schema"], &r.json(), &what);
                }
            }
        }
        if r.status == 405 {
            assert!(r.header("Allow").is_some(), "{what}");
        }
        // The pushes to `api` arrive.
        if c.expect == 202 && c.path.starts_with("/clients/api/push") {
            assert!(client.expect_frame().contains(">first</msg>"));
        }
    }

    // Every route the server times is documented (and `other` is no route).
    let metrics = scrape_authorized(&server);
    let counted: BTreeSet<String> = metrics
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("lifeline_admin_request_duration_seconds_count{route=\""))
        .filter_map(|l| l.split('"').next())
        .filter(|r| *r != "other")
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<String> = keys(paths).into_iter().collect();
    assert_eq!(counted, documented);
}

/// Checks one answer against the operation's documented responses.
fn documented(doc: &Yaml, c: &Call, r: &Response) {
    let what = format!("{} {} -> {}", c.sent, c.path, r.status);
    assert_eq!(r.status, c.expect, "{what}: {}", r.text());
    let responses = &doc["paths"][c.template][c.method]["responses"];
    let documented = &responses[r.status.to_string().as_str()];
    assert!(!documented.is_badvalue(), "{what}: status not documented");
    let content = &resolve(doc, documented)["content"];
    if let Some(media) = keys(content).first() {
        if media == "application/json" {
            conforms(doc, &content[media.as_str()]["schema"], &r.json(), &what);
        }
    }
}

#[test]
fn cluster_answers_are_documented() {
    use cluster_common::{node, wait_for, Admin, RedisProc};
    let doc = spec();
    let Some(mut redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", 3000, &[]);
    let b = node(&redis.url(), "node-b", 3000, &[]);
    let mut far = b.login("far");
    let _near = a.login("near");
    wait_for("both in Redis", std::time::Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    let pushed = send(
        &a,
        &call("/clients/{id}/push", "post", "/clients/far/push", b"x", 202),
    );
    let mid = pushed.json()["id"].as_str().unwrap().to_string();
    assert!(far.expect_frame().ends_with(">x</msg>"));
    for c in [
        call("/clients", "get", "/clients", b"", 200),
        call("/clients/{id}", "get", "/clients/far", b"", 200),
        call("/clients/{id}", "get", "/clients/near", b"", 200),
        call("/broadcast", "post", "/broadcast", b"all", 202),
        call(
            "/messages/{id}",
            "get",
            &format!("/messages/{mid}"),
            b"",
            200,
        ),
    ] {
        let r = send(&a, &c);
        documented(&doc, &c, &r);
        if c.path == "/clients/far" {
            assert_eq!(r.json()["node"], "node-b");
            assert!(r.json()["last_seen_ms_ago"].is_null());
        }
        if c.path == "/broadcast" {
            assert_eq!(r.json()["nodes"], 2);
        }
    }
    // Redis gone: what needs it is 503.
    redis.kill();
    let admin = Admin::new(&a);
    wait_for(
        "node-a sees Redis down",
        std::time::Duration::from_secs(5),
        || (admin.metric("lifeline_cluster_up") == 0.0).then_some(()),
    );
    for c in [
        call("/clients", "get", "/clients", b"", 503),
        call("/clients/{id}", "get", "/clients/far", b"", 503),
        call("/clients/{id}", "delete", "/clients/far", b"", 503),
        call("/clients/{id}/push", "post", "/clients/far/push", b"x", 503),
        call("/broadcast", "post", "/broadcast", b"all", 503),
        call(
            "/messages/{id}",
            "get",
            &format!("/messages/{mid}"),
            b"",
            503,
        ),
    ] {
        let r = send(&a, &c);
        documented(&doc, &c, &r);
        assert_eq!(r.json()["error"], "cluster-unavailable");
    }
}

/// The document's keys live as long as the test: `Call` borrows them.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn scrape_authorized(server: &ServerProc) -> opskit::Scrape {
    let r = opskit::request(
        server.admin.unwrap(),
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        b"",
    );
    assert_eq!(r.status, 200);
    opskit::Scrape::parse(r.text())
}
