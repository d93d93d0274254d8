//! TLS on the listener, for operators without a reverse proxy: [`Tls`] is a certificate chain and its
//! private key (PEM files, `server.tls_cert_file` and `server.tls_key_file` or `--tls-cert` and
//! `--tls-key`) made into a rustls server configuration (the ring provider, as reqwest's client side
//! uses; HTTP/1.1 by ALPN).
//!
//! The handshake runs inside the accept loop of [`crate::connections`], so the connection cap holds for
//! TLS connections and a client that does not finish its handshake within the header-read timeout is
//! closed like one that sends no request head.
//!
//! [`certificate_validity`] reads a certificate's validity period with a few lines of DER, so `hearth
//! doctor` can name an expired certificate without an X.509 library.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerSection;

/// A certificate chain with its key, ready to accept TLS connections.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    /// The certificate file, for logs.
    cert_file: PathBuf,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("cert_file", &self.cert_file).finish()
    }
}

/// A certificate or key file that cannot serve TLS; says which setting named which file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` ({}): {reason}", path.display())]
pub struct TlsError {
    /// The setting that named the file (`server.tls_cert_file`, `--tls-key`, …).
    pub key: String,
    pub path: PathBuf,
    pub reason: String,
}

/// Where a certificate and a key file were named: the config keys or the command-line flags.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub cert: &'static str,
    pub key: &'static str,
}

/// The names of the configuration file's keys.
pub const CONFIG_NAMES: Names = Names {
    cert: "server.tls_cert_file",
    key: "server.tls_key_file",
};

impl Tls {
    /// Read a PEM certificate chain (the server's certificate first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1) and check that they belong together.
    pub fn from_files(cert_file: &Path, key_file: &Path, names: Names) -> Result<Self, TlsError> {
        let cert_error = |reason: String| TlsError {
            key: names.cert.to_owned(),
            path: cert_file.to_owned(),
            reason,
        };
        let key_error = |reason: String| TlsError {
            key: names.key.to_owned(),
            path: key_file.to_owned(),
            reason,
        };
        // Read first, so a missing or unreadable file says so rather than "no certificate".
        std::fs::metadata(cert_file).map_err(|e| cert_error(format!("cannot read it: {e}")))?;
        std::fs::metadata(key_file).map_err(|e| key_error(format!("cannot read it: {e}")))?;
        let certs = CertificateDer::pem_file_iter(cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| cert_error(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(cert_error(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| key_error(format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    key_error(format!("is not the key of the certificate in {}", cert_file.display()))
                }
                rustls::Error::General(_) => key_error(format!("is not a usable private key: {e}")),
                e => cert_error(format!("cannot be used with its key: {e}")),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert_file: cert_file.to_owned(),
        })
    }

    /// TLS as `[server]` configures it: `None` without `tls_cert_file` and `tls_key_file`. Setting one
    /// without the other is refused by [`crate::config::Config::validate`].
    pub fn from_config(server: &ServerSection) -> Result<Option<Self>, TlsError> {
        match (&server.tls_cert_file, &server.tls_key_file) {
            (Some(cert), Some(key)) => Self::from_files(cert, key, CONFIG_NAMES).map(Some),
            _ => Ok(None),
        }
    }

    /// The certificate file this was read from.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The acceptor the connection loop runs each handshake with.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// A moment of a certificate's validity, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTime {
    /// Seconds since the Unix epoch.
    pub unix: i64,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub shown: String,
}

/// The `notBefore` and `notAfter` of a DER certificate; `None` when it is not shaped like X.509.
pub fn certificate_validity(der: &[u8]) -> Option<(CertTime, CertTime)> {
    let (0x30, certificate, _) = der_next(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_next(certificate)? else {
        return None;
    };
    // [0] version (optional), serialNumber, signature, issuer, validity.
    let (tag, _, rest) = der_next(tbs)?;
    let rest = if tag == 0xa0 { der_next(rest)?.2 } else { rest };
    let (_, _, rest) = der_next(rest)?;
    let (_, _, rest) = der_next(rest)?;
    let (0x30, validity, _) = der_next(rest)? else {
        return None;
    };
    let (tag, not_before, rest) = der_next(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_next(rest)?;
    Some((not_before, der_time(tag, not_after)?))
}

/// The first DER element of `input`: its tag, its contents and what follows it.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |len, &b| len << 8 | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn der_time(tag: u8, contents: &[u8]) -> Option<CertTime> {
    let text = std::str::from_utf8(contents).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let unix = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(CertTime {
        unix,
        shown: format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC"),
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        file
    }

    fn self_signed(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let signing_key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&signing_key).unwrap();
        (cert, signing_key)
    }

    #[test]
    fn validity_is_read_from_the_certificate() {
        // UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280 §4.1.2.5).
        let (cert, _) = self_signed((2001, 2, 3), (2051, 12, 31));
        let (not_before, not_after) = certificate_validity(cert.der()).unwrap();
        assert_eq!(not_before.shown, "2001-02-03 00:00:00 UTC");
        assert_eq!(not_before.unix, 981_158_400);
        assert_eq!(not_after.shown, "2051-12-31 00:00:00 UTC");
        assert_eq!(not_after.unix, 2_587_593_600);
        assert_eq!(certificate_validity(b"\x30\x03\x02\x01\x01"), None);
    }

    #[test]
    fn bad_files_are_named_with_their_setting() {
        let (cert, key) = self_signed((2020, 1, 1), (2090, 1, 1));
        let cert = write(&cert.pem());
        let key = write(&key.serialize_pem());
        let other_key = write(&rcgen::KeyPair::generate().unwrap().serialize_pem());
        let garbage = write("not a certificate\n");
        Tls::from_files(cert.path(), key.path(), CONFIG_NAMES).unwrap();

        let err = Tls::from_files(garbage.path(), key.path(), CONFIG_NAMES).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.path.as_path()),
            ("server.tls_cert_file", garbage.path())
        );
        let err = Tls::from_files(cert.path(), garbage.path(), CONFIG_NAMES).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.path.as_path()),
            ("server.tls_key_file", garbage.path())
        );
        let err = Tls::from_files(cert.path(), other_key.path(), CONFIG_NAMES).unwrap_err();
        assert_eq!(err.key, "server.tls_key_file", "{err}");
        assert!(err.to_string().contains("is not the key of the certificate"), "{err}");
        let missing = Path::new("/nonexistent/cert.pem");
        let names = Names {
            cert: "--tls-cert",
            key: "--tls-key",
        };
        let err = Tls::from_files(missing, key.path(), names).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`--tls-cert` (/nonexistent/cert.pem): cannot read it"),
            "{err}"
        );
    }
}
