//! How kindler reaches PostgreSQL: the `database = "postgres://…"` URL, the password (from a
//! file or a systemd credential, never from the configuration), and TLS as libpq's
//! `sslmode` has it.
//!
//! tokio-postgres knows `sslmode` only up to `require` and verifies nothing by itself, so
//! kindler reads `sslmode` and `sslrootcert` from the URL and builds the rustls
//! configuration: `disable` and `prefer`/`require` as libpq (the latter two without
//! checking the certificate), `verify-full` checking the chain against `sslrootcert` (or
//! the system's trust store) and the host name. `verify-ca` is refused: it would need a
//! certificate check without the name, which is easy to get wrong; use `verify-full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The systemd credential kindler reads the password from (`LoadCredential=`).
pub const CREDENTIAL: &str = "kindler-db-password";

/// libpq's `sslmode`, as far as kindler takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// TLS when the server offers it; the certificate is not checked (libpq's default).
    Prefer,
    /// TLS always; the certificate is not checked.
    Require,
    /// TLS always, the certificate checked against the trusted roots and the host name.
    VerifyFull,
}

/// Where and how to connect, read from the `database` URL.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    pub root_cert: Option<PathBuf>,
}

/// Reads a `postgres://` URL. A password in it is refused: the configuration file is
/// readable by every user of the host; the password goes in a file or a credential.
pub fn parse(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut tls = Tls::Prefer;
    let mut root_cert = None;
    let mut passed = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => tls = tls_mode(value)?,
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            _ => passed.push(pair),
        }
    }
    let rest = if passed.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", passed.join("&"))
    };
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|e| format!("{}: {e}", redact(url)))?;
    if config.get_password().is_some() {
        return Err(format!(
            "{}: the URL holds a password; the configuration is readable by every user of the \
             host, so put the password in a file named by database_password_file, or in the \
             systemd credential {CREDENTIAL} (LoadCredential=)",
            redact(url)
        ));
    }
    config.ssl_mode(match tls {
        Tls::Disable => SslMode::Disable,
        Tls::Prefer => SslMode::Prefer,
        Tls::Require | Tls::VerifyFull => SslMode::Require,
    });
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("kindler");
    Ok(Target {
        config,
        tls,
        root_cert,
    })
}

fn tls_mode(value: &str) -> Result<Tls, String> {
    match value {
        "disable" => Ok(Tls::Disable),
        "allow" | "prefer" => Ok(Tls::Prefer),
        "require" => Ok(Tls::Require),
        "verify-full" => Ok(Tls::VerifyFull),
        "verify-ca" => Err(
            "sslmode=verify-ca is not supported: use verify-full (the certificate's chain and \
             the server's name are checked)"
                .into(),
        ),
        other => Err(format!(
            "sslmode={other} is not one of disable, prefer, require, verify-full"
        )),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, after)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{after}"),
        None => url.to_owned(),
    }
}

/// The password: the file `password_file` names, else the systemd credential when kindler
/// runs with one; a trailing newline is not part of it.
pub fn password(password_file: Option<&Path>) -> Result<Option<String>, String> {
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| Path::new(&dir).join(CREDENTIAL))
        .filter(|p| p.exists());
    let Some(path) = password_file.map(Path::to_owned).or(credential) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the database password from {}: {e}",
            path.display()
        )
    })?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// The TLS connector for `target`'s `sslmode`.
pub fn tls_connector(target: &Target) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match target.tls {
        Tls::VerifyFull => builder
            .with_root_certificates(roots(target.root_cert.as_deref())?)
            .with_no_client_auth(),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The roots `verify-full` trusts: the `sslrootcert` file, else the system's store.
fn roots(file: Option<&Path>) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
        }
    }
    if store.is_empty() {
        return Err(
            "sslmode=verify-full: no trusted certificate found (set sslrootcert=FILE, \
                    or install ca-certificates)"
                .into(),
        );
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted, but the server is not authenticated (as libpq).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_with_their_tls_mode_and_without_a_password() {
        let t = parse("postgres://kindler@db.example/kindler?sslmode=verify-full").unwrap();
        assert_eq!(t.tls, Tls::VerifyFull);
        assert_eq!(t.config.get_user(), Some("kindler"));
        assert_eq!(t.config.get_dbname(), Some("kindler"));
        let t = parse("postgres://k@127.0.0.1:5433/x?sslmode=disable&sslrootcert=/ca.pem").unwrap();
        assert_eq!((t.tls, t.root_cert), (Tls::Disable, Some("/ca.pem".into())));
        assert_eq!(parse("postgresql://k@h/x").unwrap().tls, Tls::Prefer);
        let e = parse("postgres://k:secret@h/x").err().unwrap();
        assert!(e.contains("k:***@h") && !e.contains("secret"), "{e}");
        assert!(parse("postgres://k@h/x?sslmode=verify-ca").is_err());
        assert!(parse("postgres://k@h/x?sslmode=bogus").is_err());
    }

    #[test]
    fn the_password_file_loses_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(password(Some(&file)).unwrap().as_deref(), Some("s3cret"));
        assert!(password(Some(&dir.path().join("none"))).is_err());
    }
}
