//! TLS test kit: a throw-away CA made with rcgen (server and client
//! certificates in a temporary directory the kit removes), a blocking
//! rustls client that speaks the protocol, and runners for the independent
//! clients (`openssl s_client`, Python's `ssl` module).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::common::{first_element_len, is_probe, Closed};

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A CA for one test, and the files it issued; the directory is removed
/// when the test ends, passed or not.
pub struct Pki {
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A client certificate and its key, as files and as rustls wants them.
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "lifeline-tls-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, ca_pem_text) = new_ca("Lifeline test CA");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca_pem_text).unwrap();
        let mut pki = Pki {
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
            ca,
            ca_pem,
        };
        pki.issue_server(1, &pki.server_cert.clone(), &pki.server_key.clone());
        pki
    }

    /// A server certificate for localhost and 127.0.0.1 with serial `serial`.
    pub fn issue_server(&mut self, serial: u64, cert: &Path, key: &Path) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let pair = KeyPair::generate().unwrap();
        let issued = params.signed_by(&pair, &self.ca).unwrap();
        std::fs::write(cert, issued.pem()).unwrap();
        std::fs::write(key, pair.serialize_pem()).unwrap();
    }

    /// A client certificate with common name `cn` and DNS names `dns`;
    /// `expired` dates it in the past.
    pub fn issue_client(&self, cn: &str, dns: &[&str], expired: bool) -> ClientCert {
        issue_client(&self.ca, &self.dir, cn, dns, expired)
    }

    /// A client certificate from another CA the server does not trust.
    pub fn issue_untrusted_client(&self, cn: &str) -> ClientCert {
        let (other, _) = new_ca("Someone else's CA");
        issue_client(&other, &self.dir, &format!("untrusted-{cn}"), &[], false)
    }

    /// The environment that turns TLS on with this CA's server certificate.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LIFELINE_TLS_CERT", path(&self.server_cert)),
            ("LIFELINE_TLS_KEY", path(&self.server_key)),
        ]
    }

    /// Roots that trust this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_pem).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

fn issue_client(
    ca: &Issuer<'static, KeyPair>,
    dir: &Path,
    cn: &str,
    dns: &[&str],
    expired: bool,
) -> ClientCert {
    let mut params =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let pair = KeyPair::generate().unwrap();
    let issued = params.signed_by(&pair, ca).unwrap();
    let tag = if expired { "expired-" } else { "" };
    let cert = dir.join(format!("client-{tag}{cn}.pem"));
    let key = dir.join(format!("client-{tag}{cn}.key"));
    std::fs::write(&cert, issued.pem()).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    ClientCert { cert, key }
}

// ---------------------------------------------------------------- rustls client

/// How a rustls test client connects.
#[derive(Clone)]
pub struct ClientOpts {
    pub roots: Arc<RootCertStore>,
    pub version: Option<&'static rustls::SupportedProtocolVersion>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A shared config keeps the session cache, so a second connection resumes.
    pub config: Option<Arc<ClientConfig>>,
}

impl ClientOpts {
    pub fn new(pki: &Pki) -> ClientOpts {
        ClientOpts {
            roots: Arc::new(pki.roots()),
            version: None,
            client_cert: None,
            config: None,
        }
    }

    pub fn version(mut self, v: &'static rustls::SupportedProtocolVersion) -> ClientOpts {
        self.version = Some(v);
        self
    }

    pub fn cert(mut self, c: &ClientCert) -> ClientOpts {
        self.client_cert = Some((c.cert.clone(), c.key.clone()));
        self
    }

    pub fn build(&self) -> Arc<ClientConfig> {
        if let Some(config) = &self.config {
            return config.clone();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match self.version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .unwrap()
            .with_root_certificates(self.roots.clone());
        Arc::new(match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        })
    }

    /// Keeps one config (and its session cache) for every connection made
    /// with these options from now on.
    pub fn shared(mut self) -> ClientOpts {
        self.config = Some(self.build());
        self
    }
}

/// A blocking protocol client over rustls.
pub struct TlsClient {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the handshake (within 5 s), or says why not.
    pub fn connect(addr: SocketAddr, opts: &ClientOpts) -> Result<TlsClient, String> {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(opts.build(), name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(TlsClient {
            tls,
            buf: Vec::new(),
        })
    }

    /// Connects, logs in as `id`, and expects the welcome.
    pub fn login(addr: SocketAddr, opts: &ClientOpts, id: &str) -> TlsClient {
        let mut c = TlsClient::connect(addr, opts).expect("TLS handshake");
        c.send(&format!("<login id=\"{id}\"/>"));
        let welcome = c.expect_frame();
        assert!(
            welcome.starts_with(&format!("<welcome id=\"{id}\"")),
            "expected a welcome, got {welcome}"
        );
        c
    }

    pub fn send(&mut self, text: &str) {
        self.tls.write_all(text.as_bytes()).expect("send over TLS");
        self.tls.flush().expect("flush TLS");
    }

    /// A ping answered by its pong (server probes before it are skipped:
    /// the client may have been silent for an interval).
    pub fn ping(&mut self, seq: u32) {
        self.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
        let pong = self.next_non_probe();
        assert_eq!(pong, format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>"));
    }

    pub fn expect_frame(&mut self) -> String {
        self.frame_within(Duration::from_secs(5))
            .expect("a frame within 5 s")
    }

    /// The next frame within 5 s that is not a server probe.
    pub fn next_non_probe(&mut self) -> String {
        loop {
            let frame = self.expect_frame();
            if !is_probe(&frame) {
                return frame;
            }
        }
    }

    pub fn frame_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            match self.fill(deadline) {
                Some(true) => {}
                _ => return None,
            }
        }
    }

    /// Reads until the server closes; the frames that came before.
    pub fn wait_closed(&mut self, timeout: Duration) -> Closed {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.take_frame() {
                frames.push(frame);
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => return Closed::Yes(frames),
                None => return Closed::Timeout,
            }
        }
    }

    /// The serial number of the certificate the server presented.
    pub fn server_serial(&self) -> Vec<u8> {
        let der = &self.tls.conn.peer_certificates().unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.raw_serial().to_vec()
    }

    /// Some(true): data; Some(false): closed (EOF, reset, alert); None: timed out.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        self.tls
            .sock
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 16384];
        match self.tls.read(&mut chunk) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(_) => Some(false),
        }
    }

    fn take_frame(&mut self) -> Option<String> {
        let text = std::str::from_utf8(&self.buf).ok()?;
        let start = text.len() - text.trim_start().len();
        let end = start + first_element_len(&text[start..])?;
        let frame = text[start..end].to_string();
        self.buf.drain(..end);
        Some(frame)
    }
}

// ---------------------------------------------------------- independent clients

/// Runs `openssl s_client` against `addr` with `args`, feeds it `input`,
/// keeps its standard input open until `expect` shows in its output (or
/// 5 s pass), and returns everything it printed.
pub fn openssl_session(addr: SocketAddr, args: &[&str], input: &str, expect: &str) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian package openssl)");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(expect) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a Python script (stdin) with `args`; returns its stdout, panicking
/// with its stderr if it failed or took more than 20 s.
pub fn python(script: &str, args: &[&str]) -> String {
    let mut child = Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                status.success(),
                "python failed: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return stdout;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("python did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
