//! `lifeline upgrade --pid PID`: sends the running server `SIGUSR2` and
//! waits for it to exit, which it does only once the new process has taken
//! every client. A server still running when the wait ends kept its clients
//! (its log says why).

use std::time::{Duration, Instant};

use clap::Parser;
use rustix::process::{kill_process, test_kill_process, Pid, Signal};

#[derive(Parser, Debug)]
#[command(
    name = "lifeline upgrade",
    about = "Asks a running lifeline to hand every client to a new binary (SIGUSR2) \
             and waits until it has."
)]
struct UpgradeArgs {
    /// The pid of the running server.
    #[arg(long)]
    pid: i32,
    /// How long to wait for it to hand over and exit, in ms.
    #[arg(long, default_value_t = 15_000)]
    wait_ms: u64,
}

/// Runs the subcommand on `args` (after `upgrade`); returns the exit code.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args = match UpgradeArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!("lifeline upgrade: {first} (see lifeline upgrade --help)");
            return 2;
        }
    };
    let Some(pid) = Pid::from_raw(args.pid).filter(|_| args.pid > 1) else {
        eprintln!(
            "lifeline upgrade: bad value {} for --pid: expected a process id above 1",
            args.pid
        );
        return 2;
    };
    if let Err(e) = kill_process(pid, Signal::USR2) {
        eprintln!("lifeline upgrade: cannot signal pid {}: {e}", args.pid);
        return 1;
    }
    let until = Instant::now() + Duration::from_millis(args.wait_ms);
    while Instant::now() < until {
        if !running(pid) {
            println!(
                "pid {} handed its clients over and exited; GET /healthz names the pid serving now",
                args.pid
            );
            return 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "lifeline upgrade: pid {} still runs after {} ms: it kept its clients (its log says why)",
        args.pid, args.wait_ms
    );
    1
}

/// Whether `pid` still runs (an exited process its parent has not reaped
/// yet counts as gone).
fn running(pid: Pid) -> bool {
    if test_kill_process(pid).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()));
    // The state follows the parenthesised command name.
    !stat.is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}
