//! TLS client settings for control and data connections.
//!
//! vsftpd's `require_ssl_reuse=YES` insists that every data connection resumes the TLS session
//! of *its own* control connection. rustls keeps resumption state in the `ClientConfig`, keyed
//! by server name, so connections that share one config would hand each other's tickets to
//! their data connections (rclone#7234). Every control connection therefore gets its own
//! config clone with a private session store, shared only with its data connections.
//!
//! Threads and locks: a `Handoff` slot is used by the one thread logging its connection in.
//! `KxHint` is a small mutex taken by any thread doing a handshake, never with another lock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme, StreamOwned,
};
use suppaftp::{FtpError, FtpResult, TlsConnector, TlsStream};

use super::wire::{Flights, Wire, set_timeouts};
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
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| RemoteError::Tls(format!("TLS setup: {e}")))?;
    let mut config = builder.dangerous().with_custom_certificate_verifier(verifier(opts)?).with_no_client_auth();
    // Data connections decrypt their own records once the handshake is done (`records.rs`).
    config.enable_secret_extraction = true;
    Ok(config)
}

/// How a server's certificate is checked: against `--ca-file` or the system's roots, or not
/// at all with `--insecure`. `mastfs check` wraps it to show the certificate it checked.
pub fn verifier(opts: &TlsOptions) -> Result<Arc<dyn ServerCertVerifier>, RemoteError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if opts.insecure {
        return Ok(Arc::new(AcceptAnything(provider)));
    }
    let roots = match &opts.ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| RemoteError::Tls(format!("TLS setup: {e}")))?;
    Ok(verifier)
}

/// The key-exchange group the server chose, learnt from the first TLS 1.3 handshake of any
/// connection and shared by the whole pool. vsftpd 3.0.3 under TLS 1.3 accepts only P-256,
/// while rustls offers X25519 first: without the hint every handshake would start with a
/// refused key share and a HelloRetryRequest, one more round trip each.
#[derive(Debug, Default)]
pub(crate) struct KxHint(Mutex<Option<NamedGroup>>);

/// One control connection's session store: its own tickets (never another connection's,
/// see above), plus the pool's key-exchange hint for a connection that has none yet.
#[derive(Debug)]
struct SessionStore {
    own: ClientSessionMemoryCache,
    shared: Arc<KxHint>,
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        *self.shared.0.lock() = Some(group);
        self.own.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.own.kx_hint(server_name).or(*self.shared.0.lock())
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.own.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.own.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.own.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.own.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.own.take_tls13_ticket(server_name)
    }
}

/// A config for one control connection and its data connections, with its own session store.
pub(crate) fn per_connection(base: &ClientConfig, kx: &Arc<KxHint>) -> Arc<ClientConfig> {
    let mut config = base.clone();
    // Eight TLS 1.3 tickets: servers send two per handshake and each resumed data connection
    // refills the store, so one control connection never runs dry between transfers.
    let store = SessionStore { own: ClientSessionMemoryCache::new(8), shared: Arc::clone(kx) };
    config.resumption = Resumption::store(Arc::new(store));
    Arc::new(config)
}

/// The server name certificates are checked against.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, RemoteError> {
    ServerName::try_from(host.to_string()).map_err(|e| RemoteError::Tls(format!("bad server name {host:?}: {e}")))
}

/// A TLS stream over a counted socket: the control connection (data connections are `DataTls`).
pub(crate) type TlsWire = StreamOwned<ClientConnection, Wire>;

/// The login's deadline, disarmed by the caller once logged in.
pub(crate) type LoginGuard = Arc<Mutex<Option<super::watchdog::Armed>>>;

/// Secures the control connection for suppaftp's login and then hands the TLS stream over to
/// mastfs's own control channel: suppaftp keeps only a handle into `slot`, so once its
/// `ImplFtpStream` is dropped (which sends nothing) the stream is ours, TLS state and all.
pub(crate) struct Handoff {
    config: Arc<ClientConfig>,
    flights: Arc<Flights>,
    timeout: Duration,
    slot: Arc<Mutex<Option<TlsWire>>>,
    /// Where to arm the login's wall-clock deadline on the socket, unless one is armed
    /// already (implicit TLS: suppaftp opens the socket and reads the greeting itself).
    guard: LoginGuard,
    limit: Duration,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Handoff {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        flights: Arc<Flights>,
        timeout: Duration,
        guard: LoginGuard,
        limit: Duration,
    ) -> (Handoff, Arc<Mutex<Option<TlsWire>>>) {
        let slot = Arc::new(Mutex::new(None));
        (Handoff { config, flights, timeout, slot: Arc::clone(&slot), guard, limit }, slot)
    }
}

impl TlsConnector for Handoff {
    type Stream = HandoffStream;

    fn connect(&self, domain: &str, stream: TcpStream) -> FtpResult<HandoffStream> {
        let mut slot = self.slot.lock();
        if slot.is_some() {
            // suppaftp only secures the control connection here; data connections are ours.
            return Err(FtpError::SecureError("a second TLS connection through the login connector".into()));
        }
        {
            let mut guard = self.guard.lock();
            if guard.is_none() {
                *guard = super::watchdog::arm(&stream, self.limit);
            }
        }
        set_timeouts(&stream, self.timeout).map_err(FtpError::ConnectionError)?;
        let handle = stream.try_clone().map_err(FtpError::ConnectionError)?;
        let name = ServerName::try_from(domain.to_string()).map_err(|e| FtpError::SecureError(e.to_string()))?;
        let conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(|e| FtpError::SecureError(e.to_string()))?;
        *slot = Some(StreamOwned::new(conn, Wire::control(stream, Arc::clone(&self.flights))));
        Ok(HandoffStream { io: HandoffIo(Arc::clone(&self.slot)), socket: handle })
    }
}

/// suppaftp's view of the control connection while it logs in.
#[derive(Debug)]
pub(crate) struct HandoffStream {
    io: HandoffIo,
    /// The same socket (a second descriptor): suppaftp sets timeouts and reads addresses on it.
    socket: TcpStream,
}

pub(crate) struct HandoffIo(Arc<Mutex<Option<TlsWire>>>);

impl std::fmt::Debug for HandoffIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoffIo")
    }
}

fn handed_over() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "control connection already handed over")
}

impl Read for HandoffIo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().as_mut().ok_or_else(handed_over)?.read(buf)
    }
}

impl Write for HandoffIo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().as_mut().ok_or_else(handed_over)?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().as_mut().ok_or_else(handed_over)?.flush()
    }
}

impl TlsStream for HandoffStream {
    type InnerStream = HandoffIo;

    fn tcp_stream(self) -> FtpResult<TcpStream> {
        Ok(self.socket)
    }

    fn get_ref(&self) -> &TcpStream {
        &self.socket
    }

    fn mut_ref(&mut self) -> &mut HandoffIo {
        &mut self.io
    }
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
