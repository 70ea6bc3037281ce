//! The admin API's routes as a fixed set (for `405`'s `Allow` and for
//! metric labels), and what the admin API counts about itself: requests by
//! route with their latency (request parsed → response handed to the
//! socket), connections refused over the limit, event-ring resets.

use std::fmt::Write as _;
use std::time::Duration;

use crate::http::Method;

/// Upper bounds (seconds) of the admin request latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Every route of the admin API, plus `Other` (no such route, or a request
/// that could not be parsed far enough to tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Metrics,
    Clients,
    Client,
    Push,
    Broadcast,
    Message,
    Events,
    Other,
}

impl Route {
    pub const ALL: [Route; 9] = [
        Route::Healthz,
        Route::Metrics,
        Route::Clients,
        Route::Client,
        Route::Push,
        Route::Broadcast,
        Route::Message,
        Route::Events,
        Route::Other,
    ];

    /// The route a decoded path (its segments) names.
    pub fn of(segments: &[&str]) -> Route {
        match segments {
            ["healthz"] => Route::Healthz,
            ["metrics"] => Route::Metrics,
            ["clients"] => Route::Clients,
            ["clients", _] => Route::Client,
            ["clients", _, "push"] => Route::Push,
            ["broadcast"] => Route::Broadcast,
            ["messages", _] => Route::Message,
            ["events"] => Route::Events,
            _ => Route::Other,
        }
    }

    /// The `route` label: the path template, as the OpenAPI description names it.
    pub fn label(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Clients => "/clients",
            Route::Client => "/clients/{id}",
            Route::Push => "/clients/{id}/push",
            Route::Broadcast => "/broadcast",
            Route::Message => "/messages/{id}",
            Route::Events => "/events",
            Route::Other => "other",
        }
    }

    /// The methods the route serves (the `Allow` of a `405`); `None` for
    /// no route.
    pub fn allow(self) -> Option<&'static str> {
        match self {
            Route::Healthz | Route::Metrics | Route::Clients | Route::Message | Route::Events => {
                Some("GET")
            }
            Route::Client => Some("GET, DELETE"),
            Route::Push | Route::Broadcast => Some("POST"),
            Route::Other => None,
        }
    }

    pub fn serves(self, method: Method) -> bool {
        let name = match method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other => return false,
        };
        self.allow()
            .is_some_and(|allow| allow.split(", ").any(|m| m == name))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters the admin API keeps about itself.
#[derive(Debug, Default, Clone)]
pub struct AdminStats {
    /// Connections refused because `LIFELINE_ADMIN_MAX_CONNECTIONS` were open.
    pub refused_connections: u64,
    /// `event: reset` sent to presence stream consumers.
    pub event_resets: u64,
    latency: [[u64; LATENCY_BUCKETS.len()]; Route::ALL.len()],
    count: [u64; Route::ALL.len()],
    sum: [f64; Route::ALL.len()],
}

impl AdminStats {
    /// A request to `route` was answered `took` after it was parsed.
    pub fn answered(&mut self, route: Route, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = route.index();
        self.count[i] += 1;
        self.sum[i] += seconds;
        if let Some(b) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le) {
            self.latency[i][b] += 1;
        }
    }

    /// Requests answered for `route` so far.
    pub fn answered_count(&self, route: Route) -> u64 {
        self.count[route.index()]
    }

    /// The Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP lifeline_admin_connections_refused_total Admin connections refused (503) \
             because LIFELINE_ADMIN_MAX_CONNECTIONS were open.\n\
             # TYPE lifeline_admin_connections_refused_total counter\n\
             lifeline_admin_connections_refused_total {}\n\
             # HELP lifeline_event_resets_total Presence stream consumers sent `event: reset` \
             (what they missed had left the ring).\n\
             # TYPE lifeline_event_resets_total counter\n\
             lifeline_event_resets_total {}\n",
            self.refused_connections, self.event_resets
        );
        let name = "lifeline_admin_request_duration_seconds";
        let _ = write!(
            out,
            "# HELP {name} Admin API requests by route: from the request parsed to the response \
             handed to the socket (a push that waits for its ack includes the wait).\n\
             # TYPE {name} histogram\n"
        );
        for route in Route::ALL {
            let i = route.index();
            let label = route.label();
            let mut cumulative = 0;
            for (le, n) in LATENCY_BUCKETS.iter().zip(self.latency[i]) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = write!(
                out,
                "{name}_bucket{{route=\"{label}\",le=\"+Inf\"}} {count}\n\
                 {name}_sum{{route=\"{label}\"}} {sum}\n\
                 {name}_count{{route=\"{label}\"}} {count}\n",
                count = self.count[i],
                sum = self.sum[i],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_know_their_methods() {
        assert_eq!(Route::of(&["clients", "a b", "push"]), Route::Push);
        assert_eq!(Route::of(&["clients", "a", "b"]), Route::Other);
        assert_eq!(Route::of(&[]), Route::Other);
        assert!(Route::Client.serves(Method::Delete) && Route::Client.serves(Method::Get));
        assert!(!Route::Client.serves(Method::Post));
        assert!(!Route::Other.serves(Method::Get));
        assert_eq!(Route::Push.allow(), Some("POST"));
    }

    #[test]
    fn latency_is_counted_per_route() {
        let mut stats = AdminStats::default();
        stats.answered(Route::Push, Duration::from_millis(3));
        stats.answered(Route::Push, Duration::from_secs(9));
        assert_eq!(stats.answered_count(Route::Push), 2);
        let mut text = String::new();
        stats.render(&mut text);
        let line = |l: &str| text.lines().any(|x| x == l);
        assert!(line("lifeline_admin_request_duration_seconds_bucket{route=\"/clients/{id}/push\",le=\"0.0025\"} 0"));
        assert!(line("lifeline_admin_request_duration_seconds_bucket{route=\"/clients/{id}/push\",le=\"0.005\"} 1"));
        assert!(line("lifeline_admin_request_duration_seconds_bucket{route=\"/clients/{id}/push\",le=\"+Inf\"} 2"));
        assert!(line(
            "lifeline_admin_request_duration_seconds_count{route=\"/healthz\"} 0"
        ));
    }
}
