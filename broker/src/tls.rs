//! AMQPS: TLS listeners with rustls (RabbitMQ docs/ssl.md), and the login name a verified client
//! certificate gives SASL EXTERNAL (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
//!
//! Settings mirror RabbitMQ's `ssl_options`: `certfile`, `keyfile`, `cacertfile` (PEM files), `verify`
//! (`verify_none` or `verify_peer`) and `fail_if_no_peer_cert`; TLS 1.2 and 1.3 are offered. Plain
//! and TLS listeners run side by side (RabbitMQ's ports 5672 and 5671 by convention).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig};
pub use tokio_rustls::TlsAcceptor;

use crate::config::{CertLoginFrom, TlsConfig, TlsVerify};

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate in {}", path.display());
    }
    Ok(certs)
}

/// A TLS acceptor for `cfg`.
///
/// # Errors
/// An unreadable or invalid certificate, key or CA file (named in the message), a key that does not
/// match the certificate, or `verify_peer` without a `cacertfile`.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&cfg.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.keyfile)
        .with_context(|| format!("reading the private key in {}", cfg.keyfile.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?;
    let builder = match (cfg.verify, &cfg.cacertfile) {
        (TlsVerify::VerifyNone, _) => builder.with_no_client_auth(),
        (TlsVerify::VerifyPeer, None) => {
            bail!("tls.verify = \"verify_peer\" needs tls.cacertfile (the CAs client certificates are checked against)")
        }
        (TlsVerify::VerifyPeer, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("adding a CA certificate from {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if cfg.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .context("building the client certificate verifier")?,
            )
        }
    };
    let config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "the key in {} does not suit the certificate in {}",
            cfg.keyfile.display(),
            cfg.certfile.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The user name a client certificate logs in as (RabbitMQ `ssl_cert_login_from`): its subject's
/// distinguished name in RabbitMQ's form (RFC 4514: last RDN first, `,` between RDNs, e.g.
/// `CN=client,O=Warren,C=SE`), or its first common name. `None` when the certificate does not parse
/// or has no common name.
pub fn cert_login_name(cert: &CertificateDer<'_>, from: CertLoginFrom) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    match from {
        CertLoginFrom::CommonName => subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertLoginFrom::DistinguishedName => {
            let registry = x509_parser::objects::oid_registry();
            let mut rdns = Vec::new();
            for rdn in subject.iter() {
                let mut parts = Vec::new();
                for attr in rdn.iter() {
                    let name = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    parts.push(format!("{name}={}", escape_rdn_value(attr.as_str().ok()?)));
                }
                rdns.push(parts.join("+"));
            }
            rdns.reverse();
            Some(rdns.join(","))
        }
    }
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl req -x509 -subj "/C=SE/O=Warren\, Inc/CN=client-1"`: the subject's RDNs
    /// in the order C, O, CN.
    const CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBwzCCAWmgAwIBAgIUQ8QNkwFryARtA7DUnOVZQlW64hcwCgYIKoZIzj0EAwIw
NjELMAkGA1UEBhMCU0UxFDASBgNVBAoMC1dhcnJlbiwgSW5jMREwDwYDVQQDDAhj
bGllbnQtMTAgFw0yNjEyMDExNTI3NDNaGA8yMTI2MTEwNzE1Mjc0M1owNjELMAkG
A1UEBhMCU0UxFDASBgNVBAoMC1dhcnJlbiwgSW5jMREwDwYDVQQDDAhjbGllbnQt
MTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABH3KjitSyOGBge5MbfWqIn5i8EOq
Ums8B0+qU/7iPv+aeLmKyTqrlh9MHYXqkXSK/K+MjMmVOdRXNnpgy8GI8dujUzBR
MB0GA1UdDgQWBBQLec9aiI5FSwTZ49OsTFWdkn7yCjAfBgNVHSMEGDAWgBQLec9a
iI5FSwTZ49OsTFWdkn7yCjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIEqi+kUIb2rkr4Q3/S15XVqNcx7xEt1P4XlcG0zXt0V4AiEAvH65xaXY2v0f
ybeU2YKbAz58VnFqcJz5hBnbXd4a3cA=
-----END CERTIFICATE-----";

    #[test]
    fn login_names_from_a_certificate() {
        let der = CertificateDer::from_pem_slice(CLIENT_CERT.as_bytes()).unwrap();
        assert_eq!(
            cert_login_name(&der, CertLoginFrom::CommonName).as_deref(),
            Some("client-1")
        );
        // RabbitMQ's form: the last RDN first, the comma in a value escaped.
        assert_eq!(
            cert_login_name(&der, CertLoginFrom::DistinguishedName).as_deref(),
            Some("CN=client-1,O=Warren\\, Inc,C=SE")
        );
        assert_eq!(
            cert_login_name(
                &CertificateDer::from(vec![1, 2, 3]),
                CertLoginFrom::CommonName
            ),
            None
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = std::env::temp_dir().join(format!("warren-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let cfg = TlsConfig {
            listen: vec![],
            certfile: dir.join("cert.pem"),
            keyfile: dir.join("key.pem"),
            cacertfile: None,
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: false,
        };
        assert!(acceptor(&cfg).is_ok());
        let missing = TlsConfig {
            certfile: dir.join("nope.pem"),
            ..cfg.clone()
        };
        let err = format!("{:#}", acceptor(&missing).err().expect("refused"));
        assert!(err.contains("nope.pem"), "{err}");
        let no_ca = TlsConfig {
            verify: TlsVerify::VerifyPeer,
            ..cfg.clone()
        };
        let err = format!("{:#}", acceptor(&no_ca).err().expect("refused"));
        assert!(err.contains("cacertfile"), "{err}");
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.pem"), other_key.serialize_pem()).unwrap();
        let mismatched = TlsConfig {
            keyfile: dir.join("other.pem"),
            ..cfg
        };
        assert!(acceptor(&mismatched).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
