//! TLS client settings for control and data connections.
//!
//! vsftpd's `require_ssl_reuse=YES` insists that every data connection resumes the TLS session
//! of *its own* control connection. rustls keeps resumption state in the `ClientConfig`, keyed
//! by server name, so connections that share one config would hand each other's tickets to
//! their data connections (rclone#7234). Every control connection therefore gets its own
//! config clone with a private session store, shared only with its data connections.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use suppaftp::{FtpResult, RustlsConnector, TlsConnector};

use crate::error::RemoteError;

/// Which certificates to trust and which TLS versions to offer.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_file: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub tls12_only: bool,
}

/// Builds the template config that per-connection configs are cloned from.
pub fn base_config(opts: &TlsOptions) -> Result<ClientConfig, RemoteError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if opts.tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| RemoteError::Tls(format!("TLS setup: {e}")))?;
    let config = if opts.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnything(provider))).with_no_client_auth()
    } else {
        let roots = match &opts.ca_file {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// A config for one control connection and its data connections, with its own session store.
pub fn per_connection(base: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = base.clone();
    // Eight TLS 1.3 tickets: servers send two per handshake and each resumed data connection
    // refills the store, so one control connection never runs dry between transfers.
    config.resumption = Resumption::in_memory_sessions(8);
    Arc::new(config)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, RemoteError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| RemoteError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| RemoteError::Tls(format!("bad PEM in CA file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| RemoteError::Tls(format!("bad certificate in {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(RemoteError::Tls(format!("no certificates in CA file {}", path.display())));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, RemoteError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(RemoteError::Tls(
            "no system CA certificates found (install ca-certificates or pass --ca-file)".into(),
        ));
    }
    Ok(roots)
}

/// Wraps suppaftp's rustls connector so every socket that becomes TLS (control, and each data
/// connection) carries read and write timeouts: a stalled server then fails a read instead of
/// hanging it, including during the handshake and the welcome banner.
pub struct TimeoutConnector {
    inner: RustlsConnector,
    timeout: Duration,
    /// Where to keep a wall-clock deadline armed on the first socket (the control connection
    /// of an implicit-TLS login, whose greeting suppaftp reads before handing it back).
    first: Option<(LoginGuard, Duration)>,
    first_seen: std::sync::atomic::AtomicBool,
}

/// The login's deadline, disarmed by the caller once logged in.
pub type LoginGuard = Arc<parking_lot::Mutex<Option<super::watchdog::Armed>>>;

impl std::fmt::Debug for TimeoutConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutConnector").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl TimeoutConnector {
    pub fn new(config: Arc<ClientConfig>, timeout: Duration) -> Self {
        TimeoutConnector { inner: RustlsConnector::from(config), timeout, first: None, first_seen: Default::default() }
    }

    /// Arms `limit` on the first socket this connector secures, unless a deadline is armed in
    /// `guard` already.
    pub fn guard_first(mut self, guard: LoginGuard, limit: Duration) -> Self {
        self.first = Some((guard, limit));
        self
    }
}

impl TlsConnector for TimeoutConnector {
    type Stream = <RustlsConnector as TlsConnector>::Stream;

    fn connect(&self, domain: &str, stream: TcpStream) -> FtpResult<Self::Stream> {
        finish_connect(&stream, self.timeout).map_err(suppaftp::FtpError::ConnectionError)?;
        // Only the very first socket is the control connection; a deadline left armed on a
        // data socket would also keep a clone of it open, so closing it would not end the
        // transfer.
        if let Some((guard, limit)) = &self.first
            && !self.first_seen.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut slot = guard.lock();
            if slot.is_none() {
                *slot = super::watchdog::arm(&stream, *limit);
            }
        }
        stream.set_read_timeout(Some(self.timeout)).map_err(suppaftp::FtpError::ConnectionError)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(suppaftp::FtpError::ConnectionError)?;
        self.inner.connect(domain, stream)
    }
}

/// Waits for a connect started without blocking (data connections) to complete; a socket
/// that is already connected passes straight through.
fn finish_connect(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for a socket we own, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
    if ready < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if ready == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "data connection not established in time"));
    }
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    stream.set_nonblocking(false)
}

/// `--insecure`: accepts any certificate but still checks handshake signatures, so the
/// connection is encrypted, just not authenticated.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
