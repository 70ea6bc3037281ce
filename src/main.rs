//! `lifeline`: parse configuration, set up logging, run the server.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use lifeline::config::Config;
use lifeline::server::Server;

fn main() {
    // `lifeline upgrade --pid PID`: signal a running server, no server here.
    if std::env::args_os().nth(1).is_some_and(|a| a == "upgrade") {
        let args = std::env::args_os().skip(1);
        std::process::exit(lifeline::server::handover::command::run(args));
    }
    lifeline::server::handover::remember_start_path();
    let config = Config::from_env_and_args();
    let logger = simple_logger::SimpleLogger::new()
        .with_level(config.log)
        .with_utc_timestamps();
    if let Err(e) = logger.init() {
        eprintln!("lifeline: cannot set up logging: {e}");
    }
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("lifeline: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = server.run() {
        eprintln!("lifeline: {e}");
        std::process::exit(1);
    }
}
