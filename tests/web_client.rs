//! The browser client package (`web/`) checked with its own tools, as part of
//! `cargo test`: the Node test suite against this build's server binary, and
//! `tsc --noEmit --strict` on a file that uses the whole typed API.
//!
//! Needs Node >= 20.10 (its WebSocket) and, for tsc, `web/node_modules` from
//! `npm ci`; nothing is fetched here. Without them the tests print `SKIPPED`
//! and pass, except under CI (env `CI` set), where they fail (tests/node).

mod node;

use std::process::Command;

#[test]
fn the_node_suite_passes_against_the_real_server() {
    let what = "the web client's Node suite";
    if !node::available(what) {
        return;
    }
    // The suite imports only Node built-ins and the package itself (by its
    // own name), so it runs without node_modules.
    let output = Command::new("node")
        .args([
            "--test",
            "--experimental-websocket",
            "--test-reporter=spec",
            "test/unit.test.mjs",
            "test/server.test.mjs",
        ])
        .current_dir(node::web_dir())
        .env("LIFELINE_BIN", env!("CARGO_BIN_EXE_lifeline"))
        .output()
        .expect("run node");
    node::assert_success(what, &output);
}

#[test]
fn the_type_declarations_compile_under_strict_typescript() {
    let what = "tsc on web/test/types-check.ts";
    if !node::available(what) || !node::dev_tools_installed(what) {
        return;
    }
    // `--no`: use web/node_modules' tsc or fail, never download one.
    let output = match Command::new("npx")
        .args([
            "--no",
            "--",
            "tsc",
            "--project",
            "tsconfig.json",
            "--noEmit",
            "--strict",
        ])
        .current_dir(node::web_dir())
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            node::unavailable(what, &format!("no `npx` on PATH ({e})"));
            return;
        }
    };
    node::assert_success(what, &output);
}
