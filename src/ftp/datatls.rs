//! TLS on a data connection: rustls's unbuffered client API for the handshake, over a receive
//! buffer we own, then (under TLS 1.3) our own record layer.
//!
//! Data connections carry the bytes of every transfer, so their TLS is on the path of each
//! byte. rustls's buffered API (`StreamOwned`, still used for the control connection) copies
//! each byte three times after the kernel: from our socket buffer into its own, 4 KiB at a
//! time, from the decrypted record into a new `Vec`, and from that into the caller's buffer.
//! Its unbuffered API, used here, saves the first copy but not the others: rustls 0.23 still
//! puts each record's plaintext in a `Vec` of its own. So once a TLS 1.3 handshake is done,
//! rustls hands over the keys and `records.rs` decrypts each record in place: straight in the
//! caller's buffer when that holds whole records (a block being filled), so a file byte is
//! copied once, by the kernel, from the socket to its block. TLS 1.2 connections stay on
//! rustls's unbuffered reads.
//!
//! Round trips are counted as `Wire` counts them (see `wire.rs`): every write marks a flight
//! sent, and a read from the socket (never one served from the buffer) waits for its answer.
//!
//! Threads: a `DataTls` belongs to its control connection's `Conn` and is used by whichever
//! thread holds that (a request, or the pool's arming job). No locks.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError};

use super::records::{self, Content, Records};
use super::wire::Flights;

/// Largest TLS record on the wire: 16 KiB of plaintext, and at most 2 KiB of expansion
/// (TLS 1.2's limit; TLS 1.3 allows 256 bytes), plus the 5-byte header.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// A TLS client on a data connection.
pub(crate) struct DataTls {
    /// rustls: the handshake, and every record of a TLS 1.2 connection. `None` once `records`
    /// has taken over.
    conn: Option<UnbufferedClientConnection>,
    /// The record layer of a TLS 1.3 connection after its handshake.
    records: Option<Records>,
    /// New or resumed, once the handshake is done.
    kind: Option<rustls::HandshakeKind>,
    sock: TcpStream,
    flights: Arc<Flights>,
    /// TLS bytes received and not yet consumed by rustls: `buf[start..end]`. Whole records
    /// are decrypted in place; a partial one waits here for the rest.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Plaintext of a record that did not fit the caller's buffer: `spill[taken..]`.
    spill: Vec<u8>,
    taken: usize,
    /// TLS records to send (handshake flights), encoded by rustls.
    outgoing: Vec<u8>,
    /// The server ended the stream with close_notify: every later read returns 0.
    peer_closed: bool,
}

impl std::fmt::Debug for DataTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataTls").field("buffered", &self.buffered()).finish_non_exhaustive()
    }
}

/// What rustls needs or produced once it has processed what is buffered.
enum Event {
    /// This many plaintext bytes went into the caller's buffer (the rest of a record, if it
    /// did not fit, into `spill`).
    Plain(usize),
    /// It needs more bytes from the network: for the handshake (`established` false) or for
    /// the next record.
    NeedBytes { established: bool },
    /// The server sent close_notify.
    PeerClosed,
}

/// Plaintext a read had no room for, kept in `spill` (from `taken` on) for the next reads.
fn keep_for_later(spill: &mut Vec<u8>, taken: &mut usize, rest: &[u8]) {
    if *taken == spill.len() {
        spill.clear();
        *taken = 0;
    }
    spill.extend_from_slice(rest);
}

/// One read from the data socket, after counting the wait for it (see `wire.rs`).
fn read_socket(sock: &mut TcpStream, flights: &Flights, into: &mut [u8]) -> io::Result<usize> {
    flights.waiting();
    loop {
        match sock.read(into) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    // `control::io_error` finds the rustls error inside and reports a TLS failure.
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl DataTls {
    /// Starts a handshake on `sock` and sends the ClientHello at once, with a receive buffer
    /// of `buffer` bytes (at least one record).
    pub(crate) fn start(
        sock: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        flights: Arc<Flights>,
        buffer: usize,
    ) -> io::Result<DataTls> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut tls = DataTls {
            conn: Some(conn),
            records: None,
            kind: None,
            sock,
            flights,
            buf: vec![0; buffer.max(2 * MAX_RECORD)].into_boxed_slice(),
            start: 0,
            end: 0,
            spill: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            peer_closed: false,
        };
        // Nothing has arrived yet: this only encodes and sends the ClientHello.
        match tls.advance(&mut [])? {
            Event::NeedBytes { established: false } => Ok(tls),
            _ => Err(io::Error::other("unexpected TLS state before the server spoke")),
        }
    }

    /// Completes the handshake (the server answers the ClientHello once the transfer command
    /// has arrived). Data that came with the server's last flight is kept for `read`.
    pub(crate) fn finish_handshake(&mut self) -> io::Result<()> {
        loop {
            match self.advance(&mut [])? {
                Event::NeedBytes { established: false } => {
                    self.receive_or_eof("the server closed the data connection during the TLS handshake")?
                }
                Event::NeedBytes { established: true } => return self.take_over(),
                // Plaintext came with the handshake (never seen under TLS 1.3, where servers
                // send data only after the client's Finished): rustls keeps the records.
                Event::Plain(_) => return Ok(()),
                Event::PeerClosed => {
                    self.peer_closed = true;
                    return Ok(());
                }
            }
        }
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Bytes that have arrived and no read has taken yet, in TLS records or as plaintext.
    pub(crate) fn buffered(&self) -> usize {
        (self.end - self.start) + (self.spill.len() - self.taken)
    }

    /// Under TLS 1.3, hands the records over to `records.rs` (see the module header).
    fn take_over(&mut self) -> io::Result<()> {
        let Some(conn) = self.conn.take() else { return Ok(()) };
        self.kind = conn.handshake_kind();
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            self.conn = Some(conn);
            return Ok(());
        }
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
        self.records = Some(Records::new(secrets, kernel)?);
        log::trace!("data connection: TLS 1.3 ({:?} handshake), records opened by mastfs", self.kind);
        Ok(())
    }

    /// Ends TLS politely (close_notify) and closes the socket.
    pub(crate) fn close(mut self) {
        if let Some(records) = self.records.as_mut() {
            if let Ok(alert) = records.close_notify() {
                self.flights.sent();
                let _ = self.sock.write_all(&alert);
            }
            return;
        }
        // A bounded number of steps: records still buffered are passed over on the way.
        for _ in 0..64 {
            let DataTls { conn, sock, flights, buf, start, end, .. } = &mut self;
            let Some(conn) = conn.as_mut() else { return };
            let status = conn.process_tls_records(&mut buf[*start..*end]);
            let mut discard = status.discard;
            match status.state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(Ok(record)) = traffic.next_record() {
                        discard += record.discard;
                    }
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let mut alert = [0u8; 64];
                    if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                        flights.sent();
                        let _ = sock.write_all(&alert[..n]);
                    }
                    return;
                }
                _ => return,
            }
            *start += discard;
        }
    }

    /// Runs rustls over what is buffered until it yields plaintext, needs bytes from the
    /// network, or sees the stream's end. Handshake records it produces are sent on the way.
    fn advance(&mut self, out: &mut [u8]) -> io::Result<Event> {
        loop {
            let DataTls { conn, sock, flights, buf, start, end, spill, taken, outgoing, .. } = self;
            let Some(conn) = conn.as_mut() else {
                return Err(io::Error::other("TLS records after rustls handed them over"));
            };
            let status = conn.process_tls_records(&mut buf[*start..*end]);
            let mut discard = status.discard;
            let event = match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut n = 0;
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let k = record.payload.len().min(out.len() - n);
                        out[n..n + k].copy_from_slice(&record.payload[..k]);
                        n += k;
                        if k < record.payload.len() {
                            keep_for_later(spill, taken, &record.payload[k..]);
                        }
                    }
                    Some(Event::Plain(n))
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let at = outgoing.len();
                    outgoing.resize(at + MAX_RECORD, 0);
                    let n = match encode.encode(&mut outgoing[at..]) {
                        Ok(n) => n,
                        Err(EncodeError::InsufficientSize(e)) => {
                            outgoing.resize(at + e.required_size, 0);
                            encode.encode(&mut outgoing[at..]).map_err(io::Error::other)?
                        }
                        Err(e) => return Err(io::Error::other(e)),
                    };
                    outgoing.truncate(at + n);
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    sock.write_all(outgoing)?;
                    flights.sent();
                    outgoing.clear();
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Event::NeedBytes { established: false }),
                ConnectionState::WriteTraffic(_) => Some(Event::NeedBytes { established: true }),
                ConnectionState::PeerClosed | ConnectionState::Closed => Some(Event::PeerClosed),
                other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
            };
            *start += discard;
            if let Some(event) = event {
                return Ok(event);
            }
        }
    }

    /// Reads what the socket has into the buffer, after the bytes still unprocessed.
    fn receive(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < MAX_RECORD {
            // Only a partial record is left at the front: move it down so the next read has
            // room for whole records.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = read_socket(&mut self.sock, &self.flights, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// An end of the TCP stream here is one without close_notify, reported as rustls's own
    /// stream reports it (`UnexpectedEof`), which callers that accept such an end look for.
    fn receive_or_eof(&mut self, what: &'static str) -> io::Result<()> {
        if self.receive()? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, what));
        }
        Ok(())
    }

    /// `read` once `records` has taken over. A buffer that holds whole records (a block being
    /// filled) gets the socket's bytes straight in and the plaintext packed at its front; a
    /// small one is served from `buf`.
    fn read_records(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.open_buffered(out)?;
            if n > 0 || self.peer_closed {
                return Ok(n);
            }
            // At most part of a record is buffered now.
            if out.len() >= 2 * MAX_RECORD {
                let n = self.receive_into(out)?;
                if n > 0 || self.peer_closed {
                    return Ok(n);
                }
            } else {
                self.receive_or_eof("the server closed the data connection without TLS close_notify")?;
            }
        }
    }

    /// Opens the whole records buffered in `buf` and copies their plaintext into `out`; what
    /// does not fit waits in `spill` (empty here: `read` serves it first). Stops once `out`
    /// is full.
    fn open_buffered(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let DataTls { records, buf, start, end, spill, taken, peer_closed, .. } = self;
        let Some(records) = records.as_mut() else { return Ok(0) };
        let mut n = 0;
        while n < out.len() && !*peer_closed {
            let Some(len) = Records::record_len(&buf[*start..*end])? else { break };
            if *end - *start < len {
                break;
            }
            let record = &mut buf[*start..*start + len];
            *start += len;
            match records.open(record)? {
                Content::Data(k) => {
                    let plain = &record[records::HEADER..records::HEADER + k];
                    let fit = k.min(out.len() - n);
                    out[n..n + fit].copy_from_slice(&plain[..fit]);
                    n += fit;
                    if fit < k {
                        keep_for_later(spill, taken, &plain[fit..]);
                    }
                }
                Content::Nothing => {}
                Content::Closed => *peer_closed = true,
            }
        }
        if *start == *end {
            *start = 0;
            *end = 0;
        }
        Ok(n)
    }

    /// Receives into `out`, after the partial record `buf` held (moved there first), opens
    /// every whole record in place and packs their plaintext at the front of `out`. A partial
    /// record left at the end goes back to `buf`.
    fn receive_into(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let kept = self.end - self.start;
        out[..kept].copy_from_slice(&self.buf[self.start..self.end]);
        self.start = 0;
        self.end = 0;
        let got = match read_socket(&mut self.sock, &self.flights, &mut out[kept..]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the data connection without TLS close_notify",
            )),
            other => other,
        };
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                // The partial record stays buffered, as it was.
                self.buf[..kept].copy_from_slice(&out[..kept]);
                self.end = kept;
                return Err(e);
            }
        };
        let filled = kept + got;
        let DataTls { records, buf, end, peer_closed, .. } = self;
        let Some(records) = records.as_mut() else { return Ok(0) };
        let (mut at, mut packed) = (0, 0);
        while !*peer_closed {
            let Some(len) = Records::record_len(&out[at..filled])? else { break };
            if filled - at < len {
                break;
            }
            match records.open(&mut out[at..at + len])? {
                Content::Data(k) => {
                    out.copy_within(at + records::HEADER..at + records::HEADER + k, packed);
                    packed += k;
                }
                Content::Nothing => {}
                Content::Closed => *peer_closed = true,
            }
            at += len;
        }
        if !*peer_closed {
            let rest = filled - at;
            buf[..rest].copy_from_slice(&out[at..filled]);
            *end = rest;
        }
        Ok(packed)
    }
}

impl Read for DataTls {
    /// Fills `out` with the plaintext of as many records as are buffered, waiting on the
    /// network only when none is. Returns 0 after the server's close_notify, and an
    /// `UnexpectedEof` error when the connection ended without one.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.taken < self.spill.len() {
            let k = out.len().min(self.spill.len() - self.taken);
            out[..k].copy_from_slice(&self.spill[self.taken..self.taken + k]);
            self.taken += k;
            return Ok(k);
        }
        if self.peer_closed {
            return Ok(0);
        }
        if self.records.is_some() {
            return self.read_records(out);
        }
        let mut n = 0;
        loop {
            match self.advance(&mut out[n..])? {
                Event::Plain(k) => {
                    n += k;
                    if n == out.len() {
                        return Ok(n);
                    }
                }
                Event::PeerClosed => {
                    self.peer_closed = true;
                    return Ok(n);
                }
                Event::NeedBytes { .. } if n > 0 => return Ok(n),
                Event::NeedBytes { .. } => {
                    self.receive_or_eof("the server closed the data connection without TLS close_notify")?
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::tls::{TlsOptions, base_config};
    use crate::stats::Stats;
    use rustls::ServerConnection;
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// How the test server ends its side.
    #[derive(Clone, Copy, PartialEq)]
    enum End {
        CloseNotify,
        /// TCP close only (pure-ftpd after the last byte).
        Abrupt,
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A server that completes a handshake, sends `payload` in 16 KiB records, and trickles
    /// the TLS bytes out in `piece`-byte writes so records arrive split across reads. It
    /// returns whether it saw the client's close_notify.
    fn server(payload: Vec<u8>, piece: usize, end: End) -> (TcpStream, std::thread::JoinHandle<bool>) {
        server_with(payload, piece, end, None, crate::ftp::testkit::server_config())
    }

    /// `server`, with the TLS byte at `corrupt` (counted from the first byte after the
    /// handshake) flipped, and the given server config.
    fn server_with(
        payload: Vec<u8>,
        piece: usize,
        end: End,
        corrupt: Option<usize>,
        config: Arc<rustls::ServerConfig>,
    ) -> (TcpStream, std::thread::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let thread = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut tls = ServerConnection::new(config).expect("server");
            // The whole payload is encoded before any of it is sent.
            tls.set_buffer_limit(None);
            while tls.is_handshaking() {
                tls.complete_io(&mut sock).expect("handshake");
            }
            for chunk in payload.chunks(16 * 1024) {
                tls.writer().write_all(chunk).expect("plaintext");
            }
            if end == End::CloseNotify {
                tls.send_close_notify();
            }
            let mut wire = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut wire).expect("encode");
            }
            if let Some(at) = corrupt {
                wire[at] ^= 0x40;
            }
            for piece in wire.chunks(piece) {
                sock.write_all(piece).expect("send");
                sock.flush().expect("flush");
                std::thread::sleep(Duration::from_micros(200));
            }
            if end == End::Abrupt {
                let _ = sock.shutdown(std::net::Shutdown::Write);
            }
            // Whatever the client sends last: its close_notify, or nothing.
            loop {
                match tls.read_tls(&mut sock) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tls.process_new_packets().is_err() {
                            break;
                        }
                    }
                }
            }
            let mut rest = Vec::new();
            tls.reader().read_to_end(&mut rest).is_ok()
        });
        (client, thread)
    }

    fn client(sock: TcpStream, stats: &Arc<Stats>) -> DataTls {
        client_of(sock, stats, false)
    }

    fn client_of(sock: TcpStream, stats: &Arc<Stats>, tls12_only: bool) -> DataTls {
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let opts = TlsOptions { ca_file: None, insecure: true, tls12_only };
        let config = Arc::new(base_config(&opts).expect("config"));
        let name = ServerName::try_from("localhost").expect("name");
        let flights = Flights::new(Arc::clone(stats));
        let mut tls = DataTls::start(sock, config, name, flights, 64 * 1024).expect("start");
        tls.finish_handshake().expect("handshake");
        tls
    }

    /// Reads to the end in pieces of varied sizes, small (a record split over several reads)
    /// and large (several records in one read).
    fn read_all(tls: &mut DataTls) -> (Vec<u8>, io::Result<usize>) {
        let sizes = [1, 7, 4096, 16 * 1024 + 3, 100_000, 200];
        let mut got = Vec::new();
        for i in 0.. {
            let mut buf = vec![0u8; sizes[i % sizes.len()]];
            match tls.read(&mut buf) {
                Ok(0) => return (got, Ok(0)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
        unreachable!()
    }

    #[test]
    fn records_split_across_reads_arrive_whole_and_in_order_and_close_notify_ends_the_stream() {
        for tls12_only in [false, true] {
            let payload = data(300_000);
            let (sock, server) = server(payload.clone(), 1500, End::CloseNotify);
            let stats = Arc::new(Stats::default());
            let mut tls = client_of(sock, &stats, tls12_only);
            let (got, end) = read_all(&mut tls);
            assert_eq!(end.expect("a clean end"), 0);
            assert!(got == payload, "TLS 1.2 only {tls12_only}: {} bytes of {}", got.len(), payload.len());
            assert_eq!(tls.read(&mut [0u8; 10]).expect("after the end"), 0, "the end stays the end");
            assert_eq!(tls.buffered(), 0);
            tls.close();
            assert!(server.join().expect("server"), "the server sees the client's close_notify");
            assert!(stats.round_trips.load(Ordering::Relaxed) >= 1);
        }
    }

    #[test]
    fn a_server_that_closes_without_close_notify_ends_with_unexpected_eof_after_its_last_byte() {
        let payload = data(50_000);
        let (sock, server) = server(payload.clone(), 64 * 1024, End::Abrupt);
        let stats = Arc::new(Stats::default());
        let mut tls = client(sock, &stats);
        let (got, end) = read_all(&mut tls);
        assert_eq!(end.expect_err("no close_notify").kind(), io::ErrorKind::UnexpectedEof);
        assert!(got == payload, "{} bytes of {}", got.len(), payload.len());
        tls.close();
        let _ = server.join();
    }

    #[test]
    fn plaintext_a_read_had_no_room_for_counts_as_buffered() {
        let payload = data(40_000);
        let (sock, server) = server(payload.clone(), 64 * 1024, End::CloseNotify);
        let stats = Arc::new(Stats::default());
        let mut tls = client(sock, &stats);
        let mut first = [0u8; 100];
        assert_eq!(tls.read(&mut first).expect("read"), 100);
        // The rest of the first 16 KiB record waits as plaintext.
        assert!(tls.buffered() >= 16 * 1024 - 100, "{}", tls.buffered());
        let (rest, end) = read_all(&mut tls);
        end.expect("a clean end");
        assert!([&first[..], &rest[..]].concat() == payload);
        tls.close();
        let _ = server.join();
    }

    #[test]
    fn under_tls13_mastfs_opens_the_records_itself_and_keeps_the_session_tickets_for_the_next_connection() {
        let config =
            Arc::new(base_config(&TlsOptions { ca_file: None, insecure: true, tls12_only: false }).expect("config"));
        let server_config = crate::ftp::testkit::server_config();
        for round in 0..2 {
            let payload = data(250_000 + round);
            let (sock, server) = server_with(payload.clone(), 9000, End::CloseNotify, None, Arc::clone(&server_config));
            sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let stats = Arc::new(Stats::default());
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls =
                DataTls::start(sock, Arc::clone(&config), name, Flights::new(stats), 64 * 1024).expect("start");
            tls.finish_handshake().expect("handshake");
            assert!(tls.records.is_some(), "round {round}: TLS 1.3 records are opened by records.rs");
            let resumed = tls.kind == Some(rustls::HandshakeKind::Resumed);
            // The first connection is new; the second resumes with a ticket the first one
            // received after its handshake, through records.rs.
            assert_eq!(resumed, round == 1, "round {round}");
            let (got, end) = read_all(&mut tls);
            assert_eq!(end.expect("a clean end"), 0);
            assert!(got == payload, "round {round}: {} bytes of {}", got.len(), payload.len());
            tls.close();
            assert!(server.join().expect("server"), "the server sees the client's close_notify");
        }
    }

    #[test]
    fn under_tls12_rustls_keeps_the_records() {
        let payload = data(70_000);
        let (sock, server) = server(payload.clone(), 64 * 1024, End::CloseNotify);
        let stats = Arc::new(Stats::default());
        let mut tls = client_of(sock, &stats, true);
        assert!(tls.records.is_none());
        let (got, end) = read_all(&mut tls);
        end.expect("a clean end");
        assert!(got == payload);
        tls.close();
        assert!(server.join().expect("server"));
    }

    #[test]
    fn a_damaged_record_is_an_error_and_no_byte_of_it_or_after_it_is_read() {
        for (corrupt, read) in [(20_000, 100_000), (70_000, 100_000), (20_000, 1000)] {
            let payload = data(200_000);
            let config = crate::ftp::testkit::server_config();
            let (sock, server) = server_with(payload.clone(), 4096, End::CloseNotify, Some(corrupt), config);
            let stats = Arc::new(Stats::default());
            let mut tls = client(sock, &stats);
            assert!(tls.records.is_some());
            let mut got = Vec::new();
            let err = loop {
                let mut buf = vec![0u8; read];
                match tls.read(&mut buf) {
                    Ok(0) => panic!("the stream ended cleanly despite a damaged record"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("authentication"), "{err}");
            // A TLS failure, as rustls's own would be: not retried as a broken connection.
            let kind = crate::ftp::control::io_error(err, "data connection");
            assert!(matches!(kind, crate::error::RemoteError::Tls(_)), "{kind:?}");
            // Every byte read is the file's, and the damaged record's bytes are not among them.
            assert!(got == payload[..got.len()], "read with {read}-byte buffers");
            assert!(got.len() < corrupt, "{} bytes read, damage at TLS byte {corrupt}", got.len());
            drop(tls);
            let _ = server.join();
        }
    }
}
