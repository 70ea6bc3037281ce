//! Cluster mode's settings (`config.rs` flattens [`ClusterArgs`] into its
//! flags): the Redis URL, the node's id and liveness TTL, and `--workers`.
//! A bad value stops the start with the usual one line naming the variable
//! (exit 2).

use std::time::Duration;

use crate::cluster::{url, ClusterConfig};
use crate::config::{int_in, ConfigError};

/// Raw settings as clap collects them (flattened into `RawConfig`).
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Cluster mode: Redis URL, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (host resolved once at start); unset: standalone.
    #[arg(long, env = "LIFELINE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Cluster mode: this node's id (letters, digits, - _ . :) [default: host name-pid].
    #[arg(long, env = "LIFELINE_NODE_ID")]
    pub node_id: Option<String>,

    /// Cluster mode: a node that has not refreshed its liveness in Redis this long is dead; its clients go offline (node-lost) [300..=600000].
    #[arg(long, env = "LIFELINE_NODE_TTL_MS", default_value = "10000")]
    pub node_ttl_ms: String,

    /// Run N worker processes sharing the ports (SO_REUSEPORT), each its own node (id: NODE_ID-wK), supervised by this one; needs LIFELINE_REDIS_URL [1..=256].
    #[arg(long, env = "LIFELINE_WORKERS")]
    pub workers: Option<String>,
}

/// The validated cluster settings: cluster mode (when `LIFELINE_REDIS_URL`
/// is set) and the worker count (`--workers`, only with it). `backlog`:
/// `LIFELINE_EVENT_BACKLOG`, which trims the cluster's event stream too.
pub fn settings(
    raw: &ClusterArgs,
    backlog: usize,
) -> Result<(Option<ClusterConfig>, Option<u32>), ConfigError> {
    let workers = match &raw.workers {
        None => None,
        Some(v) => Some(int_in(v, 1, 256, "LIFELINE_WORKERS", "workers")? as u32),
    };
    let cluster = cluster(raw, backlog)?;
    if let (Some(_), None) = (workers, &cluster) {
        return Err(ConfigError {
            var: "LIFELINE_WORKERS",
            flag: "workers",
            value: raw.workers.clone().unwrap_or_default(),
            accepted: "a worker count together with LIFELINE_REDIS_URL (workers are \
                       cluster nodes: without Redis they could not see each other's clients)"
                .to_string(),
        });
    }
    Ok((cluster, workers))
}

fn cluster(raw: &ClusterArgs, backlog: usize) -> Result<Option<ClusterConfig>, ConfigError> {
    let ttl = int_in(
        &raw.node_ttl_ms,
        300,
        600_000,
        "LIFELINE_NODE_TTL_MS",
        "node-ttl-ms",
    )?;
    let Some(redis) = raw.redis_url.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let target = url::parse(redis).ok_or_else(|| ConfigError {
        var: "LIFELINE_REDIS_URL",
        flag: "redis-url",
        value: redis.to_string(),
        accepted: url::ACCEPTED.to_string(),
    })?;
    let node = match raw.node_id.as_deref().filter(|n| !n.is_empty()) {
        Some(n) if url::valid_node_id(n) => n.to_string(),
        Some(n) => {
            return Err(ConfigError {
                var: "LIFELINE_NODE_ID",
                flag: "node-id",
                value: n.to_string(),
                accepted: "1 to 64 letters, digits, '-', '_', '.' or ':'".to_string(),
            })
        }
        None => url::default_node_id(),
    };
    Ok(Some(ClusterConfig {
        target,
        node,
        ttl: Duration::from_millis(ttl),
        backlog,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Config, RawConfig};
    use std::time::Duration;

    fn validate(args: &[&str]) -> Result<Config, crate::config::ConfigError> {
        let mut argv = vec!["lifeline"];
        argv.extend_from_slice(args);
        Config::validate(&RawConfig::try_parse_from(argv).unwrap())
    }

    #[test]
    fn cluster_settings_are_checked() {
        let c = validate(&[]).unwrap();
        assert!(c.cluster.is_none());
        let e = validate(&["--redis-url", "localhost:6379"]).unwrap_err();
        assert_eq!(e.var, "LIFELINE_REDIS_URL");
        let e = validate(&["--redis-url", "redis://127.0.0.1:1", "--node-id", "a b"]).unwrap_err();
        assert_eq!(e.var, "LIFELINE_NODE_ID");
        let e = validate(&["--workers", "2"]).unwrap_err();
        assert_eq!(e.var, "LIFELINE_WORKERS");
        let c = validate(&[
            "--redis-url",
            "redis://127.0.0.1:6390/1",
            "--node-id",
            "n1",
            "--node-ttl-ms",
            "1500",
            "--workers",
            "3",
        ])
        .unwrap();
        assert_eq!(c.workers, Some(3));
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node, "n1");
        assert_eq!(cluster.ttl, Duration::from_millis(1500));
        assert_eq!(cluster.target.db, 1);
    }
}
