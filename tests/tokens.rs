//! Login tokens that expire, and key rotation, through real sockets against
//! the real binary: `<login id token exp>` with the token minted for
//! `ID|exp`, refused from `exp` on; the plain form still accepted unless
//! `LIFELINE_AUTH_REQUIRE_EXP=1`; two secrets in `LIFELINE_AUTH_SECRET`
//! (new, old), either of which passes; and the one-line refusal of a bad
//! setting.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{attr, Closed, ServerProc, WAIT};
use lifeline_wire::token::{mint, mint_expiring};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn login_frame(id: &str, token: &str, exp: Option<u64>) -> String {
    match exp {
        Some(exp) => format!("<login id=\"{id}\" token=\"{token}\" exp=\"{exp}\"/>"),
        None => format!("<login id=\"{id}\" token=\"{token}\"/>"),
    }
}

/// What the server answered a login with: the welcome, or the error frame
/// (after which it must have closed).
fn try_login(server: &ServerProc, frame: &str) -> Result<String, String> {
    let mut c = server.connect();
    c.send(frame);
    let first = c.expect_frame();
    if first.starts_with("<welcome ") {
        return Ok(first);
    }
    assert_eq!(
        c.wait_closed(WAIT),
        Closed::Yes(vec![]),
        "closed after {first}"
    );
    Err(first)
}

fn assert_refused(server: &ServerProc, frame: &str, id: &str, text: &str) {
    match try_login(server, frame) {
        Ok(welcome) => panic!("{frame} was welcomed: {welcome}"),
        Err(error) => {
            assert_eq!(
                attr(&error, "code").as_deref(),
                Some("auth-failed"),
                "{error}"
            );
            assert_eq!(attr(&error, "ref").as_deref(), Some(id), "{error}");
            assert!(error.contains(text), "{frame} → {error}, expected {text:?}");
        }
    }
}

#[test]
fn tokens_under_either_secret_pass_and_expired_or_forged_ones_do_not() {
    let server = ServerProc::start(&[("LIFELINE_AUTH_SECRET", "new-secret,old-secret")]);
    let later = unix_now() + 3600;
    for secret in [&b"new-secret"[..], b"old-secret"] {
        let plain = mint(secret, "alice");
        let welcome = try_login(&server, &login_frame("alice", &plain, None)).expect("plain");
        assert!(welcome.starts_with("<welcome id=\"alice\""), "{welcome}");
        let expiring = mint_expiring(secret, "alice", later);
        try_login(&server, &login_frame("alice", &expiring, Some(later))).expect("exp later");
    }
    // Another secret, garbage, another id's token, no token.
    let stranger = mint(b"stranger", "alice");
    assert_refused(
        &server,
        &login_frame("alice", &stranger, None),
        "alice",
        "wrong",
    );
    assert_refused(&server, &login_frame("alice", "zz", None), "alice", "wrong");
    let bobs = mint(b"new-secret", "bob");
    assert_refused(
        &server,
        &login_frame("alice", &bobs, None),
        "alice",
        "wrong",
    );
    assert_refused(&server, "<login id=\"alice\"/>", "alice", "wrong");
    // Expired: the MAC is right, the time is up.
    let past = unix_now() - 10;
    let stale = mint_expiring(b"old-secret", "alice", past);
    assert_refused(
        &server,
        &login_frame("alice", &stale, Some(past)),
        "alice",
        "expired",
    );
    // A later exp with a token minted for another: forged, not merely expired.
    assert_refused(
        &server,
        &login_frame("alice", &stale, Some(later)),
        "alice",
        "wrong",
    );
    // An expiring token without its exp, or a plain one with an exp: wrong.
    let expiring = mint_expiring(b"new-secret", "alice", later);
    assert_refused(
        &server,
        &login_frame("alice", &expiring, None),
        "alice",
        "wrong",
    );
    let plain = mint(b"new-secret", "alice");
    assert_refused(
        &server,
        &login_frame("alice", &plain, Some(later)),
        "alice",
        "wrong",
    );
    // A malformed exp is a bad frame, as any invalid attribute.
    let err = try_login(
        &server,
        &format!("<login id=\"alice\" token=\"{plain}\" exp=\"soon\"/>"),
    )
    .expect_err("refused");
    assert_eq!(attr(&err, "code").as_deref(), Some("bad-frame"), "{err}");
}

/// A token valid for one more second works now and is refused once its
/// second has come, by the same server, without a restart.
#[test]
fn a_token_stops_working_at_its_exp() {
    let server = ServerProc::start(&[("LIFELINE_AUTH_SECRET", "s")]);
    let exp = unix_now() + 2;
    let token = mint_expiring(b"s", "ivy", exp);
    let frame = login_frame("ivy", &token, Some(exp));
    try_login(&server, &frame).expect("valid until its exp");
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        match try_login(&server, &frame) {
            Ok(_) => {
                // Not refused while the wall clock is before exp (1 s slack
                // for the server's clock, read once per loop iteration).
                assert!(
                    unix_now() <= exp,
                    "still accepted at {} (exp {exp})",
                    unix_now()
                );
                assert!(Instant::now() < deadline, "never refused");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                assert!(error.contains("expired"), "{error}");
                assert!(
                    unix_now() + 1 >= exp,
                    "refused early: {} < {exp}",
                    unix_now()
                );
                break;
            }
        }
    }
}

#[test]
fn requiring_exp_refuses_plain_tokens() {
    let server = ServerProc::start(&[
        ("LIFELINE_AUTH_SECRET", "s"),
        ("LIFELINE_AUTH_REQUIRE_EXP", "1"),
    ]);
    let plain = mint(b"s", "joe");
    assert_refused(&server, &login_frame("joe", &plain, None), "joe", "exp");
    let later = unix_now() + 60;
    let expiring = mint_expiring(b"s", "joe", later);
    try_login(&server, &login_frame("joe", &expiring, Some(later))).expect("with exp");
}

#[test]
fn without_a_secret_token_and_exp_are_ignored() {
    let server = ServerProc::start(&[]);
    let past = unix_now() - 10;
    try_login(&server, &login_frame("kim", "anything", Some(past))).expect("no secret, no check");
}

/// The lines docs/PROTOCOL.md gives a back end to mint a token, run as
/// written (bash and openssl), make a login this server takes.
#[test]
fn the_documented_openssl_lines_mint_a_token_the_server_takes() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is missing (apt-get install openssl)"
        );
        eprintln!("SKIPPED: no openssl on PATH");
        return;
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let script = doc
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("openssl dgst"))
        .expect("a sh block with openssl in docs/PROTOCOL.md");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("SECRET", "s3cret")
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let login = String::from_utf8(out.stdout).expect("UTF-8");
    let server = ServerProc::start(&[("LIFELINE_AUTH_SECRET", "s3cret")]);
    let welcome = try_login(&server, login.trim()).expect("the documented token logs in");
    assert!(welcome.starts_with("<welcome id=\"alice\""), "{welcome}");
}

/// Runs the binary with `env`; its exit code and stderr.
fn refused_setting(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.env_clear()
        .env("LIFELINE_LISTEN", "127.0.0.1:0")
        .env("LIFELINE_ADMIN_ADDR", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lifeline");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_auth_settings_are_one_line_and_exit_2_without_echoing_the_secret() {
    for (env, var) in [
        (
            vec![("LIFELINE_AUTH_SECRET", "hunter2,old,older")],
            "LIFELINE_AUTH_SECRET",
        ),
        (
            vec![("LIFELINE_AUTH_SECRET", "hunter2,")],
            "LIFELINE_AUTH_SECRET",
        ),
        (
            vec![("LIFELINE_AUTH_REQUIRE_EXP", "1")],
            "LIFELINE_AUTH_REQUIRE_EXP",
        ),
        (
            vec![
                ("LIFELINE_AUTH_SECRET", "s"),
                ("LIFELINE_AUTH_REQUIRE_EXP", "yes"),
            ],
            "LIFELINE_AUTH_REQUIRE_EXP",
        ),
    ] {
        let (code, stderr) = refused_setting(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(var), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the secret was echoed: {stderr}"
        );
    }
}
