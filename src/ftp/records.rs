//! TLS 1.3 records of a data connection after its handshake, decrypted in place where they
//! were received.
//!
//! rustls 0.23 copies every record's plaintext into a `Vec` of its own, even through its
//! unbuffered API, and that copy (with the allocation and free per 16 KiB record) was the
//! largest user-space cost of a download after AES itself. Once a data connection's TLS 1.3
//! handshake is done, rustls hands over the traffic keys and sequence numbers
//! (`dangerous_into_kernel_connection`, the interface meant for kernel TLS) and keeps what
//! only it can do: turning the server's session tickets into resumable sessions, which
//! vsftpd's `require_ssl_reuse` depends on (every data connection resumes one). Everything
//! else here is the record layer of RFC 8446 section 5: a record is authenticated and
//! decrypted with the AEAD the handshake chose (ring's, as rustls uses), its nonce the
//! static IV XORed with the record's sequence number, its additional data the record header.
//! A record that fails authentication is an error, never bytes: nothing here can turn a
//! damaged or forged record into file data.
//!
//! TLS 1.2 connections stay on rustls for every record: they are rare here (`--tls12`, old
//! servers), and their nonce and additional-data rules differ.
//!
//! Threads: owned by one `DataTls`, used by whichever thread holds its connection. No locks.

use std::io;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Record header: content type, legacy version, length.
pub(super) const HEADER: usize = 5;
/// The outer content type of every protected TLS 1.3 record.
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CHANGE_CIPHER_SPEC: u8 = 20;
/// Largest protected record body TLS 1.3 allows: 2^14 plaintext plus 256 (RFC 8446 5.2).
const MAX_BODY: usize = (1 << 14) + 256;
const TAG: usize = 16;
/// Handshake message types that may follow the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// A post-handshake message longer than this is not a ticket any server sends.
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;

/// What one record held, once opened.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Content {
    /// File bytes: `body[..n]` of the record's body (its first `n` bytes after the header).
    Data(usize),
    /// Something for the connection itself (a session ticket), nothing for the reader.
    Nothing,
    /// The server's close_notify: the stream ends here.
    Closed,
}

/// One direction's key and where its sequence numbers are.
struct Direction {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Direction> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(io::Error::other("a TLS cipher suite mastfs cannot decrypt itself")),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| io::Error::other("a TLS key of the wrong length"))?;
        let iv: [u8; aead::NONCE_LEN] =
            iv.as_ref().try_into().map_err(|_| io::Error::other("a TLS IV of the wrong length"))?;
        Ok(Direction { key: LessSafeKey::new(key), iv, seq })
    }

    /// The next record's nonce; each sequence number is used once.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let mut nonce = self.iv;
        for (n, s) in nonce[aead::NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        // 2^64 records cannot happen; a wrapped number would reuse a nonce.
        self.seq = self.seq.checked_add(1).ok_or_else(|| io::Error::other("TLS sequence numbers exhausted"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// The record layer of one TLS 1.3 data connection after its handshake.
pub(super) struct Records {
    rx: Direction,
    tx: Direction,
    /// rustls's half: session tickets.
    kernel: KernelConnection<ClientConnectionData>,
    /// A post-handshake message split over records, until it is whole.
    handshake: Vec<u8>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("rx_seq", &self.rx.seq).finish_non_exhaustive()
    }
}

impl Records {
    pub(super) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ClientConnectionData>,
    ) -> io::Result<Records> {
        Ok(Records { rx: Direction::new(secrets.rx)?, tx: Direction::new(secrets.tx)?, kernel, handshake: Vec::new() })
    }

    /// The length of the record starting `bytes` (header included), once its header is there.
    pub(super) fn record_len(bytes: &[u8]) -> io::Result<Option<usize>> {
        let Some(header) = bytes.get(..HEADER) else { return Ok(None) };
        let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if body > MAX_BODY {
            return Err(invalid(format!("a TLS record of {body} bytes, more than TLS 1.3 allows")));
        }
        Ok(Some(HEADER + body))
    }

    /// Authenticates and decrypts the whole record `record` (header included) in place. File
    /// bytes end up at the start of the record's body.
    pub(super) fn open(&mut self, record: &mut [u8]) -> io::Result<Content> {
        let (header, body) = record.split_at_mut(HEADER);
        match header[0] {
            APPLICATION_DATA => {}
            // Sent for middlebox compatibility during a handshake; never meaningful after it.
            CHANGE_CIPHER_SPEC if body == [1] => return Ok(Content::Nothing),
            ALERT => return Err(invalid("the server sent an unprotected TLS alert".into())),
            other => return Err(invalid(format!("a TLS record of type {other} after the handshake"))),
        }
        if body.len() < TAG + 1 {
            return Err(invalid("a protected TLS record too short to hold anything".into()));
        }
        let nonce = self.rx.next_nonce()?;
        let header: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
        let plain = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(header), body)
            .map_err(|_| invalid("a TLS record failed authentication".into()))?;
        // The content type is the last byte that is not padding.
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(invalid("a TLS record with no content type".into()));
        };
        match plain[end] {
            APPLICATION_DATA => Ok(Content::Data(end)),
            ALERT => match plain[..end] {
                [_, 0] => Ok(Content::Closed),
                [_, description] => Err(invalid(format!("the server sent TLS alert {description}"))),
                _ => Err(invalid("a malformed TLS alert".into())),
            },
            HANDSHAKE => {
                let message = plain[..end].to_vec();
                self.handshake_messages(&message)?;
                Ok(Content::Nothing)
            }
            other => Err(invalid(format!("a TLS record of inner type {other}"))),
        }
    }

    /// Post-handshake messages: session tickets go to rustls's session store.
    fn handshake_messages(&mut self, fragment: &[u8]) -> io::Result<()> {
        self.handshake.extend_from_slice(fragment);
        let mut at = 0;
        while let [kind, a, b, c, ..] = self.handshake[at..] {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(invalid(format!("a post-handshake TLS message of {len} bytes")));
            }
            let Some(payload) = self.handshake.get(at + 4..at + 4 + len) else { break };
            match kind {
                NEW_SESSION_TICKET => {
                    // A ticket rustls cannot use costs only a later full handshake.
                    if let Err(e) = self.kernel.handle_new_session_ticket(payload) {
                        log::debug!("a session ticket on a data connection was not kept: {e}");
                    }
                }
                KEY_UPDATE => {
                    return Err(invalid("the server updated its TLS keys mid-transfer (not supported)".into()));
                }
                other => return Err(invalid(format!("a TLS handshake message of type {other} after the handshake"))),
            }
            at += 4 + len;
        }
        self.handshake.drain(..at);
        Ok(())
    }

    /// A protected close_notify record to send.
    pub(super) fn close_notify(&mut self) -> io::Result<Vec<u8>> {
        // Alert level warning (1), description close_notify (0), inner content type alert.
        let mut record = vec![APPLICATION_DATA, 3, 3, 0, (3 + TAG) as u8, 1, 0, ALERT];
        let header: [u8; HEADER] = [record[0], record[1], record[2], record[3], record[4]];
        let nonce = self.tx.next_nonce()?;
        let mut body = record.split_off(HEADER);
        self.tx
            .key
            .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
            .map_err(|_| io::Error::other("cannot seal a TLS alert"))?;
        record.extend_from_slice(&body);
        Ok(record)
    }
}

/// A failure of the record layer: `control::io_error` reports it as a TLS error, as it does
/// rustls's own, so it keeps that kind up to the errno.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RecordError(String);

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, RecordError(what))
}
