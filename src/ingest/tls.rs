//! Inbound TLS: a rustls acceptor (ring provider) from PEM files, offering HTTP/2 and
//! HTTP/1.1 by ALPN.

use super::config::InboundTls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file {path}: {message}")]
    Cert { path: String, message: String },
    #[error("server.tls.key_file {path}: {message}")]
    Key { path: String, message: String },
    #[error("server.tls: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn acceptor(tls: &InboundTls) -> Result<TlsAcceptor, TlsError> {
    let cert_path = tls.cert_file.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            message: "no PEM certificate in the file".into(),
        });
    }
    // The key's bytes never reach a message: only whether it could be read.
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| TlsError::Key {
        path: tls.key_file.display().to_string(),
        message: format!("no usable PEM private key ({})", key_problem(&e)),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn key_problem(error: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error;
    match error {
        Error::NoItemsFound => "none found",
        Error::Io(_) => "cannot read the file",
        _ => "malformed PEM",
    }
}
