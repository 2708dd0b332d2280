//! The broker's mTLS listener: a rustls server configuration from
//! `[tls]` (client certificates verified against the configured CAs and
//! CRLs, TLS 1.3 unless 1.2 is allowed), an accept loop that finishes
//! handshakes off the accept path and records each refused one, and the
//! identity a client certificate carries.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::config::TlsConfig;
use crate::audit::{AuditLog, Entry, Kind};

/// Handshakes in progress at once; connections beyond are closed at once.
pub const MAX_HANDSHAKES: usize = 1024;

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            format!(
                "{key}: cannot read certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls server configuration `[tls]` describes.
///
/// # Errors
/// What is wrong, naming the key and the file (never a key's content).
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("tls.cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        format!(
            "tls.key: no private key read from {}: {e}",
            config.key.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for (i, path) in config.client_ca.iter().enumerate() {
        for cert in read_certs(&format!("tls.client_ca[{i}]"), path)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "tls.client_ca[{i}]: {} is not a usable CA certificate: {e}",
                    path.display()
                )
            })?;
        }
    }
    let mut crls = Vec::new();
    for (i, path) in config.crl.iter().enumerate() {
        let list = CertificateRevocationListDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| format!("tls.crl[{i}]: cannot read {}: {e}", path.display()))?;
        if list.is_empty() {
            return Err(format!("tls.crl[{i}]: {} holds no PEM CRL", path.display()));
        }
        crls.extend(list);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| format!("tls.client_ca / tls.crl: {e}"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if config.min_version == "1.2" {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls.min_version: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "tls.cert / tls.key: {} and {} do not make a usable pair: {e}",
                config.cert.display(),
                config.key.display()
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// Accepts connections on `listener` and yields those whose TLS handshake
/// succeeds. Each handshake runs as its own task, bounded by `timeout` and
/// by [`MAX_HANDSHAKES`]; each refused one is recorded in `audit` (kind
/// `denied`, outcome `tls_refused`, the peer address as the client).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    audit: AuditLog,
    timeout: Duration,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                debug!(%peer, "too many handshakes in progress; connection closed");
                continue;
            };
            let (tx, acceptor, audit) = (tx.clone(), acceptor.clone(), audit.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => refused(&audit, peer, &e.to_string()).await,
                    Err(_) => refused(&audit, peer, "the handshake did not finish in time").await,
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn refused(audit: &AuditLog, peer: SocketAddr, why: &str) {
    debug!(%peer, why, "TLS handshake refused");
    let mut entry = Entry::new(Kind::Denied);
    entry.request_id = uuid::Uuid::new_v4().to_string();
    entry.client = peer.ip().to_string();
    entry.outcome = "tls_refused".into();
    entry.detail = why.chars().take(300).collect();
    if let Err(e) = audit.record(entry).await {
        warn!(error = %e, "refused TLS handshake not recorded");
    }
}

/// The identity a client certificate carries: its first SAN URI, else its
/// first SAN DNS name; `None` when it has neither or does not parse.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        })
}
