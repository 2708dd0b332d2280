//! Authentication toward sources: client TLS (optionally mutual) and bearer
//! tokens, per source, in the transport's parameters.
//!
//! ```toml
//! [sources.transport]
//! type = "grpc"
//! endpoint = "https://gaj.dachuan.gov.cn:7001"
//! tls = { ca = "/etc/hedui/dept-ca.pem", cert = "/etc/hedui/client.pem", key = "/etc/hedui/client-key.pem", domain = "gaj.dachuan.gov.cn" }
//! auth = { bearer_token_file = "/run/secrets/hedui-gaj-token" }   # or bearer_token_env = "HEDUI_TOKEN_GAJ"
//! ```
//!
//! Secrets come from files or the environment, never from the configuration
//! file: an inline `bearer_token` is refused. Files are read once, when the
//! adapter is built; errors name the parameter and the path or variable,
//! never the content. A token is kept in a [`Secret`], whose `Debug` prints
//! `Secret(…)`.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

/// A secret value (a bearer token): never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself; never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, compared in constant time (for
    /// equal lengths; the length itself is not hidden).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("…")
    }
}

/// Compares two byte strings without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// The `auth` block of a source: where its bearer token comes from.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerParams {
    /// A file holding the token (surrounding whitespace is trimmed).
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    pub bearer_token_env: Option<String>,
    /// Refused: a token written in the configuration. Kept only to say so
    /// clearly; its value is never read or printed.
    #[serde(default)]
    bearer_token: Option<serde::de::IgnoredAny>,
}

impl fmt::Debug for BearerParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerParams")
            .field("bearer_token_file", &self.bearer_token_file)
            .field("bearer_token_env", &self.bearer_token_env)
            .finish_non_exhaustive()
    }
}

impl BearerParams {
    /// A block reading the token from `path`.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        BearerParams {
            bearer_token_file: Some(path.into()),
            ..Default::default()
        }
    }

    /// Reads the token, once. `key` is the block's name in errors
    /// (`"auth"`).
    ///
    /// # Errors
    /// A message naming the parameter and the path or variable: an inline
    /// token, none or both of file and variable, a file that cannot be read
    /// or is empty, a variable unset or empty, a token that cannot be sent
    /// in a header.
    pub fn load(&self, key: &str) -> Result<Secret, String> {
        if self.bearer_token.is_some() {
            return Err(format!(
                "{key}.bearer_token: secrets are not written in the configuration; they come \
                 from files or the environment: use {key}.bearer_token_file or \
                 {key}.bearer_token_env"
            ));
        }
        let token = match (&self.bearer_token_file, &self.bearer_token_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}: give bearer_token_file or bearer_token_env, not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "{key}: bearer_token_file or bearer_token_env is required"
                ));
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "{key}.bearer_token_file: cannot read {}: {}",
                        path.display(),
                        io_reason(&e)
                    )
                })?;
                let t = text.trim();
                if t.is_empty() {
                    return Err(format!(
                        "{key}.bearer_token_file: {} is empty",
                        path.display()
                    ));
                }
                t.to_owned()
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
                Ok(_) => {
                    return Err(format!(
                        "{key}.bearer_token_env: environment variable {var} is empty"
                    ));
                }
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!(
                        "{key}.bearer_token_env: environment variable {var} is not set"
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "{key}.bearer_token_env: environment variable {var} is not text"
                    ));
                }
            },
        };
        if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            // Said without the token: it cannot be sent in a header.
            let at = match (&self.bearer_token_file, &self.bearer_token_env) {
                (Some(p), _) => format!("bearer_token_file: the token in {}", p.display()),
                (None, Some(v)) => format!("bearer_token_env: the token in {v}"),
                (None, None) => "the token".into(),
            };
            return Err(format!(
                "{key}.{at} holds spaces, control or non-ASCII characters; a bearer token is \
                 printable ASCII"
            ));
        }
        Ok(Secret::new(token))
    }
}

/// An I/O error's reason without the OS error number's decoration.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The `tls` block of a source: the CA that signs the source's server
/// certificate, optionally the broker's client certificate and key
/// (mutual TLS), and the name to verify when it differs from the
/// endpoint's host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsParams {
    /// PEM file of the CA certificate(s) trusted for this source.
    pub ca: Option<PathBuf>,
    /// PEM file of the broker's client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (with `cert`).
    pub key: Option<PathBuf>,
    /// The name the source's certificate must carry (default: the
    /// endpoint's host).
    pub domain: Option<String>,
}

/// A `tls` block with its files read and checked.
#[derive(Clone)]
pub struct LoadedTls {
    /// The CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// The CA certificate(s), parsed.
    pub ca: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key, PEM.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify, when not the endpoint's host.
    pub domain: Option<String>,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("ca_certificates", &self.ca.len())
            .field("client_identity", &self.identity_pem.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| format!("{key}: cannot read {}: {}", path.display(), io_reason(&e)))
}

/// Reads PEM certificates from `path`; at least one.
///
/// # Errors
/// A message naming `key` and the path.
pub fn read_certificates(
    key: &str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{key}: {} does not hold PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok((pem, certs))
}

/// Reads a PEM private key from `path`.
///
/// # Errors
/// A message naming `key` and the path, never the content.
pub fn read_private_key(
    key: &str,
    path: &Path,
) -> Result<(Vec<u8>, PrivateKeyDer<'static>), String> {
    let pem = read_file(key, path)?;
    let k = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "{key}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })?;
    Ok((pem, k))
}

impl TlsParams {
    /// Reads and checks the files, once. `key` is the block's name in
    /// errors (`"tls"`).
    ///
    /// # Errors
    /// A message naming the parameter and the path.
    pub fn load(&self, key: &str) -> Result<LoadedTls, String> {
        let ca_path = self.ca.as_ref().ok_or_else(|| {
            format!("{key}.ca: required with {key}: the CA that signs the source's certificate")
        })?;
        let (ca_pem, ca) = read_certificates(&format!("{key}.ca"), ca_path)?;
        let identity_pem = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "{key}.key: required with {key}.cert (give both or neither)"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{key}.cert: required with {key}.key (give both or neither)"
                ));
            }
            (Some(c), Some(k)) => {
                let (cert_pem, _) = read_certificates(&format!("{key}.cert"), c)?;
                let (key_pem, _) = read_private_key(&format!("{key}.key"), k)?;
                Some((cert_pem, key_pem))
            }
        };
        if let Some(d) = &self.domain
            && rustls::pki_types::ServerName::try_from(d.as_str()).is_err()
        {
            return Err(format!(
                "{key}.domain: {d:?} is not a DNS name or IP address"
            ));
        }
        Ok(LoadedTls {
            ca_pem,
            ca,
            identity_pem,
            domain: self.domain.clone(),
        })
    }

    /// The tonic client TLS configuration.
    pub fn tonic_config(loaded: &LoadedTls) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&loaded.ca_pem));
        if let Some((cert, key)) = &loaded.identity_pem {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &loaded.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// The rustls client configuration of a source's `tls` block: its CA,
/// the broker's client certificate when given; ring, TLS 1.2 and 1.3. The
/// transport sets the ALPN protocols.
///
/// # Errors
/// A message naming the parameter (`tls.ca`, `tls.cert`, `tls.key`).
pub(crate) fn rustls_client_config(tls: &LoadedTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in &tls.ca {
        roots
            .add(c.clone())
            .map_err(|e| format!("tls.ca: a certificate cannot be trusted: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    match &tls.identity_pem {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|_| "tls.key: no PEM private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.key: does not go with tls.cert: {e}"))
        }
    }
}

/// The credentials of one source, read when its adapter is built.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Client TLS, when the source is reached over `https://`.
    pub tls: Option<LoadedTls>,
    /// The bearer token sent with every call.
    pub bearer: Option<Secret>,
}

impl Credentials {
    /// Reads the `tls` and `auth` blocks and checks them against the
    /// endpoint (`endpoint_key` names it in errors): `https://` needs
    /// `tls`, and `tls` needs `https://`.
    ///
    /// # Errors
    /// A message naming the parameter.
    pub fn load(
        endpoint_key: &str,
        endpoint: &str,
        tls: Option<&TlsParams>,
        auth: Option<&BearerParams>,
    ) -> Result<Self, String> {
        let https = endpoint.starts_with("https://");
        let tls = match tls {
            Some(_) if !https => {
                return Err(format!(
                    "{endpoint_key}: {endpoint:?} must start with https:// when tls is given"
                ));
            }
            None if https => {
                return Err(format!(
                    "tls: required for the https:// {endpoint_key} (at least tls.ca, the CA that \
                     signs the source's certificate)"
                ));
            }
            Some(t) => Some(t.load("tls")?),
            None => None,
        };
        let bearer = auth.map(|a| a.load("auth")).transpose()?;
        Ok(Credentials { tls, bearer })
    }

    /// The `authorization` metadata value of the bearer token, marked
    /// sensitive.
    pub fn grpc_authorization(&self) -> Option<tonic::metadata::AsciiMetadataValue> {
        self.bearer.as_ref().map(|t| {
            let mut v =
                tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {}", t.expose()))
                    .expect("a token of printable ASCII is a metadata value");
            v.set_sensitive(true);
            v
        })
    }
}

/// Why a call failed, in words that name TLS or authentication when the
/// cause does: the error chain, with the TLS alert or certificate problem
/// it holds.
pub fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        if parts.len() >= 6 {
            break;
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> BearerParams {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_inline_token_is_refused_without_being_echoed() {
        let e = auth("bearer_token = 'hunter2-inline'")
            .load("auth")
            .unwrap_err();
        assert!(e.starts_with("auth.bearer_token: "), "{e}");
        assert!(e.contains("files or the environment"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let p = auth("bearer_token = 'hunter2-inline'");
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn exactly_one_of_file_and_env() {
        let e = auth("").load("auth").unwrap_err();
        assert_eq!(e, "auth: bearer_token_file or bearer_token_env is required");
        let e = auth("bearer_token_file = '/x'\nbearer_token_env = 'Y'")
            .load("auth")
            .unwrap_err();
        assert_eq!(
            e,
            "auth: give bearer_token_file or bearer_token_env, not both"
        );
        let e = toml::from_str::<BearerParams>("token_file = '/x'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_file"), "{e}");
    }

    #[test]
    fn token_files_are_read_once_and_never_echoed() {
        let dir = std::env::temp_dir().join(format!("hedui-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "s3cret-TOKEN-value\n").unwrap();
        let t = BearerParams::from_file(&good).load("auth").unwrap();
        assert_eq!(t.expose(), "s3cret-TOKEN-value");
        assert_eq!(format!("{t:?}"), "Secret(…)");
        assert!(!format!("{t}").contains("s3cret"));
        assert!(t.matches(b"s3cret-TOKEN-value"));
        assert!(!t.matches(b"s3cret-TOKEN-valuf"));
        assert!(!t.matches(b"s3cret"));

        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = BearerParams::from_file(&empty).load("auth").unwrap_err();
        assert_eq!(
            e,
            format!("auth.bearer_token_file: {} is empty", empty.display())
        );

        let missing = dir.join("missing");
        let e = BearerParams::from_file(&missing).load("auth").unwrap_err();
        assert_eq!(
            e,
            format!(
                "auth.bearer_token_file: cannot read {}: no such file",
                missing.display()
            )
        );

        let bad = dir.join("bad");
        std::fs::write(&bad, "two words-s3cret").unwrap();
        let e = BearerParams::from_file(&bad).load("auth").unwrap_err();
        assert!(e.starts_with("auth.bearer_token_file: "), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_from_the_environment() {
        let e = auth("bearer_token_env = 'HEDUI_TEST_SURELY_UNSET_TOKEN'")
            .load("auth")
            .unwrap_err();
        assert_eq!(
            e,
            "auth.bearer_token_env: environment variable HEDUI_TEST_SURELY_UNSET_TOKEN is not set"
        );
        // A variable every test run has: read, and never printed.
        let Ok(path) = std::env::var("PATH") else {
            return;
        };
        if path.contains(' ') || path.trim().is_empty() {
            return;
        }
        let t = auth("bearer_token_env = 'PATH'").load("auth").unwrap();
        assert_eq!(t.expose(), path.trim());
        assert!(!format!("{t:?}").contains(&path));
    }

    #[test]
    fn tls_blocks_are_checked() {
        let tls = |t: &str| -> TlsParams { toml::from_str(t).unwrap() };
        let e = tls("cert = '/c.pem'\nkey = '/k.pem'")
            .load("tls")
            .unwrap_err();
        assert!(e.starts_with("tls.ca: required"), "{e}");
        let e = tls("ca = '/no/such/ca.pem'").load("tls").unwrap_err();
        assert_eq!(e, "tls.ca: cannot read /no/such/ca.pem: no such file");
        let dir = std::env::temp_dir().join(format!("hedui-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let e = TlsParams {
            ca: Some(not_pem.clone()),
            cert: None,
            key: None,
            domain: None,
        }
        .load("tls")
        .unwrap_err();
        assert!(
            e.starts_with("tls.ca: ") && e.contains("no PEM certificate"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let e = tls("ca = '/no/ca.pem'\ncert = '/c.pem'")
            .load("tls")
            .unwrap_err();
        // The CA is read first.
        assert!(e.starts_with("tls.ca: "), "{e}");
        let e = toml::from_str::<TlsParams>("ca = '/a'\ncertificate = '/b'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate"), "{e}");
    }

    #[test]
    fn https_and_tls_go_together() {
        let e = Credentials::load(
            "endpoint",
            "http://10.0.0.1:7001",
            Some(&TlsParams {
                ca: Some("/ca.pem".into()),
                cert: None,
                key: None,
                domain: None,
            }),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "endpoint: \"http://10.0.0.1:7001\" must start with https:// when tls is given"
        );
        let e = Credentials::load("endpoint", "https://10.0.0.1:7001", None, None).unwrap_err();
        assert!(
            e.starts_with("tls: required for the https:// endpoint"),
            "{e}"
        );
        let c = Credentials::load("endpoint", "http://10.0.0.1:7001", None, None).unwrap();
        assert!(c.tls.is_none() && c.bearer.is_none());
    }
}
