//! `lifeline`: parse configuration, set up logging, run the server.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use lifeline::config::Config;
use lifeline::server::Server;

fn main() {
    let config = Config::from_env_and_args();
    let logger = simple_logger::SimpleLogger::new()
        .with_level(config.log)
        .with_utc_timestamps();
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
    if let Err(e) = server.run() {
        eprintln!("lifeline: {e}");
        std::process::exit(1);
    }
}
