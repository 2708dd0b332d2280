//! The connector of the HTTP/JSON transport: hyper-util's TCP connector,
//! with a rustls handshake on top for a source reached over `https://`
//! (its CA, optionally the broker's client certificate, see
//! [`crate::auth`]). Plain `http://` goes through unchanged.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::auth::LoadedTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The rustls client configuration of a source's `tls` block (ring, TLS
/// 1.2 and 1.3, HTTP/1.1 by ALPN).
///
/// # Errors
/// A message naming the parameter (`tls.ca`, `tls.cert`, `tls.key`).
pub(crate) fn client_config(tls: &LoadedTls) -> Result<ClientConfig, String> {
    let mut config = crate::auth::rustls_client_config(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// hyper-util's connector, with TLS when configured.
#[derive(Clone)]
pub(crate) struct SourceConnector {
    http: HttpConnector,
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
}

impl fmt::Debug for SourceConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConnector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl SourceConnector {
    /// A connector over `http`, with TLS by `config` (verifying `domain`,
    /// or the URL's host when none).
    pub(crate) fn new(
        mut http: HttpConnector,
        tls: Option<(ClientConfig, Option<String>)>,
    ) -> Result<Self, String> {
        let tls = match tls {
            None => None,
            Some((config, domain)) => {
                http.enforce_http(false);
                let name = domain
                    .map(|d| {
                        ServerName::try_from(d.clone()).map_err(|_| {
                            format!("tls.domain: {d:?} is not a DNS name or IP address")
                        })
                    })
                    .transpose()?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(SourceConnector { http, tls })
    }
}

/// A connection to a source, plain or TLS.
#[derive(Debug)]
pub(crate) enum SourceStream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for SourceStream {
    fn connected(&self) -> Connected {
        match self {
            SourceStream::Plain(s) => s.connected(),
            SourceStream::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl Read for SourceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for SourceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TLS handshake that failed, said as such.
#[derive(Debug)]
struct HandshakeError(io::Error);

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls handshake failed: {}", self.0)
    }
}

impl std::error::Error for HandshakeError {}

impl tower_service::Service<Uri> for SourceConnector {
    type Response = SourceStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SourceStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().map(|h| h.trim_matches(['[', ']']).to_owned());
        let connect = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connect.await?;
            match (tls, https) {
                (None, false) => Ok(SourceStream::Plain(tcp)),
                (None, true) => Err("https:// needs a tls block".into()),
                (Some(_), false) => Err("a source with tls is reached over https:// only".into()),
                (Some((connector, name)), true) => {
                    let name = match name {
                        Some(n) => n,
                        None => ServerName::try_from(host.unwrap_or_default())
                            .map_err(|_| "the URL's host is not a DNS name or IP address")?,
                    };
                    let stream = connector
                        .connect(name, tcp.into_inner())
                        .await
                        .map_err(HandshakeError)?;
                    Ok(SourceStream::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}
