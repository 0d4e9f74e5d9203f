//! A scripted FTPS server for unit tests of the transport: real TLS on control and data
//! connections (rustls, a throwaway test CA valid until 2126), a login like vsftpd's, and a
//! handler that answers the commands a test is about. Connections are served one after the
//! other on one thread, which ends with the test's `ScriptServer`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::tls::{TlsOptions, base_config};
use super::{Endpoint, FtpsRemote, Pool};
use crate::config::Secret;
use crate::stats::Stats;

/// The test CA (EC P-256, test use only).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBozCCAUmgAwIBAgIUMGUCjBB7K6OV4+zx/eWue1wlJFMwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTbWFzdGZzIHVuaXQtdGVzdCBDQTAgFw0yNjExMjcxODU1NDZa
GA8yMTI2MTEwMzE4NTU0NlowHjEcMBoGA1UEAwwTbWFzdGZzIHVuaXQtdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFC8HVFcdLaxWvYb2bHdXgXjlJa6
pui9C64VXg2N/FtFLhoAnk4SIOuWbQtr5GvybtFIe8nDasJfpdPGa39pHQijYzBh
MB0GA1UdDgQWBBRKF8cGlTlsMSf/1cWjCtqTYNbJfzAfBgNVHSMEGDAWgBRKF8cG
lTlsMSf/1cWjCtqTYNbJfzAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIC
BDAKBggqhkjOPQQDAgNIADBFAiBa7tvboK4QhZBM7/JyvOC553t+QX8Ugl8tOTd+
LGzH8AIhAIhEKrKpeL+1fzj/xJyUlxn9jlOxwwaXgA1q1Nitov19
-----END CERTIFICATE-----
";

/// The server's certificate, for `localhost` and 127.0.0.1, signed by the test CA.
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBwzCCAWmgAwIBAgIUaPH0J7L3jXZ+wQqww3tGSiKTJJwwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTbWFzdGZzIHVuaXQtdGVzdCBDQTAgFw0yNjExMjcxODU1NDda
GA8yMTI2MTEwMzE4NTU0N1owFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEpq2Xzn/tZxXKy5bvhsc2C7J9RMNV5z37oHLQNHWl
++GREeRGPEacqC85w/80iPbkS1qYn5PGlNITCMG40BWY5aOBjDCBiTAaBgNVHREE
EzARgglsb2NhbGhvc3SHBH8AAAEwCQYDVR0TBAIwADALBgNVHQ8EBAMCB4AwEwYD
VR0lBAwwCgYIKwYBBQUHAwEwHQYDVR0OBBYEFItmL1HGjFSBWzocMYbToX2SXPzv
MB8GA1UdIwQYMBaAFEoXxwaVOWwxJ//VxaMK2pNg1sl/MAoGCCqGSM49BAMCA0gA
MEUCIQCmXK0ZGpx2uJRrTS/G81d/Xa87rhv/OjGpPjZstP6SmAIgJQNDfHQelKaG
RYtVhCfTb46MxFSJpIXBgBleCQFYWkQ=
-----END CERTIFICATE-----
";

/// The server's private key (test use only).
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggsx9Y/KryL5OJWNU
HsVTbtkRwQj7AcmjVrKqjWFWHwmhRANCAASmrZfOf+1nFcrLlu+GxzYLsn1Ew1Xn
PfugctA0daX74ZER5EY8RpyoLznD/zSI9uRLWpifk8aU0hMIwbjQFZjl
-----END PRIVATE KEY-----
";

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// What the handler did with a command.
pub(super) enum Answer {
    /// Answered; read the next command.
    Done,
    /// Not handled: give the default answer.
    Default,
}

/// One control connection as the handler sees it.
pub(super) struct Session {
    ctl: BufReader<Tls>,
    config: Arc<ServerConfig>,
    listener: Option<TcpListener>,
    /// Offset of the last REST.
    pub(super) rest: u64,
    /// Which control connection this is (0 for the first).
    pub(super) number: usize,
}

impl Session {
    pub(super) fn reply(&mut self, line: &str) {
        let _ = self.ctl.get_mut().write_all(format!("{line}\r\n").as_bytes());
        let _ = self.ctl.get_mut().flush();
    }

    /// Opens a passive port and answers `227`.
    pub(super) fn pasv(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("passive port");
        let port = listener.local_addr().expect("port").port();
        self.listener = Some(listener);
        self.reply(&format!("227 Entering Passive Mode (127,0,0,1,{},{}).", port >> 8, port & 255));
    }

    /// The TCP data connection the client opened to the last passive port.
    pub(super) fn accept_data(&mut self) -> Option<TcpStream> {
        let listener = self.listener.take()?;
        let (sock, _) = listener.accept().ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        sock.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(sock)
    }

    /// Serves `data` from the last REST offset on the data connection, TLS-protected.
    /// Returns whether every byte was written (the client may close early).
    pub(super) fn send(&mut self, data: &[u8]) -> bool {
        let Some(sock) = self.accept_data() else { return false };
        let Ok(conn) = ServerConnection::new(Arc::clone(&self.config)) else { return false };
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return false;
            }
        }
        let start = usize::try_from(self.rest).unwrap_or(usize::MAX).min(data.len());
        self.rest = 0;
        for chunk in data[start..].chunks(16 * 1024) {
            if tls.write_all(chunk).and_then(|()| tls.flush()).is_err() {
                return false;
            }
        }
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut rest = Vec::new();
        let _ = tls.sock.read_to_end(&mut rest);
        true
    }
}

/// A scripted server; its thread ends when the test drops it.
pub(super) struct ScriptServer {
    pub(super) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test server's TLS settings (rustls's defaults: TLS 1.3 and 1.2).
pub(super) fn server_config() -> Arc<ServerConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = vec![CertificateDer::from_pem_slice(CERT_PEM.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()).expect("key");
    Arc::new(ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("config"))
}

/// Starts a server that logs clients in (offering MLST when `mlst`), hands every other
/// command to `handler`, and answers the rest like a plain FTP server.
pub(super) fn serve<H>(mlst: bool, mut handler: H) -> ScriptServer
where
    H: FnMut(&str, &mut Session) -> Answer + Send + 'static,
{
    let config = server_config();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        for number in 0.. {
            let Ok((sock, _)) = listener.accept() else { return };
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            serve_one(sock, number, &config, mlst, &mut handler);
        }
    });
    ScriptServer { addr, stop, thread: Some(thread) }
}

fn serve_one<H>(mut sock: TcpStream, number: usize, config: &Arc<ServerConfig>, mlst: bool, handler: &mut H)
where
    H: FnMut(&str, &mut Session) -> Answer,
{
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = sock.write_all(b"220 scripted server ready\r\n");
    let mut plain = BufReader::new(sock);
    let mut line = String::new();
    if plain.read_line(&mut line).is_err() || !line.starts_with("AUTH TLS") {
        return;
    }
    let mut sock = plain.into_inner();
    let _ = sock.write_all(b"234 Proceed with negotiation.\r\n");
    let Ok(conn) = ServerConnection::new(Arc::clone(config)) else { return };
    let mut s = Session {
        ctl: BufReader::new(StreamOwned::new(conn, sock)),
        config: Arc::clone(config),
        listener: None,
        rest: 0,
        number,
    };
    loop {
        let mut line = String::new();
        match s.ctl.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_string();
        if let Answer::Done = handler(&command, &mut s) {
            continue;
        }
        let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "PBSZ" | "PROT" | "TYPE" | "NOOP" => s.reply("200 OK."),
            "USER" => s.reply("331 Please specify the password."),
            "PASS" => s.reply("230 Login successful."),
            "FEAT" if mlst => s.reply("211-Features:\r\n MLST type*;size*;modify*;\r\n REST STREAM\r\n211 End"),
            "FEAT" => s.reply("211-Features:\r\n MDTM\r\n SIZE\r\n REST STREAM\r\n211 End"),
            "PASV" => s.pasv(),
            "CWD" => s.reply("250 Directory successfully changed."),
            "LIST" | "MLSD" => {
                s.reply("150 Here comes the directory listing.");
                s.send(b"");
                s.reply("226 Directory send OK.");
            }
            "REST" => {
                s.rest = command[5..].trim().parse().unwrap_or(0);
                let rest = s.rest;
                s.reply(&format!("350 Restart position accepted ({rest})."));
            }
            "ABOR" => s.reply("225 No transfer to ABOR."),
            "QUIT" => {
                s.reply("221 Goodbye.");
                return;
            }
            _ => s.reply("500 Unknown command."),
        }
    }
}

/// A remote with one connection to `server`, as a mount would build it.
pub(super) fn remote(
    server: &ScriptServer,
    timeout: Duration,
) -> (FtpsRemote, Arc<Pool>, Arc<Stats>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, CA_PEM).expect("write CA");
    let tls = base_config(&TlsOptions { ca_file: Some(ca), insecure: false, tls12_only: false }).expect("tls");
    let stats = Arc::new(Stats::default());
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port: server.addr.port(),
        implicit: false,
        epsv: false,
        user: "anonymous".into(),
        password: Secret::new("test@example.org".into()),
        timeout,
    };
    let pool = Pool::new(endpoint, tls, 1, Arc::clone(&stats));
    (FtpsRemote::new(Arc::clone(&pool), Arc::clone(&stats)), pool, stats, dir)
}
