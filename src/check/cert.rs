//! What the server's certificate says, for the report: the check verifies exactly as a mount
//! does (the verifier of `ftp::tls`), and keeps the certificate it was shown, so that a
//! refused certificate can be described (subject, issuer, names, validity) instead of only
//! being called untrusted.
//!
//! Threads: the recorder is called by the thread doing a handshake; its slot is a small
//! mutex taken by nothing else at the same time.

use std::sync::Arc;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::report::clean;

/// A verifier that remembers the last certificate chain it was asked about.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl Recorder {
    pub(crate) fn new(inner: Arc<dyn ServerCertVerifier>) -> Arc<Recorder> {
        Arc::new(Recorder { inner, seen: Mutex::new(None) })
    }

    /// The server's own certificate, as last seen.
    pub(crate) fn end_entity(&self) -> Option<CertInfo> {
        let seen = self.seen.lock();
        let chain = seen.as_ref()?;
        let mut info = CertInfo::parse(chain.first()?)?;
        info.chain_len = chain.len();
        Some(info)
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.clone().into_owned()).collect();
        *self.seen.lock() = Some(chain);
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// The parts of a certificate a person checks. Every text comes from the server and is
/// cleaned of control characters before it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub(crate) names: Vec<String>,
    pub(crate) not_before: String,
    pub(crate) not_after: String,
    /// Certificates the server sent (its own first).
    pub(crate) chain_len: usize,
}

impl CertInfo {
    /// `None` for a certificate that does not parse (the TLS error says why it was refused).
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.push(clean(n, 255)),
                    GeneralName::IPAddress(bytes) => names.push(ip_text(bytes)),
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Some(CertInfo {
            subject: name_text(&cert.subject().to_string()),
            issuer: name_text(&cert.issuer().to_string()),
            names,
            not_before: clean(&validity.not_before.to_string(), 64),
            not_after: clean(&validity.not_after.to_string(), 64),
            chain_len: 1,
        })
    }

    pub(crate) fn self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// One line: `subject CN=x, issued by CN=y, for a, b; valid ... to ...`.
    pub(crate) fn describe(&self) -> String {
        let names = if self.names.is_empty() { "no subjectAltName".to_string() } else { self.names.join(", ") };
        let issuer = if self.self_signed() { "self-signed".to_string() } else { format!("issued by {}", self.issuer) };
        format!("certificate {}, {issuer}, for {names}; valid {} to {}", self.subject, self.not_before, self.not_after)
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "names": self.names,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "chain_length": self.chain_len,
        })
    }
}

fn name_text(name: &str) -> String {
    let name = clean(name, 200);
    if name.is_empty() { "(empty name)".to_string() } else { name }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        n => format!("(an IP address of {n} bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_certificate_rather_than_a_panic() {
        assert_eq!(CertInfo::parse(&CertificateDer::from(vec![0x30, 0x82, 0xff])), None);
        assert_eq!(CertInfo::parse(&CertificateDer::from(Vec::new())), None);
    }

    #[test]
    fn ip_addresses_of_both_families_read_as_people_write_them() {
        assert_eq!(ip_text(&[127, 0, 0, 1]), "127.0.0.1");
        assert_eq!(ip_text(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "::1");
        assert!(ip_text(&[1, 2, 3]).contains("3 bytes"));
    }

    #[test]
    fn a_description_names_subject_issuer_names_and_validity() {
        let info = CertInfo {
            subject: "CN=localhost".into(),
            issuer: "CN=Test CA".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            not_before: "Nov 27 00:00:00 2026 +00:00".into(),
            not_after: "Nov 27 00:00:00 2027 +00:00".into(),
            chain_len: 1,
        };
        let text = info.describe();
        for part in ["CN=localhost", "issued by CN=Test CA", "localhost, 127.0.0.1", "2027"] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let own = CertInfo { issuer: info.subject.clone(), ..info };
        assert!(own.describe().contains("self-signed"));
    }
}
