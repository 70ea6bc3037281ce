//! TLS on the client port, as the loop sees it: a TLS state for every
//! accepted connection, ciphertext in and plaintext on to the usual read
//! path, the handshake limit, the login check against a client
//! certificate, reload on SIGHUP, and failures logged at a bounded rate.
//!
//! The TLS state machine itself is `tls.rs`; the files and certificate
//! names are the `crate::tls` module.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use rustls::ServerConfig;

use crate::server::conn::{ClientConn, CloseReason, ConnRef};
use crate::server::core::{Core, Fate};
use crate::server::tls::{Handshake, Received, TlsConn, TlsFailed};
use crate::tls::{self as files, TlsFiles, TlsSettings};

/// TLS failures (refused handshakes, bad records) are logged at most this
/// often, with a count of the ones in between: a scan or a storm of
/// misconfigured clients cannot flood the log.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

/// The loop's TLS side.
pub(super) struct TlsRuntime {
    files: TlsFiles,
    /// What new handshakes start from; replaced on SIGHUP, while
    /// established connections keep the configuration they began with.
    config: Arc<ServerConfig>,
    id_from_cert: bool,
    max_handshakes: usize,
    /// Handshakes in progress (accepted, not yet finished or ended).
    handshaking: usize,
    /// Loop-wide plaintext buffer: what one read decrypted.
    plain: Vec<u8>,
    failures: FailureLog,
    stats: TlsStats,
}

/// TLS counters for the metrics endpoint.
#[derive(Debug, Default, Clone, Copy)]
struct TlsStats {
    full: u64,
    resumed: u64,
    failed: u64,
    reloads: u64,
    reload_failures: u64,
}

impl TlsRuntime {
    pub(super) fn new(settings: TlsSettings) -> TlsRuntime {
        TlsRuntime {
            files: settings.files,
            config: settings.loaded,
            id_from_cert: settings.id_from_cert,
            max_handshakes: settings.max_handshakes,
            handshaking: 0,
            plain: Vec::new(),
            failures: FailureLog::default(),
            stats: TlsStats::default(),
        }
    }
}

impl Core {
    /// Gives a freshly accepted connection its TLS state, on a TLS listener.
    /// False when that fails (the connection is then to be dropped).
    pub(super) fn attach_tls(&mut self, conn: ConnRef) -> bool {
        let Some(rt) = &mut self.tls else {
            return true;
        };
        let Some(c) = self.clients.get_mut(conn) else {
            return false;
        };
        match TlsConn::new(rt.config.clone()) {
            Ok(tls) => {
                c.tls = Some(Box::new(tls));
                rt.handshaking += 1;
                true
            }
            Err(e) => {
                warn!("cannot start TLS for {}: {e}", c.peer);
                false
            }
        }
    }

    /// How many more connections may begin a handshake now; unbounded
    /// without TLS. Past the limit, new connections wait in the listen
    /// backlog, so a storm of handshakes cannot take the loop from the
    /// heartbeats of established clients.
    pub fn handshake_room(&self) -> usize {
        self.tls.as_ref().map_or(usize::MAX, |rt| {
            rt.max_handshakes.saturating_sub(rt.handshaking)
        })
    }

    /// Serves the ciphertext a read brought: rustls decrypts it (answering
    /// handshake flights through the outbound path's one write), and the
    /// plaintext goes on to the usual read path.
    pub(super) fn consume_tls(&mut self, conn: ConnRef, bytes: &mut [u8]) -> Fate {
        let Some(rt) = &mut self.tls else {
            return Fate::Keep;
        };
        let mut plain = std::mem::take(&mut rt.plain);
        plain.clear();
        let fate = match self.clients.tls_receive(conn, bytes, &mut plain) {
            None => Fate::Keep,
            Some(Err(e)) => {
                self.tls_failed(conn, &e);
                Fate::End(CloseReason::Tls)
            }
            Some(Ok(received)) => {
                self.note_handshake(conn);
                let fate = if plain.is_empty() {
                    Fate::Keep
                } else {
                    self.consume(conn, &mut plain)
                };
                match (fate, received) {
                    (Fate::Keep, Received::PeerClosed) => Fate::End(CloseReason::PeerClosed),
                    (fate, _) => fate,
                }
            }
        };
        if let Some(rt) = &mut self.tls {
            plain.clear();
            rt.plain = plain;
        }
        fate
    }

    /// Counts a handshake that finished, which frees its place under the limit.
    fn note_handshake(&mut self, conn: ConnRef) {
        let (Some(rt), Some(c)) = (&mut self.tls, self.clients.get_mut(conn)) else {
            return;
        };
        let Some(tls) = c.tls.as_mut() else {
            return;
        };
        let Some(kind) = tls.take_finished_handshake() else {
            return;
        };
        rt.handshaking = rt.handshaking.saturating_sub(1);
        match kind {
            Handshake::Full => rt.stats.full += 1,
            Handshake::Resumed => rt.stats.resumed += 1,
        }
        debug!(
            "connection {} from {}: TLS handshake done ({kind:?})",
            c.generation, c.peer
        );
    }

    fn tls_failed(&mut self, conn: ConnRef, e: &TlsFailed) {
        let (Some(rt), Some(c)) = (&mut self.tls, self.clients.get(conn)) else {
            return;
        };
        rt.stats.failed += 1;
        let now = self.clock.now();
        let stage = if c.tls_handshaking() {
            "handshake"
        } else {
            "connection"
        };
        rt.failures.report(now, |suppressed| {
            warn!(
                "TLS {stage} with {} failed: {e} ({suppressed} more TLS failures since the last report)",
                c.peer
            )
        });
    }

    /// A connection leaves the table: a handshake it had in progress no
    /// longer counts against the limit.
    pub(super) fn tls_released(&mut self, c: &ClientConn) {
        if let Some(rt) = &mut self.tls {
            if c.tls_handshaking() {
                rt.handshaking = rt.handshaking.saturating_sub(1);
            }
        }
    }

    /// With `LIFELINE_TLS_ID_FROM_CERT=1`: why `id` may not log in on
    /// `conn` (it is not a name its client certificate vouches for), or
    /// `None` when it may.
    pub(super) fn cert_refuses(&self, conn: ConnRef, id: &str) -> Option<String> {
        self.tls.as_ref().filter(|rt| rt.id_from_cert)?;
        let Some(cert) = self
            .clients
            .get(conn)
            .and_then(|c| c.tls.as_ref())
            .and_then(|tls| tls.peer_certificate())
        else {
            return Some("a client certificate is required to log in".to_string());
        };
        match files::cert_names(cert) {
            Ok(names) if names.allows(id) => None,
            Ok(_) => Some(
                "the id must be the client certificate's common name or one of its DNS names"
                    .to_string(),
            ),
            Err(e) => Some(format!("the client certificate cannot be read: {e}")),
        }
    }

    /// SIGHUP: reads the certificate, key and client CA again. New
    /// handshakes use them; established connections keep theirs; a file
    /// that does not load leaves the current configuration in force.
    pub fn reload_tls(&mut self) {
        let Some(rt) = &mut self.tls else {
            info!("SIGHUP: TLS is not configured, nothing to reload");
            return;
        };
        match files::load(&rt.files) {
            Ok(config) => {
                rt.config = config;
                rt.stats.reloads += 1;
                info!(
                    "TLS reloaded from {} and {}: new handshakes use them",
                    rt.files.cert.display(),
                    rt.files.key.display()
                );
            }
            Err(e) => {
                rt.stats.reload_failures += 1;
                error!("TLS reload failed, the current certificate stays in use: {e}");
            }
        }
    }

    /// Appends the TLS counters to the Prometheus text.
    pub(super) fn render_tls_metrics(&self, out: &mut String) {
        let Some(rt) = &self.tls else {
            return;
        };
        let s = rt.stats;
        let _ = write!(
            out,
            "# HELP lifeline_tls_handshakes_total TLS handshakes finished, by kind.\n\
             # TYPE lifeline_tls_handshakes_total counter\n\
             lifeline_tls_handshakes_total{{kind=\"full\"}} {}\n\
             lifeline_tls_handshakes_total{{kind=\"resumed\"}} {}\n\
             # HELP lifeline_tls_failures_total TLS handshakes refused and connections failed by TLS.\n\
             # TYPE lifeline_tls_failures_total counter\n\
             lifeline_tls_failures_total {}\n\
             # HELP lifeline_tls_handshakes_in_progress TLS handshakes begun and not finished.\n\
             # TYPE lifeline_tls_handshakes_in_progress gauge\n\
             lifeline_tls_handshakes_in_progress {}\n\
             # HELP lifeline_tls_reloads_total SIGHUP reloads of the TLS files, by result.\n\
             # TYPE lifeline_tls_reloads_total counter\n\
             lifeline_tls_reloads_total{{result=\"ok\"}} {}\n\
             lifeline_tls_reloads_total{{result=\"failed\"}} {}\n",
            s.full, s.resumed, s.failed, rt.handshaking, s.reloads, s.reload_failures
        );
    }
}

/// Logs at most once per [`FAILURE_LOG_EVERY`], counting the rest.
#[derive(Debug, Default)]
struct FailureLog {
    logged_at: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    fn report(&mut self, now: Instant, log: impl FnOnce(u64)) {
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < FAILURE_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        log(std::mem::take(&mut self.suppressed));
        self.logged_at = Some(now);
    }
}
