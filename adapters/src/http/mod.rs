//! The HTTP/JSON transport: the broker calls a department's existing REST
//! endpoint. The request template, how to read the answer and the mapping
//! from the answer's fields to facts are all configuration; adding or
//! changing such a source never changes code.
//!
//! ```toml
//! [[sources]]
//! id = "provident-fund"
//! [sources.transport]
//! type = "http"
//! max_concurrency = 8                  # per-person requests in flight
//! deadline_header = "X-Timeout-Ms"     # optional: the time left, in ms
//! auth = { bearer_token_file = "/run/secrets/hedui-pf-token" }   # or bearer_token_env
//! tls = { ca = "/etc/hedui/pf-ca.pem" }   # with an https:// url; cert + key for mutual TLS
//! [sources.transport.request]
//! method = "GET"
//! url = "https://10.20.0.31:8443/gjj/api/v1/accounts"
//! query = { idcard = "{person_id}" }
//! [sources.transport.response]
//! code = "/code"                       # the system's own result code
//! ok_codes = [0]
//! data = "/data"                       # the person's record; null = no record
//! [[sources.transport.facts]]
//! kind = "PROVIDENT_FUND"
//! record_id = "/grzh"
//! [sources.transport.facts.fields]
//! balance_fen = { from = "/zhye", unit = "yuan" }
//! ```
//!
//! One request per person (`{person_id}` in the URL, query, headers or
//! body), or, with `request.batch = true`, one request per batch of persons
//! (`"{person_ids}"` as a JSON body value) whose answer lists the persons
//! (`response.persons`, each with its id at `response.person_id`). The
//! facts are mapped by [`crate::mapping`]. Authentication: a bearer token
//! from a file or the environment (`auth = { bearer_token_file | bearer_token_env }`,
//! see [`crate::auth`]), a header with a token (`type = "header"`), or HMAC
//! signing ([`sign`]); TLS (mutual when the `tls` block has `cert` and
//! `key`) toward an `https://` URL. The broker's deadline bounds every
//! request and may be sent along (`deadline_header`).
//!
//! Statuses: 2xx is an answer; `response.no_record_status` (default 404) in
//! per-person requests means no record; 400, 401, 403, 404 (batch), 422 are
//! refusals; 429 is rate limiting (with `Retry-After`); 408 and 504 are
//! timeouts; 502 and 503 unavailability; any other status an error at the
//! source. An answer that cannot be read or mapped is unusable (`ERROR`).

pub mod sign;
mod template;
mod tls;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use hedui_proto::v1::{CheckResponse, Fact, FactKind, LookupRequest, LookupResponse, PersonAnswer};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;
pub use template::PLACEHOLDERS;
use template::{Vars, body_placeholders, percent_encode, placeholders, render, render_body};

use tls::SourceConnector;

use crate::{
    Adapter, AdapterError, LookupContext,
    answer::{MAX_FACTS_PER_PERSON, check_answer},
    auth::{BearerParams, Credentials, TlsParams},
    catalog::SourceSpec,
    mapping::{FactConfig, FactMapping, JsonRecord, Scalar, check_json_pointer, instant_of},
    registry::{AdapterFactory, BuildError, parse_params},
};

// === configuration ===

/// Parameters of the `http` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpParams {
    /// The request sent for each person (or each batch).
    pub request: RequestConfig,
    /// How to read the answer.
    #[serde(default)]
    pub response: ResponseConfig,
    /// How the broker proves who it is: `{ bearer_token_file | bearer_token_env }`,
    /// or a `type = "header"` / `type = "hmac"` block.
    #[serde(default, deserialize_with = "http_auth")]
    pub auth: Option<HttpAuth>,
    /// Client TLS (and mutual TLS) toward the source; needs `https://`.
    #[serde(default)]
    pub tls: Option<TlsParams>,
    /// One mapping per fact kind (or per list of records of a kind).
    pub facts: Vec<HttpFactConfig>,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Most requests in flight to the source for one lookup.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Largest answer accepted, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// A header that tells the source the time left, in milliseconds.
    pub deadline_header: Option<String>,
    /// A URL whose 2xx answer means the source is serving; without it the
    /// health check connects to the endpoint.
    pub health_url: Option<String>,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_max_concurrency() -> usize {
    8
}
fn default_max_response_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch() -> usize {
    50
}
fn default_method() -> String {
    "GET".into()
}
fn default_no_record_status() -> Vec<u16> {
    vec![404]
}

/// The request template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// `GET` or `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    /// The URL; placeholders in its path and query are percent-encoded.
    pub url: String,
    /// Query parameters added to the URL.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Headers sent (values may hold placeholders).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body, written as a TOML table; placeholders in its strings
    /// are JSON-escaped.
    pub body: Option<toml::Table>,
    /// One request for a batch of persons instead of one per person.
    #[serde(default)]
    pub batch: bool,
    /// Most persons in one batch request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

/// What a batch answer without an entry for a person asked about means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingPerson {
    /// The source holds no record of the person.
    #[default]
    NoRecord,
    /// The answer is unusable.
    Error,
}

/// How to read an answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Pointer to the system's own result code, e.g. `"/retCode"`.
    pub code: Option<String>,
    /// Codes meaning success (required with `code`).
    #[serde(default, deserialize_with = "codes")]
    pub ok_codes: Vec<String>,
    /// Codes meaning "no record of this person".
    #[serde(default, deserialize_with = "codes")]
    pub no_record_codes: Vec<String>,
    /// Codes meaning "temporarily unavailable, ask again later".
    #[serde(default, deserialize_with = "codes")]
    pub unavailable_codes: Vec<String>,
    /// Pointer to the message that goes with a code, shown in errors.
    pub message: Option<String>,
    /// HTTP statuses meaning "no record of this person" (per-person
    /// requests).
    #[serde(default = "default_no_record_status")]
    pub no_record_status: Vec<u16>,
    /// Pointer to the person's object in a per-person answer (default the
    /// whole answer); null or absent means no record.
    #[serde(default)]
    pub data: String,
    /// Pointer to the list of persons in a batch answer.
    pub persons: Option<String>,
    /// Pointer, within an entry of `persons`, to the person's id.
    pub person_id: Option<String>,
    /// What a batch answer without an entry for a person means.
    #[serde(default)]
    pub missing_person: MissingPerson,
    /// Pointer to the answer's as-of time (default: when it arrived).
    pub as_of: Option<String>,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            code: None,
            ok_codes: Vec::new(),
            no_record_codes: Vec::new(),
            unavailable_codes: Vec::new(),
            message: None,
            no_record_status: default_no_record_status(),
            data: String::new(),
            persons: None,
            person_id: None,
            missing_person: MissingPerson::NoRecord,
            as_of: None,
        }
    }
}

/// Result codes, written as text or whole numbers.
fn codes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = Vec::<toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|v| match v {
            toml::Value::String(s) => Ok(s),
            toml::Value::Integer(i) => Ok(i.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "a code must be a text or a whole number, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

/// The mapping of one fact kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFactConfig {
    /// The fact kind, e.g. `"PROVIDENT_FUND"`.
    pub kind: String,
    /// Pointer, within the person's object, to the list of records (or one
    /// record); without it the person's object is the one record.
    pub records: Option<String>,
    /// Pointer, within a record, to the source's record id.
    pub record_id: String,
    /// Text put before the record id.
    pub record_id_prefix: Option<String>,
    /// Pointer, within a record, to its as-of time.
    pub as_of: Option<String>,
    /// The fact's fields (see [`crate::mapping`]).
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
}

/// How the broker proves who it is, as a `type = "header"` or
/// `type = "hmac"` block. Each secret comes from a file (`*_file`) or an
/// environment variable (`*_env`); the inline form (`value`, `secret`) is
/// kept for the test configurations shipped with the simulated agencies and
/// logs a warning.
#[derive(Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A header carrying a token, e.g. `X-Api-Key: …`.
    Header {
        /// The header's name.
        name: String,
        /// The token inline (test configurations only).
        value: Option<String>,
        /// An environment variable holding the token.
        value_env: Option<String>,
        /// A file holding the token.
        value_file: Option<std::path::PathBuf>,
        /// Text put before the token, e.g. `"Bearer "`.
        #[serde(default)]
        prefix: String,
    },
    /// HMAC-SHA256 request signing ([`sign`]).
    Hmac {
        /// The id of the shared secret, sent in `X-Hedui-Key-Id`.
        key_id: String,
        /// The shared secret inline (test configurations only).
        secret: Option<String>,
        /// An environment variable holding the shared secret.
        secret_env: Option<String>,
        /// A file holding the shared secret.
        secret_file: Option<std::path::PathBuf>,
    },
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::Header {
                name,
                value_env,
                value_file,
                ..
            } => f
                .debug_struct("Header")
                .field("name", name)
                .field("value_env", value_env)
                .field("value_file", value_file)
                .finish_non_exhaustive(),
            AuthConfig::Hmac {
                key_id,
                secret_env,
                secret_file,
                ..
            } => f
                .debug_struct("Hmac")
                .field("key_id", key_id)
                .field("secret_env", secret_env)
                .field("secret_file", secret_file)
                .finish_non_exhaustive(),
        }
    }
}

/// The `auth` block of an HTTP/JSON source.
#[derive(Debug, Clone)]
pub enum HttpAuth {
    /// `authorization: Bearer <token>`, the token from a file or the
    /// environment ([`crate::auth`]).
    Bearer(BearerParams),
    /// A `type = "header"` or `type = "hmac"` block.
    Typed(AuthConfig),
}

/// Reads `auth`: a block with `type` is a typed one, any other the bearer
/// token's.
fn http_auth<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpAuth>, D::Error> {
    let t = toml::Table::deserialize(d)?;
    let v = toml::Value::Table(t.clone());
    if t.contains_key("type") {
        AuthConfig::deserialize(v)
            .map(|a| Some(HttpAuth::Typed(a)))
            .map_err(serde::de::Error::custom)
    } else {
        BearerParams::deserialize(v)
            .map(|a| Some(HttpAuth::Bearer(a)))
            .map_err(serde::de::Error::custom)
    }
}

/// Reads a secret given inline, in a file or through an environment
/// variable (exactly one); errors name the key and the path or variable,
/// never the value.
fn secret(
    key: &str,
    inline: Option<&String>,
    env: Option<&String>,
    file: Option<&std::path::PathBuf>,
) -> Result<String, String> {
    let given =
        usize::from(inline.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if given > 1 {
        return Err(format!(
            "auth: give one of {key}_file, {key}_env and {key}, not several"
        ));
    }
    if let Some(v) = inline {
        tracing::warn!(
            key = %format!("auth.{key}"),
            "a secret written in the configuration; use {key}_file or {key}_env"
        );
        return Ok(v.clone());
    }
    if let Some(var) = env {
        return std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("auth.{key}_env: environment variable {var} is not set"));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "no such file".to_owned()
            } else {
                e.to_string()
            };
            format!("auth.{key}_file: cannot read {}: {why}", path.display())
        })?;
        let v = text.trim();
        if v.is_empty() {
            return Err(format!("auth.{key}_file: {} is empty", path.display()));
        }
        return Ok(v.to_owned());
    }
    Err(format!("auth: {key}_file or {key}_env is required"))
}

// === the adapter ===

#[derive(Clone)]
enum Auth {
    Header(HeaderName, HeaderValue),
    Hmac {
        key_id: HeaderValue,
        secret: Vec<u8>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Header(name, _) => write!(f, "Header({name}: <redacted>)"),
            Auth::Hmac { key_id, .. } => write!(f, "Hmac({key_id:?}, <redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
struct Mapped {
    records: Option<String>,
    mapping: FactMapping,
}

/// An adapter that calls a department's REST endpoint.
#[derive(Debug, Clone)]
pub struct HttpAdapter {
    source_id: String,
    fact_kinds: Vec<FactKind>,
    client: Client<SourceConnector, Full<Bytes>>,
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(HeaderName, String)>,
    body: Option<Json>,
    batch: bool,
    max_batch: usize,
    response: ResponseConfig,
    auth: Option<Auth>,
    facts: Arc<Vec<Mapped>>,
    max_concurrency: usize,
    max_response_bytes: usize,
    deadline_header: Option<HeaderName>,
    health_url: Option<Uri>,
    authority: (String, u16),
    /// How the source is reached, said in connection errors.
    over: &'static str,
}

/// What one request's answer says.
enum Answer {
    /// No record of the person (or of anyone in the batch).
    NoRecord,
    /// The answer, as JSON.
    Data(Json),
}

/// The error chain of `e`, for messages.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    let mut n = 0;
    while let Some(c) = cause {
        n += 1;
        if n > 5 {
            break;
        }
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl HttpAdapter {
    /// An adapter for `source` with these parameters. Reads environment
    /// variables named in `auth`; makes no connection.
    ///
    /// # Errors
    /// A message naming the wrong parameter.
    pub fn new(source: &SourceSpec, params: &HttpParams) -> Result<Self, String> {
        let req = &params.request;
        let method = match req.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            other => {
                return Err(format!("request.method: {other:?} is not GET or POST"));
            }
        };
        if !req.url.starts_with("http://") && !req.url.starts_with("https://") {
            return Err(format!(
                "request.url: {:?} must start with http:// or https://",
                req.url
            ));
        }
        let bearer = match &params.auth {
            Some(HttpAuth::Bearer(b)) => Some(b),
            _ => None,
        };
        let creds = Credentials::load("request.url", &req.url, params.tls.as_ref(), bearer)?;
        let mut used: Vec<String> = Vec::new();
        let mut note = |key: &str, text: &str| -> Result<(), String> {
            let ps = placeholders(text).map_err(|e| format!("{key}: {e}"))?;
            if ps.contains(&"person_ids") {
                return Err(format!(
                    "{key}: {{person_ids}} may only be a whole value of the JSON body"
                ));
            }
            used.extend(ps.into_iter().map(str::to_owned));
            Ok(())
        };
        note("request.url", &req.url)?;
        for (k, v) in &req.query {
            note(&format!("request.query.{k}"), v)?;
        }
        let mut headers = Vec::new();
        for (k, v) in &req.headers {
            note(&format!("request.headers.{k}"), v)?;
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("request.headers: {k:?} is not a header name"))?;
            headers.push((name, v.clone()));
        }
        let body = match &req.body {
            None => None,
            Some(_) if method == Method::GET => {
                return Err(
                    "request.body: a GET request has no body; use method = \"POST\"".into(),
                );
            }
            Some(t) => {
                let json = serde_json::to_value(t)
                    .map_err(|e| format!("request.body: cannot be JSON: {e}"))?;
                used.extend(body_placeholders(&json).map_err(|e| format!("request.body: {e}"))?);
                Some(json)
            }
        };
        let resp = &params.response;
        if req.batch {
            if !used.iter().any(|p| p == "person_ids") {
                return Err("request.batch: the body must hold \"{person_ids}\"".into());
            }
            if used.iter().any(|p| p == "person_id") {
                return Err("request.batch: a batch request has no single {person_id}".into());
            }
            if resp.persons.is_none() || resp.person_id.is_none() {
                return Err(
                    "response: a batch answer needs persons (the list) and person_id (each entry's id)"
                        .into(),
                );
            }
            if req.max_batch == 0 || req.max_batch > crate::server::MAX_PERSONS_PER_LOOKUP {
                return Err(format!(
                    "request.max_batch: must be between 1 and {}",
                    crate::server::MAX_PERSONS_PER_LOOKUP
                ));
            }
        } else {
            if !used.iter().any(|p| p == "person_id") {
                return Err(
                    "request: {person_id} must appear in the url, query, headers or body".into(),
                );
            }
            if used.iter().any(|p| p == "person_ids") {
                return Err("request.body: \"{person_ids}\" needs request.batch = true".into());
            }
            if resp.persons.is_some() || resp.person_id.is_some() {
                return Err("response.persons: applies to batch requests only".into());
            }
        }
        for (key, p) in [
            ("response.code", resp.code.as_deref()),
            ("response.message", resp.message.as_deref()),
            ("response.data", Some(resp.data.as_str())),
            ("response.persons", resp.persons.as_deref()),
            ("response.person_id", resp.person_id.as_deref()),
            ("response.as_of", resp.as_of.as_deref()),
        ] {
            if let Some(p) = p {
                check_json_pointer(p).map_err(|e| format!("{key}: {e}"))?;
            }
        }
        if resp.code.is_some() && resp.ok_codes.is_empty() {
            return Err("response.ok_codes: required with response.code".into());
        }
        if params.facts.is_empty() {
            return Err("facts: at least one mapping is required".into());
        }
        let mut facts = Vec::with_capacity(params.facts.len());
        for (i, f) in params.facts.iter().enumerate() {
            let at = |m: String| format!("facts[{i}] ({}): {m}", f.kind);
            if let Some(r) = &f.records {
                check_json_pointer(r).map_err(|e| at(format!("records: {e}")))?;
            }
            let kind = crate::mapping::fact_kind(&f.kind).map_err(at)?;
            if !source.fact_kinds.contains(&kind) {
                return Err(at(format!(
                    "source {:?} does not report {}",
                    source.id,
                    kind.as_str_name().trim_start_matches("FACT_KIND_")
                )));
            }
            let mapping = FactMapping::new(
                &FactConfig {
                    kind: &f.kind,
                    record_id: &f.record_id,
                    record_id_prefix: f.record_id_prefix.as_deref(),
                    as_of: f.as_of.as_deref(),
                    fields: &f.fields,
                },
                &check_json_pointer,
            )
            .map_err(at)?;
            facts.push(Mapped {
                records: f.records.clone(),
                mapping,
            });
        }
        for k in &source.fact_kinds {
            if !facts.iter().any(|m| m.mapping.kind() == *k) {
                return Err(format!(
                    "facts: no mapping for {}, which source {:?} reports; without one its \
                     silence would read as \"no record\"",
                    k.as_str_name().trim_start_matches("FACT_KIND_"),
                    source.id
                ));
            }
        }
        let auth = match &params.auth {
            None => None,
            Some(HttpAuth::Bearer(_)) => {
                let token = creds.bearer.as_ref().expect("a bearer block loads a token");
                let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| "auth: the token is not a valid header value".to_owned())?;
                v.set_sensitive(true);
                Some(Auth::Header(header::AUTHORIZATION, v))
            }
            Some(HttpAuth::Typed(AuthConfig::Header {
                name,
                value,
                value_env,
                value_file,
                prefix,
            })) => {
                let token = secret(
                    "value",
                    value.as_ref(),
                    value_env.as_ref(),
                    value_file.as_ref(),
                )?;
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("auth.name: {name:?} is not a header name"))?;
                let mut v = HeaderValue::from_str(&format!("{prefix}{token}"))
                    .map_err(|_| "auth: the token is not a valid header value".to_owned())?;
                v.set_sensitive(true);
                Some(Auth::Header(name, v))
            }
            Some(HttpAuth::Typed(AuthConfig::Hmac {
                key_id,
                secret: s,
                secret_env,
                secret_file,
            })) => {
                let key = secret(
                    "secret",
                    s.as_ref(),
                    secret_env.as_ref(),
                    secret_file.as_ref(),
                )?;
                Some(Auth::Hmac {
                    key_id: HeaderValue::from_str(key_id)
                        .map_err(|_| format!("auth.key_id: {key_id:?} is not a header value"))?,
                    secret: key.into_bytes(),
                })
            }
        };
        if params.max_concurrency == 0 || params.max_concurrency > 256 {
            return Err("max_concurrency: must be between 1 and 256".into());
        }
        if params.max_response_bytes == 0 {
            return Err("max_response_bytes: must be positive".into());
        }
        let deadline_header = params
            .deadline_header
            .as_ref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("deadline_header: {h:?} is not a header name"))
            })
            .transpose()?;
        let health_url = params
            .health_url
            .as_ref()
            .map(|u| {
                let scheme = if creds.tls.is_some() { "https" } else { "http" };
                u.parse::<Uri>()
                    .ok()
                    .filter(|x| x.scheme_str() == Some(scheme) && x.authority().is_some())
                    .ok_or_else(|| format!("health_url: {u:?} is not an {scheme}:// URL"))
            })
            .transpose()?;
        // The URL with sample values must be a URL.
        let sample_ids = ["110105194912310021".to_owned()];
        let sample = Vars {
            person_id: Some(&sample_ids[0]),
            person_ids: &sample_ids,
            request_id: "r",
            purpose: "PURPOSE_DIBAO_APPLICATION",
            consent_reference: "c",
            source_id: &source.id,
        };
        let uri: Uri = render(&req.url, &sample, &percent_encode)
            .parse()
            .map_err(|e| format!("request.url: {:?} is not a URL: {e}", req.url))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("request.url: {:?} has no host", req.url))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if creds.tls.is_some() { 443 } else { 80 });

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(params.connect_timeout_ms)));
        http.set_nodelay(true);
        let tls = creds
            .tls
            .as_ref()
            .map(|t| tls::client_config(t).map(|c| (c, t.domain.clone())))
            .transpose()?;
        let connector = SourceConnector::new(http, tls)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpAdapter {
            source_id: source.id.clone(),
            fact_kinds: source.fact_kinds.clone(),
            client,
            method,
            url: req.url.clone(),
            query: req.query.clone().into_iter().collect(),
            headers,
            body,
            batch: req.batch,
            max_batch: req.max_batch,
            response: resp.clone(),
            auth,
            facts: Arc::new(facts),
            max_concurrency: params.max_concurrency,
            max_response_bytes: params.max_response_bytes,
            deadline_header,
            health_url,
            authority: (host, port),
            over: crate::grpc::over_of(creds.tls.as_ref()),
        })
    }

    fn request(
        &self,
        vars: &Vars<'_>,
        ctx: &LookupContext,
    ) -> Result<http::Request<Full<Bytes>>, AdapterError> {
        let mut url = render(&self.url, vars, &percent_encode);
        for (i, (k, v)) in self.query.iter().enumerate() {
            let sep = if i == 0 && !url.contains('?') {
                '?'
            } else {
                '&'
            };
            url.push(sep);
            url.push_str(&percent_encode(k));
            url.push('=');
            url.push_str(&percent_encode(&render(v, vars, &|x| x.to_owned())));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| AdapterError::Internal(format!("request URL does not parse: {e}")))?;
        let body = match &self.body {
            Some(b) => serde_json::to_vec(&render_body(b, vars))
                .map_err(|e| AdapterError::Internal(format!("request body: {e}")))?,
            None => Vec::new(),
        };
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(&uri)
            .header(header::ACCEPT, "application/json");
        if self.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
        }
        for (name, v) in &self.headers {
            let v = HeaderValue::from_str(&render(v, vars, &|x| x.to_owned())).map_err(|_| {
                AdapterError::Rejected(format!("a value cannot be sent in header {name}"))
            })?;
            builder = builder.header(name, v);
        }
        if let Some(h) = &self.deadline_header {
            builder = builder.header(h, ctx.remaining().as_millis().to_string());
        }
        if let Some(tp) = &ctx.traceparent {
            builder = builder.header(crate::TRACEPARENT, tp.as_str());
        }
        match &self.auth {
            None => {}
            Some(Auth::Header(name, value)) => builder = builder.header(name, value.clone()),
            Some(Auth::Hmac { key_id, secret }) => {
                let ts = Utc::now().timestamp();
                let nonce = uuid::Uuid::new_v4().simple().to_string();
                let pq = uri.path_and_query().map_or("/", |p| p.as_str());
                let text = sign::string_to_sign(self.method.as_str(), pq, ts, &nonce, &body);
                builder = builder
                    .header(sign::KEY_ID_HEADER, key_id.clone())
                    .header(sign::TIMESTAMP_HEADER, ts.to_string())
                    .header(sign::NONCE_HEADER, nonce)
                    .header(sign::SIGNATURE_HEADER, sign::signature(secret, &text));
            }
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AdapterError::Internal(format!("request: {e}")))
    }

    /// Sends one request and reads its answer.
    async fn send(
        &self,
        vars: &Vars<'_>,
        ctx: &LookupContext,
        per_person: bool,
    ) -> Result<Answer, AdapterError> {
        let req = self.request(vars, ctx)?;
        let resp = match tokio::time::timeout_at(ctx.deadline, self.client.request(req)).await {
            Err(_) => return Err(AdapterError::Timeout),
            Ok(Err(e)) => {
                return Err(AdapterError::Unavailable(format!(
                    "cannot reach the source{}: {}",
                    self.over,
                    chain(&e)
                )));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let read = Limited::new(resp.into_body(), self.max_response_bytes).collect();
        let body = match tokio::time::timeout_at(ctx.deadline, read).await {
            Err(_) => return Err(AdapterError::Timeout),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(AdapterError::Malformed(format!(
                    "answer larger than {} bytes",
                    self.max_response_bytes
                )));
            }
            Ok(Err(e)) => {
                return Err(AdapterError::Unavailable(format!(
                    "answer interrupted: {}",
                    chain(e.as_ref())
                )));
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        if per_person && self.response.no_record_status.contains(&status.as_u16()) {
            return Ok(Answer::NoRecord);
        }
        let json: Option<Json> = serde_json::from_slice(&body).ok();
        let said = {
            let m = json
                .as_ref()
                .zip(self.response.message.as_deref())
                .and_then(|(j, p)| Scalar::from_json(j.pointer(p)).ok())
                .and_then(|s| match s {
                    Scalar::Text(t) => Some(t),
                    _ => None,
                })
                .unwrap_or_default();
            let m: String = m.chars().take(200).collect();
            if m.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {m}")
            }
        };
        if !status.is_success() {
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS => AdapterError::RateLimited { retry_after },
                StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => AdapterError::Timeout,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => {
                    AdapterError::Unavailable(said)
                }
                StatusCode::BAD_REQUEST
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::UNPROCESSABLE_ENTITY => AdapterError::Rejected(said),
                _ => AdapterError::Internal(said),
            });
        }
        let json = json.ok_or_else(|| {
            AdapterError::Malformed(format!("the answer ({} bytes) is not JSON", body.len()))
        })?;
        if let Some(p) = &self.response.code {
            let code = Scalar::from_json(json.pointer(p))
                .ok()
                .and_then(|c| match c {
                    Scalar::Text(t) => Some(t.trim().to_owned()),
                    Scalar::Int(i) => Some(i.to_string()),
                    _ => None,
                })
                .ok_or_else(|| {
                    AdapterError::Malformed(format!("the answer has no result code at {p}"))
                })?;
            let r = &self.response;
            if r.no_record_codes.contains(&code) {
                return Ok(Answer::NoRecord);
            }
            if r.unavailable_codes.contains(&code) {
                return Err(AdapterError::Unavailable(format!("code {code}: {said}")));
            }
            if !r.ok_codes.contains(&code) {
                return Err(AdapterError::Internal(format!("code {code}: {said}")));
            }
        }
        Ok(Answer::Data(json))
    }

    fn as_of_of(&self, root: &Json) -> Result<DateTime<Utc>, AdapterError> {
        let Some(p) = &self.response.as_of else {
            return Ok(Utc::now());
        };
        let v = Scalar::from_json(root.pointer(p))
            .map_err(|e| AdapterError::Malformed(format!("response.as_of {p}: {e}")))?;
        if v == Scalar::Null {
            return Ok(Utc::now());
        }
        instant_of(&v)
            .ok_or_else(|| AdapterError::Malformed(format!("response.as_of {p}: not a time")))
    }

    /// The facts in one person's object.
    fn facts_of(
        &self,
        person: &Json,
        as_of: DateTime<Utc>,
        wanted: &[FactKind],
    ) -> Result<Vec<Fact>, AdapterError> {
        let mut out = Vec::new();
        for m in self.facts.iter() {
            let kind = m.mapping.kind();
            if !wanted.is_empty() && !wanted.contains(&kind) {
                continue;
            }
            let records: Vec<&Json> = match &m.records {
                None => vec![person],
                Some(p) => match person.pointer(p) {
                    None | Some(Json::Null) => Vec::new(),
                    Some(Json::Array(items)) => items.iter().collect(),
                    Some(o @ Json::Object(_)) => vec![o],
                    Some(_) => {
                        return Err(AdapterError::Malformed(format!(
                            "{}: {p} is not a list of records",
                            m.mapping.kind_name()
                        )));
                    }
                },
            };
            if out.len() + records.len() > MAX_FACTS_PER_PERSON {
                return Err(AdapterError::Malformed(format!(
                    "more than {MAX_FACTS_PER_PERSON} facts about one person"
                )));
            }
            for r in records {
                let fact = m
                    .mapping
                    .fact(&JsonRecord(r), as_of)
                    .map_err(|e| AdapterError::Malformed(e.to_string()))?;
                out.push(fact);
            }
        }
        Ok(out)
    }

    async fn one_person(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
        purpose: &str,
        person_id: &str,
        wanted: &[FactKind],
    ) -> Result<(PersonAnswer, Option<DateTime<Utc>>), AdapterError> {
        let vars = Vars {
            person_id: Some(person_id),
            person_ids: &[],
            request_id: &request.request_id,
            purpose,
            consent_reference: &request.consent_reference,
            source_id: &self.source_id,
        };
        let answer = PersonAnswer {
            person_id: person_id.to_owned(),
            facts: Vec::new(),
        };
        match self.send(&vars, ctx, true).await? {
            Answer::NoRecord => Ok((answer, None)),
            Answer::Data(root) => {
                let as_of = self.as_of_of(&root)?;
                let facts = match root.pointer(&self.response.data) {
                    None | Some(Json::Null) => Vec::new(),
                    Some(person) => self.facts_of(person, as_of, wanted)?,
                };
                Ok((PersonAnswer { facts, ..answer }, Some(as_of)))
            }
        }
    }

    async fn one_batch(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
        purpose: &str,
        ids: &[String],
        wanted: &[FactKind],
    ) -> Result<(Vec<PersonAnswer>, Option<DateTime<Utc>>), AdapterError> {
        let vars = Vars {
            person_id: None,
            person_ids: ids,
            request_id: &request.request_id,
            purpose,
            consent_reference: &request.consent_reference,
            source_id: &self.source_id,
        };
        let empty = |id: &String| PersonAnswer {
            person_id: id.clone(),
            facts: Vec::new(),
        };
        let root = match self.send(&vars, ctx, false).await? {
            Answer::NoRecord => return Ok((ids.iter().map(empty).collect(), None)),
            Answer::Data(root) => root,
        };
        let as_of = self.as_of_of(&root)?;
        let persons_at = self.response.persons.as_deref().unwrap_or_default();
        let id_at = self.response.person_id.as_deref().unwrap_or_default();
        let entries = match root.pointer(persons_at) {
            None | Some(Json::Null) => &[][..],
            Some(Json::Array(a)) => a.as_slice(),
            Some(_) => {
                return Err(AdapterError::Malformed(format!(
                    "response.persons {persons_at} is not a list"
                )));
            }
        };
        let asked: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut by_id: HashMap<String, &Json> = HashMap::with_capacity(entries.len());
        for e in entries {
            let id = match Scalar::from_json(e.pointer(id_at)) {
                Ok(Scalar::Text(t)) => t,
                _ => {
                    return Err(AdapterError::Malformed(format!(
                        "an entry of the answer has no person id at {id_at}"
                    )));
                }
            };
            if !asked.contains(id.as_str()) {
                return Err(AdapterError::Malformed(
                    "answer about a person not asked about".into(),
                ));
            }
            if by_id.insert(id, e).is_some() {
                return Err(AdapterError::Malformed("a person is answered twice".into()));
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match by_id.get(id) {
                Some(e) => out.push(PersonAnswer {
                    person_id: id.clone(),
                    facts: self.facts_of(e, as_of, wanted)?,
                }),
                None if self.response.missing_person == MissingPerson::NoRecord => {
                    out.push(empty(id));
                }
                None => {
                    return Err(AdapterError::Malformed(
                        "a person asked about is missing from the answer".into(),
                    ));
                }
            }
        }
        Ok((out, Some(as_of)))
    }

    async fn fetch(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
        ids: &[String],
    ) -> Result<(Vec<PersonAnswer>, Option<DateTime<Utc>>), AdapterError> {
        let wanted: Vec<FactKind> = request.fact_kinds().collect();
        let purpose = request.purpose().as_str_name();
        let mut answers = Vec::with_capacity(ids.len());
        let mut oldest: Option<DateTime<Utc>> = None;
        let mut note = |t: Option<DateTime<Utc>>| {
            if let Some(t) = t {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        };
        if self.batch {
            // Collected first: the futures borrow `ids`, and a lazy map
            // would ask the compiler for a lifetime it cannot name.
            let calls: Vec<_> = ids
                .chunks(self.max_batch)
                .map(|c| self.one_batch(ctx, request, purpose, c, &wanted))
                .collect();
            let mut pending = stream::iter(calls).buffer_unordered(self.max_concurrency);
            while let Some(r) = pending.next().await {
                let (a, t) = r?;
                answers.extend(a);
                note(t);
            }
        } else {
            let calls: Vec<_> = ids
                .iter()
                .map(|id| self.one_person(ctx, request, purpose, id, &wanted))
                .collect();
            let mut pending = stream::iter(calls).buffer_unordered(self.max_concurrency);
            while let Some(r) = pending.next().await {
                let (a, t) = r?;
                answers.push(a);
                note(t);
            }
        }
        Ok((answers, oldest))
    }
}

#[async_trait]
impl Adapter for HttpAdapter {
    fn source_id(&self) -> &str {
        &self.source_id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        if ctx.remaining().is_zero() {
            return Err(AdapterError::Timeout);
        }
        let ids = crate::answer::distinct_person_ids(request);
        let (answers, as_of) =
            match tokio::time::timeout_at(ctx.deadline, self.fetch(ctx, request, &ids)).await {
                Err(_) => return Err(AdapterError::Timeout),
                Ok(r) => r?,
            };
        let response = LookupResponse {
            answers,
            as_of: Some(crate::mapping::timestamp(as_of.unwrap_or_else(Utc::now))),
        };
        check_answer(request, &response, &self.fact_kinds)?;
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let kinds = self.fact_kinds.iter().map(|k| *k as i32).collect();
        let limit = Duration::from_secs(5);
        match &self.health_url {
            Some(uri) => {
                let req = http::Request::get(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| AdapterError::Internal(format!("health_url: {e}")))?;
                let resp = tokio::time::timeout(limit, self.client.request(req))
                    .await
                    .map_err(|_| AdapterError::Timeout)?
                    .map_err(|e| {
                        AdapterError::Unavailable(format!(
                            "cannot reach the source{}: {}",
                            self.over,
                            chain(&e)
                        ))
                    })?;
                let ok = resp.status().is_success();
                Ok(CheckResponse {
                    serving: ok,
                    fact_kinds: kinds,
                    detail: if ok {
                        String::new()
                    } else {
                        format!("health_url answered HTTP {}", resp.status())
                    },
                })
            }
            None => {
                let (host, port) = &self.authority;
                tokio::time::timeout(
                    limit,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| AdapterError::Timeout)?
                .map_err(|e| {
                    AdapterError::Unavailable(format!("cannot reach {host}:{port}: {e}"))
                })?;
                Ok(CheckResponse {
                    serving: true,
                    fact_kinds: kinds,
                    detail: "reachable (no health_url configured)".into(),
                })
            }
        }
    }
}

/// The factory of the `http` transport.
#[derive(Debug, Clone, Copy)]
pub struct HttpFactory;

impl AdapterFactory for HttpFactory {
    fn transport(&self) -> &'static str {
        "http"
    }

    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let params: HttpParams = parse_params("http", params)?;
        let adapter = HttpAdapter::new(source, &params).map_err(|message| BuildError::Params {
            kind: "http".into(),
            message,
        })?;
        Ok(Arc::new(adapter))
    }
}

#[cfg(test)]
mod tests;
