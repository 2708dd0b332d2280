//! Serves [`Adapter`]s as `hedui.v1.AdapterService`: the way a department
//! that writes its adapter in Rust exposes it, and how the simulated agencies
//! run as their own process.
//!
//! [`ServerAuth`] adds what a department's side of [`crate::auth`] needs:
//! server TLS (with client certificates required when a client CA is
//! given) and a required bearer token, checked in constant time before
//! any handler runs; a call without it or with a wrong one is refused
//! with `UNAUTHENTICATED`, and the token is never in a message.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use hedui_proto::v1::{
    CheckRequest, CheckResponse, LookupRequest, LookupResponse,
    adapter_service_server::{AdapterService, AdapterServiceServer},
};
use tonic::{
    Request, Response, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

use crate::{
    Adapter, LookupContext,
    auth::{BearerParams, Secret, read_certificates, read_private_key},
    grpc::MAX_ANSWER_BYTES,
};

/// Longest a lookup may take when the caller sends no deadline.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest number of persons in one lookup.
pub const MAX_PERSONS_PER_LOOKUP: usize = 100;

/// `AdapterService` over a set of adapters, chosen by the request's
/// `source_id` (which may be left empty when there is one adapter).
#[derive(Debug, Clone)]
pub struct AdapterServer {
    adapters: Arc<BTreeMap<String, Arc<dyn Adapter>>>,
}

impl AdapterServer {
    /// A server for these adapters.
    pub fn new(adapters: impl IntoIterator<Item = Arc<dyn Adapter>>) -> Self {
        let adapters = adapters
            .into_iter()
            .map(|a| (a.source_id().to_owned(), a))
            .collect();
        Self {
            adapters: Arc::new(adapters),
        }
    }

    /// The tonic service, with message limits set.
    pub fn into_service(self) -> AdapterServiceServer<Self> {
        AdapterServiceServer::new(self)
            .max_encoding_message_size(MAX_ANSWER_BYTES)
            .max_decoding_message_size(1024 * 1024)
    }

    fn pick(&self, source_id: &str) -> Result<&Arc<dyn Adapter>, Status> {
        if source_id.is_empty() && self.adapters.len() == 1 {
            return Ok(self.adapters.values().next().expect("one adapter"));
        }
        self.adapters.get(source_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "source_id: {source_id:?} is not served here; served: {}",
                self.adapters.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Reads the deadline a caller sent as `grpc-timeout` (tonic leaves it in
/// the metadata on the server side).
fn deadline_of<T>(request: &Request<T>) -> Duration {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_LOOKUP_TIMEOUT)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// === server authentication ===

/// Where the files of a server's authentication are (each optional).
#[derive(Debug, Clone, Default)]
pub struct ServerAuthFiles {
    /// PEM certificate chain of the server (with `tls_key`).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the server (with `tls_cert`).
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate of the clients: when given, every client must
    /// present a certificate it signed (mutual TLS).
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// A file holding the bearer token every call must carry.
    pub bearer_token_file: Option<std::path::PathBuf>,
}

/// How a server serving `AdapterService` authenticates its callers: TLS
/// (optionally mutual) and a required bearer token, both optional.
#[derive(Clone, Default)]
pub struct ServerAuth {
    tls: Option<ServerTlsConfig>,
    /// The same TLS as a rustls configuration, for servers other than
    /// tonic's (e.g. an HTTP/JSON API).
    rustls: Option<Arc<rustls::ServerConfig>>,
    client_ca: bool,
    token: Option<Secret>,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAuth")
            .field("tls", &self.tls.is_some())
            .field("client_certificates_required", &self.client_ca)
            .field("bearer_token", &self.token)
            .finish()
    }
}

impl ServerAuth {
    /// No TLS and no token: plaintext, anyone may call.
    pub fn none() -> Self {
        ServerAuth::default()
    }

    /// Reads the files, once. `flag` turns a field's name into what the
    /// user wrote (e.g. `tls_cert` → `--tls-cert`) for errors.
    ///
    /// # Errors
    /// A message naming the flag and the path, never a file's content.
    pub fn load(files: &ServerAuthFiles, flag: impl Fn(&str) -> String) -> Result<Self, String> {
        let tls = match (&files.tls_cert, &files.tls_key) {
            (None, None) => {
                if files.tls_client_ca.is_some() {
                    return Err(format!(
                        "{}: needs {} and {} (a client CA applies to TLS only)",
                        flag("tls_client_ca"),
                        flag("tls_cert"),
                        flag("tls_key")
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(format!(
                    "{}: required with {}",
                    flag("tls_key"),
                    flag("tls_cert")
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{}: required with {}",
                    flag("tls_cert"),
                    flag("tls_key")
                ));
            }
            (Some(c), Some(k)) => {
                let (cert, chain) = read_certificates(&flag("tls_cert"), c)?;
                let (key, key_der) = read_private_key(&flag("tls_key"), k)?;
                let mut t = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("{}: {e}", flag("tls_cert")))?;
                let builder = match &files.tls_client_ca {
                    None => builder.with_no_client_auth(),
                    Some(ca) => {
                        let (pem, certs) = read_certificates(&flag("tls_client_ca"), ca)?;
                        t = t.client_ca_root(Certificate::from_pem(pem));
                        let mut roots = rustls::RootCertStore::empty();
                        for c in certs {
                            roots
                                .add(c)
                                .map_err(|e| format!("{}: {e}", flag("tls_client_ca")))?;
                        }
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider,
                        )
                        .build()
                        .map_err(|e| format!("{}: {e}", flag("tls_client_ca")))?;
                        builder.with_client_cert_verifier(verifier)
                    }
                };
                // Built now so that a key that does not go with its
                // certificate is said at start, not on the first call.
                let mut rustls_config = builder.with_single_cert(chain, key_der).map_err(|e| {
                    format!(
                        "{}: does not go with {}: {e}",
                        flag("tls_key"),
                        flag("tls_cert")
                    )
                })?;
                rustls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Server::builder().tls_config(t.clone()).map_err(|e| {
                    format!("{}: {}", flag("tls_cert"), crate::auth::describe_chain(&e))
                })?;
                Some((t, Arc::new(rustls_config)))
            }
        };
        let (tls, rustls) = match tls {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        let token = files
            .bearer_token_file
            .as_ref()
            .map(|p| {
                BearerParams::from_file(p).load("auth").map_err(|e| {
                    e.replacen("auth.bearer_token_file", &flag("bearer_token_file"), 1)
                })
            })
            .transpose()?;
        Ok(ServerAuth {
            tls,
            rustls,
            client_ca: files.tls_client_ca.is_some(),
            token,
        })
    }

    /// Requires this bearer token on every call.
    #[must_use]
    pub fn with_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// The TLS configuration as rustls takes it (HTTP/1.1 by ALPN), for a
    /// server other than tonic's; `None` without TLS.
    pub fn rustls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.rustls.clone()
    }

    /// The required bearer token, when one is.
    pub fn bearer_token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Whether the server speaks TLS (its URLs are `https://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL scheme of the server: `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    /// A server builder with TLS set when configured.
    ///
    /// # Errors
    /// When the TLS configuration cannot be used (checked by
    /// [`ServerAuth::load`] already).
    pub fn server(&self) -> Result<Server, tonic::transport::Error> {
        match &self.tls {
            Some(t) => Server::builder().tls_config(t.clone()),
            None => Ok(Server::builder()),
        }
    }

    /// `service` behind the bearer-token check (which lets every call
    /// through when no token is configured).
    pub fn wrap<S>(&self, service: S) -> InterceptedService<S, BearerCheck> {
        InterceptedService::new(service, self.interceptor())
    }

    /// The bearer-token check alone, e.g. for a tower stack.
    pub fn interceptor(&self) -> BearerCheck {
        BearerCheck {
            token: self.token.clone(),
        }
    }
}

/// The interceptor that requires `authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct BearerCheck {
    token: Option<Secret>,
}

impl Interceptor for BearerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            });
        match given {
            None => Err(Status::unauthenticated(
                "authentication required: no bearer token",
            )),
            Some(t) if token.matches(t) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "authentication failed: wrong bearer token",
            )),
        }
    }
}

#[tonic::async_trait]
impl AdapterService for AdapterServer {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let timeout = deadline_of(&request);
        let request = request.into_inner();
        let adapter = self.pick(&request.source_id)?;
        if request.person_ids.is_empty() {
            return Err(Status::invalid_argument("person_ids: must not be empty"));
        }
        if request.person_ids.len() > MAX_PERSONS_PER_LOOKUP {
            return Err(Status::invalid_argument(format!(
                "person_ids: {} persons, at most {MAX_PERSONS_PER_LOOKUP}",
                request.person_ids.len()
            )));
        }
        let ctx = LookupContext::with_timeout(timeout);
        match tokio::time::timeout_at(ctx.deadline, adapter.lookup(&ctx, &request)).await {
            Err(_) => Err(Status::deadline_exceeded("no answer before the deadline")),
            Ok(Err(e)) => Err(e.to_status()),
            Ok(Ok(r)) => Ok(Response::new(r)),
        }
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let adapter = self.pick(&request.get_ref().source_id)?;
        adapter
            .check()
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check_refuses_missing_and_wrong_tokens_without_echoing() {
        let mut check = ServerAuth::none()
            .with_token(Secret::new("right-t0ken"))
            .interceptor();
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(check.call(with(Some("Bearer right-t0ken"))).is_ok());
        assert!(check.call(with(Some("bearer right-t0ken"))).is_ok());
        for bad in [
            None,
            Some("Bearer wrong-t0ken"),
            Some("Bearer right-t0ke"),
            Some("Basic x"),
        ] {
            let s = check.call(with(bad)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!s.message().contains("t0ken"), "{}", s.message());
        }
        let mut open = ServerAuth::none().interceptor();
        assert!(open.call(with(None)).is_ok());
        let auth = ServerAuth::none().with_token(Secret::new("right-t0ken"));
        assert!(!format!("{auth:?}").contains("t0ken"));
    }

    #[test]
    fn server_auth_flags_go_together() {
        let flag = |f: &str| format!("--{}", f.replace('_', "-"));
        let e = ServerAuth::load(
            &ServerAuthFiles {
                tls_cert: Some("/c.pem".into()),
                ..Default::default()
            },
            flag,
        )
        .unwrap_err();
        assert_eq!(e, "--tls-key: required with --tls-cert");
        let e = ServerAuth::load(
            &ServerAuthFiles {
                tls_client_ca: Some("/ca.pem".into()),
                ..Default::default()
            },
            flag,
        )
        .unwrap_err();
        assert!(e.starts_with("--tls-client-ca: needs --tls-cert"), "{e}");
        let e = ServerAuth::load(
            &ServerAuthFiles {
                bearer_token_file: Some("/no/such/token".into()),
                ..Default::default()
            },
            flag,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "--bearer-token-file: cannot read /no/such/token: no such file"
        );
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
