//! `lifeline`: parse configuration, set up logging, run the server.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use lifeline::config::Config;
use lifeline::logging::Logger;
use lifeline::notify;
use lifeline::server::Server;

fn main() {
    // `lifeline upgrade --pid PID`: signal a running server, no server here.
    if std::env::args_os().nth(1).is_some_and(|a| a == "upgrade") {
        let args = std::env::args_os().skip(1);
        std::process::exit(lifeline::server::handover::command::run(args));
    }
    lifeline::server::handover::remember_start_path();
    let config = Config::from_env_and_args();
    let logger = Logger::new(config.log.clone(), config.ops.log_format);
    if let Err(e) = logger.init() {
        eprintln!("lifeline: cannot set up logging: {e}");
    }
    if let Some(n) = config.workers {
        std::process::exit(lifeline::workers::supervise(&config, n));
    }
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("lifeline: {e}");
            std::process::exit(1);
        }
    };
    // The listeners are bound: from here on a client's connect is queued
    // even before the loop runs, so the service manager may call it ready.
    // (A process an upgrade started said MAINPID= and READY=1 already.)
    if server.taken_over_from().is_none() {
        notify::ready(&format!("listening on {}", server.local_addr()));
    }
    if let Err(e) = server.run() {
        eprintln!("lifeline: {e}");
        std::process::exit(1);
    }
}
