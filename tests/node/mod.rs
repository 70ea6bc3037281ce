//! Node.js for the tests that drive JavaScript (`web/`): whether a usable
//! `node` is on PATH, and the one rule for when it is not. On a developer's
//! machine a missing tool skips the test with `SKIPPED: ...`; in CI (env `CI`
//! set), where `.ci/run` installs Node and runs `npm ci` in `web/`, it fails,
//! so a green CI run always means the JavaScript was tested.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Node 20.10 is the first with a WebSocket (behind `--experimental-websocket`).
pub const MIN_NODE: (u32, u32) = (20, 10);

/// The package directory of the browser client.
pub fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// True when `node` >= [`MIN_NODE`] runs; otherwise applies [`unavailable`].
pub fn available(what: &str) -> bool {
    let version = match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => {
            return unavailable(
                what,
                &format!(
                    "`node --version` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
        }
        Err(e) => {
            return unavailable(
                what,
                &format!(
                    "no `node` on PATH ({e}); install Node >= {}.{}",
                    MIN_NODE.0, MIN_NODE.1
                ),
            )
        }
    };
    match parse_version(&version) {
        Some(found) if found >= MIN_NODE => true,
        _ => unavailable(
            what,
            &format!(
                "node {version} is older than {}.{} (its WebSocket is needed)",
                MIN_NODE.0, MIN_NODE.1
            ),
        ),
    }
}

/// True when `web/node_modules` holds the dev tools `npm ci` installs;
/// otherwise applies [`unavailable`].
pub fn dev_tools_installed(what: &str) -> bool {
    let tsc = web_dir().join("node_modules/typescript/bin/tsc");
    tsc.is_file()
        || unavailable(
            what,
            &format!("{} is missing (run `npm ci` in web/)", tsc.display()),
        )
}

/// A tool `what` needs is missing, for `why`: fails under CI, else skips.
pub fn unavailable(what: &str, why: &str) -> bool {
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "{what}: {why}. CI must provide it: .ci/run installs Node (Debian nodejs and npm) \
         and runs `npm ci` in web/"
    );
    println!("SKIPPED: {what}: {why}");
    false
}

/// "v20.20.2" -> (20, 20).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Prints a finished tool's output (cargo shows it when the test fails, or
/// with --nocapture) and asserts that it exited 0.
pub fn assert_success(what: &str, output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- {what}: stdout\n{stdout}\n--- {what}: stderr\n{stderr}");
    assert!(
        output.status.success(),
        "{what} failed ({}); its output is printed above",
        output.status
    );
}
