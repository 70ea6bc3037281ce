//! The Java client (`clients/java`) against the real binary: builds it with
//! `clients/java/build.sh` (javac only) and runs its JUnit 5 suite, which
//! starts this crate's `lifeline` binary itself, on ports the OS picks.
//!
//! Needs a JDK (javac, java, jar) and Debian's `junit5` jars (in
//! /usr/share/java, or `JUNIT_DIR`). Without them the test prints SKIPPED
//! and passes, unless `CI` is set: `.ci/run` installs both, so there a
//! missing piece is a failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The jars build.sh compiles and runs the tests with.
const JUNIT_JARS: [&str; 4] = [
    "junit-platform-console-standalone.jar",
    "junit-jupiter-api.jar",
    "apiguardian-api.jar",
    "opentest4j.jar",
];
/// The suite takes about 20 s; a run near this bound has hung.
const SUITE_LIMIT: Duration = Duration::from_secs(240);
/// After SIGTERM, how long the JVM gets to run its shutdown hook (which kills
/// the servers it started) before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// `name` as found on `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn junit_dir() -> PathBuf {
    std::env::var_os("JUNIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java"))
}

/// What is missing to build and run the suite, each with how to get it.
fn missing_prerequisites(junit: &Path) -> Vec<String> {
    let mut missing: Vec<String> = ["javac", "java", "jar"]
        .into_iter()
        .filter(|tool| on_path(tool).is_none())
        .map(|tool| format!("{tool} (apt-get install default-jdk-headless)"))
        .collect();
    if on_path("bash").is_none() {
        missing.push("bash".to_string());
    }
    missing.extend(
        JUNIT_JARS
            .iter()
            .map(|jar| junit.join(jar))
            .filter(|jar| !jar.is_file())
            .map(|jar| format!("{} (apt-get install junit5)", jar.display())),
    );
    missing
}

/// Reads a child's pipe to the end on its own thread, so neither pipe can
/// fill up and stall the child while the other is read.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only cuts the transcript short; the exit status decides.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` until `limit`; past it, SIGTERM, then SIGKILL. `None` if
/// it had to be stopped.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for the Java suite") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let grace_end = Instant::now() + TERM_GRACE;
    while Instant::now() < grace_end {
        if child.try_wait().expect("wait for the Java suite").is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn the_java_client_suite_passes_against_the_real_server() {
    let junit = junit_dir();
    let missing = missing_prerequisites(&junit);
    if !missing.is_empty() {
        let message = format!("the Java client test needs {}", missing.join(", "));
        assert!(
            std::env::var_os("CI").is_none(),
            "{message}; .ci/run installs them"
        );
        eprintln!("SKIPPED: {message}");
        return;
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/java/build.sh");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("test")
        .env("LIFELINE_BIN", env!("CARGO_BIN_EXE_lifeline"))
        .env("JUNIT_DIR", &junit)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_bounded(&mut child, SUITE_LIMIT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");

    println!("{stdout}");
    eprintln!("{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("the Java suite ran past {SUITE_LIMIT:?} and was stopped; its output is above")
    });
    assert!(
        status.success(),
        "the Java suite failed ({status}) after {:.1?}; its output is above",
        started.elapsed()
    );
    // build.sh passes --fail-if-no-tests; this also catches a script that
    // exited 0 without reaching the launcher.
    assert!(
        stdout.contains(" tests successful"),
        "no JUnit summary in the output above"
    );
}
