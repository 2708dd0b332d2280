//! The broker's configuration: one TOML file. Every key is optional; with
//! no file at all the broker runs on embedded defaults: a SQLite file for
//! reports and the 28 sources of Dachuan answered by in-process simulated
//! agencies.
//!
//! Layered: embedded defaults, then the file, then `HEDUI__SECTION__KEY`
//! environment variables ([`Config::layered`]); `hedui config check FILE`
//! checks it without starting anything. `SIGHUP` reloads what can change
//! while running (`crate::app::Reloader`).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:50051"
//! shutdown_grace_ms = 20000   # after SIGTERM, time for calls in flight
//! max_in_flight = 2048        # verifications at once; beyond, shed (UNAVAILABLE)
//!
//! [tls]                       # see crate::security::config for every key
//! cert = "broker.pem"         # with key, client_ca, crl, min_version
//!
//! [clients."spiffe://dachuan.gov.cn/platform/township"]
//! role = "platform"           # platform, auditor or admin
//!
//! [quotas]                    # per client; [clients."<id>"] overrides
//! rate_per_s = 50
//!
//! [telemetry]                 # see crate::telemetry
//! otlp_endpoint = "http://otel-collector:4317"
//!
//! [ops]
//! listen = "0.0.0.0:9464"     # /healthz, /readyz, /metrics
//!
//! [store]
//! path = "hedui.db"           # SQLite file for reports, or ":memory:"
//!
//! [audit]                     # see crate::audit::config for every key
//! path = "hedui-audit.db"     # SQLite file of the audit log
//!
//! [verification]
//! default_deadline_ms = 10000 # when a request sets none
//! max_deadline_ms = 120000    # longest a request may ask for
//!
//! [consent]
//! required = false            # true: every verification needs a registered
//!                             # authorization letter of the caller's platform
//!                             # that covers its purpose and persons, valid
//!                             # today; otherwise PERMISSION_DENIED before any
//!                             # source is asked (crate::consent)
//!
//! [cache]                     # see crate::guard::config for every key
//! ttl_s = 600
//!
//! [limits.default]            # per source: [limits.sources.<id>]
//! rate_per_s = 100            # absent: no rate limit
//! max_concurrent = 64
//!
//! [policy]
//! dir = "policies"            # extra dated per-county policy files
//!
//! [purposes.temporary_assistance]   # what one purpose may see; each key optional
//! sources = ["public-security", "civil-affairs", "rural-commercial-bank"]
//! fact_kinds = ["household_registration", "social_assistance", "financial_account"]
//! aggregate = ["financial_account"] # seen only as totals per member
//!
//! [simulation]                # parameters of the "simulated" transport
//! seed = 2018
//! households = 3000
//!
//! [[sources]]                 # when present, exactly these sources are asked
//! id = "traffic-police"
//! [sources.transport]
//! type = "grpc"
//! endpoint = "http://127.0.0.1:7002"
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use hedui_adapters::{
    catalog::{Catalog, HOUSEHOLD_SOURCE, RawSourceSpec, SourceSpec},
    registry::TransportConfig,
};
use hedui_proto::v1::FactKind;
use serde::Deserialize;

use crate::report::disclosure::{self, Disclosure};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gRPC listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// mTLS on the listener (`crate::security::config`); required unless
    /// the broker is started with `--insecure-plaintext-development-only`.
    pub tls: Option<crate::security::config::TlsConfig>,
    /// Client certificate identities (SAN URI or DNS name) and their roles.
    #[serde(default)]
    pub clients: std::collections::BTreeMap<String, crate::security::config::ClientConfig>,
    /// The quota of every client without its own.
    #[serde(default)]
    pub quotas: crate::security::config::QuotaConfig,
    /// Traces and metrics export (`crate::telemetry`).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The operations listener: health, readiness, metrics.
    #[serde(default)]
    pub ops: crate::telemetry::OpsConfig,
    /// Where reports are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// The audit log (`crate::audit::config`).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Deadlines.
    #[serde(default)]
    pub verification: VerificationConfig,
    /// Whether verifications need a registered authorization letter
    /// (`crate::consent`).
    #[serde(default)]
    pub consent: crate::consent::ConsentConfig,
    /// Reuse of answers (`crate::guard::config`).
    #[serde(default)]
    pub cache: crate::guard::config::CacheConfig,
    /// Protection of each source (`crate::guard::config`).
    #[serde(default)]
    pub limits: crate::guard::config::LimitsConfig,
    /// Where change events of households under management come from
    /// (`crate::watch::feed`).
    #[serde(default)]
    pub changes: crate::watch::feed::ChangesConfig,
    /// Per purpose (`dibao_application`, `medical_assistance`, ...), the
    /// sources that may be asked and the fact kinds that may be seen; a
    /// purpose not listed may ask every source and see every kind.
    #[serde(default)]
    pub purposes: std::collections::BTreeMap<String, PurposeConfig>,
    /// Policies beyond the embedded Dachuan one.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Parameters given to every source on the `simulated` transport unless
    /// the source sets its own.
    #[serde(default)]
    pub simulation: toml::Table,
    /// The sources to ask. Empty means every source of the embedded catalog
    /// over the `simulated` transport.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

/// The gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// After SIGTERM, how long calls in flight may take to finish before
    /// the broker stops, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Verifications in flight over all clients beyond which new ones are
    /// shed at once with `UNAVAILABLE` (0: no limit).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_shutdown_grace_ms() -> u64 {
    20_000
}

fn default_max_in_flight() -> usize {
    // About 1.4 s of work at the 1,473 verifications/s measured on two
    // cores (docs/benchmarks.md): more waiting work only adds latency.
    2048
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

/// Where reports are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file (created when missing), or `:memory:`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("hedui.db")
}

/// Deadlines of verifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationConfig {
    /// How long sources are waited for when a request sets no deadline, in
    /// milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// The longest deadline a request may set, in milliseconds.
    #[serde(default = "max_deadline_ms")]
    pub max_deadline_ms: u64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        Self {
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: max_deadline_ms(),
        }
    }
}

fn default_deadline_ms() -> u64 {
    10_000
}

fn max_deadline_ms() -> u64 {
    120_000
}

/// Policies beyond the embedded one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A directory of dated per-county policy files (`*.toml`).
    pub dir: Option<PathBuf>,
}

/// What one purpose may see (`crate::report::disclosure`). Every key is
/// optional; an absent one restricts nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeConfig {
    /// The sources that may be asked for this purpose (the household
    /// source always among them); the others are not asked, and what
    /// needs them is inconclusive.
    pub sources: Option<Vec<String>>,
    /// The fact kinds that may reach the caller for this purpose, named as
    /// `hedui.v1.FactKind` without its prefix in lower case (e.g.
    /// `school_enrolment`; `household_registration` always among them).
    /// A source serving none of them is not asked; facts of other kinds
    /// never leave the broker, and what needs them is inconclusive.
    pub fact_kinds: Option<Vec<String>>,
    /// Fact kinds the purpose sees only as totals per member, without
    /// account identifiers: `financial_account` (summed per account type)
    /// and `account_outflow`.
    #[serde(default)]
    pub aggregate: Vec<String>,
}

impl PurposeConfig {
    /// Checks this `[purposes.<name>]` table against the configured
    /// sources `specs`.
    fn disclosure(&self, name: &str, specs: &[SourceSpec]) -> Result<Disclosure, String> {
        let at = format!("purposes.{name}");
        let kinds = |key: &str, names: &[String]| -> Result<Vec<FactKind>, String> {
            let mut out: Vec<FactKind> = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                let kind = disclosure::parse_kind(n).ok_or_else(|| {
                    format!(
                        "{at}.{key}[{i}]: {n:?} is not a fact kind; allowed: {}",
                        disclosure::kind_names(&disclosure::all_kinds())
                    )
                })?;
                if out.contains(&kind) {
                    return Err(format!("{at}.{key}[{i}]: {n:?} appears twice"));
                }
                out.push(kind);
            }
            Ok(out)
        };
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        if let Some(sources) = &self.sources {
            for (i, s) in sources.iter().enumerate() {
                if !ids.contains(&s.as_str()) {
                    return Err(format!(
                        "{at}.sources[{i}]: {s:?} is not a configured source; configured: {}",
                        ids.join(", ")
                    ));
                }
            }
            if !sources.iter().any(|s| s == HOUSEHOLD_SOURCE) {
                return Err(format!(
                    "{at}.sources: must include the household source {HOUSEHOLD_SOURCE:?}"
                ));
            }
        }
        let fact_kinds = match &self.fact_kinds {
            None => None,
            Some(names) => {
                let k = kinds("fact_kinds", names)?;
                if !k.contains(&FactKind::HouseholdRegistration) {
                    return Err(format!(
                        "{at}.fact_kinds: must include \"household_registration\" (the household \
                         is resolved through it)"
                    ));
                }
                Some(k)
            }
        };
        let aggregate = kinds("aggregate", &self.aggregate)?;
        for (i, k) in aggregate.iter().enumerate() {
            if !disclosure::AGGREGATABLE.contains(k) {
                return Err(format!(
                    "{at}.aggregate[{i}]: {:?} cannot be seen as totals; allowed: {}",
                    self.aggregate[i],
                    disclosure::kind_names(&disclosure::AGGREGATABLE)
                ));
            }
            if fact_kinds.as_ref().is_some_and(|f| !f.contains(k)) {
                return Err(format!(
                    "{at}.aggregate[{i}]: {:?} is not in {at}.fact_kinds",
                    self.aggregate[i]
                ));
            }
        }
        let d = Disclosure {
            purpose: name.to_owned(),
            sources: self.sources.clone(),
            fact_kinds,
            aggregate,
        };
        // A source listed but serving no allowed kind would never be asked:
        // the two lists disagree.
        if let Some(sources) = &self.sources {
            for (i, s) in sources.iter().enumerate() {
                if let Some(spec) = specs.iter().find(|x| &x.id == s)
                    && !spec.fact_kinds.iter().any(|k| d.allows_kind(*k))
                {
                    return Err(format!(
                        "{at}.sources[{i}]: {s:?} serves none of {at}.fact_kinds (it serves {})",
                        disclosure::kind_names(&spec.fact_kinds)
                    ));
                }
            }
        }
        Ok(d)
    }
}

/// Names of every purpose, as `[purposes.<name>]` takes them.
fn purpose_names() -> String {
    (1..)
        .map_while(|i| hedui_proto::v1::Purpose::try_from(i).ok())
        .map(|p| crate::verify::purpose_name(p as i32))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One source to ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source's id; a catalog id, or a new one with `name` and
    /// `fact_kinds`.
    pub id: String,
    /// Department or institution name (required for a source not in the
    /// catalog; overrides the catalog's otherwise).
    pub name: Option<String>,
    /// Fact kinds it reports (required for a source not in the catalog).
    pub fact_kinds: Option<Vec<String>>,
    /// How the broker reaches it.
    pub transport: TransportConfig,
}

/// The prefix of environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "HEDUI__";

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file, or `(defaults)`.
    pub file: String,
    /// What is wrong, naming the key.
    pub message: String,
}

/// A source resolved against the catalog: what it is and how to reach it.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    /// What the source is.
    pub spec: SourceSpec,
    /// How to reach it.
    pub transport: TransportConfig,
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and what is allowed.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Reads the configuration as the broker runs with it: embedded
    /// defaults, then `path` (when given), then every `HEDUI__` environment
    /// variable ([`Config::layered`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the variable, the key and what
    /// is allowed.
    pub fn load_layered(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with(ENV_PREFIX)
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        Self::layered(path, &env)
    }

    /// Defaults, then the file at `path`, then `env`: each
    /// `HEDUI__SECTION__KEY=value` sets `key` of `[section]` (segments
    /// lower-cased; `HEDUI__LIMITS__DEFAULT__RATE_PER_S=50` sets
    /// `limits.default.rate_per_s`). A value that parses as a TOML value
    /// (a number, `true`, `["a", "b"]`, `"quoted"`) is taken as one;
    /// anything else is a string. Unknown keys are refused like unknown
    /// keys in the file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the variable, the key and what
    /// is allowed.
    pub fn layered(path: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let (file, text) = match path {
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: file.clone(),
                    message: format!("cannot read: {e}"),
                })?;
                (file, text)
            }
            None => ("(defaults)".to_owned(), String::new()),
        };
        if env.is_empty() {
            return Self::parse(&text, &file);
        }
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            file: file.clone(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut names = Vec::new();
        for (name, value) in env {
            let err = |message: String| ConfigError {
                file: format!("environment {name}"),
                message,
            };
            let keys: Vec<String> = name
                .strip_prefix(ENV_PREFIX)
                .unwrap_or(name)
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if keys.iter().any(String::is_empty) {
                return Err(err(format!(
                    "an empty key; write {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}AUDIT__BACKEND"
                )));
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let (last, parents) = keys.split_last().expect("at least one key");
            let mut at = &mut table;
            for (i, k) in parents.iter().enumerate() {
                let entry = at
                    .entry(k.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                at = entry
                    .as_table_mut()
                    .ok_or_else(|| err(format!("{} is not a table", keys[..=i].join("."))))?;
            }
            at.insert(last.clone(), parsed);
            names.push(name.as_str());
        }
        let label = format!("{file} with {}", names.join(", "));
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError {
                    file: label.clone(),
                    message: e.to_string().trim().replace('\n', " "),
                })?;
        config.validate(&label)?;
        Ok(config)
    }

    /// Parses and checks configuration text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and what is allowed.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let v = &self.verification;
        if v.default_deadline_ms == 0 {
            return Err(err("verification.default_deadline_ms: must be > 0".into()));
        }
        if v.max_deadline_ms < v.default_deadline_ms {
            return Err(err(format!(
                "verification.max_deadline_ms: must be >= default_deadline_ms ({})",
                v.default_deadline_ms
            )));
        }
        let sources = self.resolve_sources(&Catalog::dachuan()).map_err(err)?;
        let specs: Vec<SourceSpec> = sources.into_iter().map(|s| s.spec).collect();
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        crate::guard::config::validate(&self.cache, &self.limits, &ids).map_err(err)?;
        self.changes.validate().map_err(err)?;
        self.disclosures(&specs).map_err(err)?;
        self.audit.validate().map_err(err)?;
        crate::security::config::validate(self.tls.as_ref(), &self.quotas, &self.clients)
            .map_err(err)?;
        self.telemetry.validate().map_err(err)?;
        Ok(())
    }

    /// What each configured purpose may see, by purpose number, checked
    /// against the configured sources `specs`.
    ///
    /// # Errors
    /// A message naming the `purposes` key and what is allowed.
    pub fn disclosures(
        &self,
        specs: &[SourceSpec],
    ) -> Result<std::collections::BTreeMap<i32, Disclosure>, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, p) in &self.purposes {
            let purpose = hedui_proto::v1::Purpose::from_str_name(&format!(
                "PURPOSE_{}",
                name.to_ascii_uppercase()
            ))
            .filter(|p| *p != hedui_proto::v1::Purpose::Unspecified)
            .filter(|_| name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .ok_or_else(|| {
                format!(
                    "purposes.{name}: not a purpose; allowed: {}",
                    purpose_names()
                )
            })?;
            out.insert(purpose as i32, p.disclosure(name, specs)?);
        }
        Ok(out)
    }

    /// The `[audit]` section with its defaults resolved: the SQLite file,
    /// when not set, sits beside the report store (`reports.db` gives
    /// `reports-audit.db`; `:memory:` stays in memory).
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        let mut audit = self.audit.clone();
        if audit.path.is_none() {
            let store = &self.store.path;
            audit.path = Some(if store.as_os_str() == ":memory:" {
                store.clone()
            } else {
                let stem = store
                    .file_stem()
                    .map_or_else(|| "hedui".into(), |s| s.to_string_lossy().into_owned());
                store.with_file_name(format!("{stem}-audit.db"))
            });
        }
        audit
    }

    /// The sources to ask, in order, resolved against `catalog`: the
    /// configured ones, or every catalog source over the `simulated`
    /// transport when none is configured.
    ///
    /// # Errors
    /// A message naming the `sources` entry and what is wrong.
    pub fn resolve_sources(&self, catalog: &Catalog) -> Result<Vec<ResolvedSource>, String> {
        if self.sources.is_empty() {
            return Ok(catalog
                .iter()
                .map(|spec| ResolvedSource {
                    spec: spec.clone(),
                    transport: TransportConfig {
                        kind: "simulated".into(),
                        params: self.simulation.clone(),
                    },
                })
                .collect());
        }
        let mut out: Vec<ResolvedSource> = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}] (id {:?})", s.id);
            if out.iter().any(|o| o.spec.id == s.id) {
                return Err(format!("{at}: id appears twice"));
            }
            let spec = match (catalog.get(&s.id), &s.fact_kinds) {
                (_, Some(kinds)) => {
                    let raw = RawSourceSpec {
                        id: s.id.clone(),
                        name: s
                            .name
                            .clone()
                            .or_else(|| catalog.get(&s.id).map(|c| c.name.clone()))
                            .ok_or_else(|| {
                                format!("{at}: name is required for a source not in the catalog")
                            })?,
                        fact_kinds: kinds.clone(),
                    };
                    SourceSpec::from_raw(&raw).map_err(|e| format!("{at}: {e}"))?
                }
                (Some(c), None) => {
                    let mut spec = c.clone();
                    if let Some(name) = &s.name {
                        spec.name = name.clone();
                    }
                    spec
                }
                (None, None) => {
                    return Err(format!(
                        "{at}: not in the catalog; give name and fact_kinds"
                    ));
                }
            };
            let mut transport = s.transport.clone();
            if transport.kind == "simulated" {
                for (k, v) in &self.simulation {
                    transport
                        .params
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
            }
            out.push(ResolvedSource { spec, transport });
        }
        if !out.iter().any(|o| o.spec.id == HOUSEHOLD_SOURCE) {
            return Err(format!(
                "sources: the household-registration source {HOUSEHOLD_SOURCE:?} is required"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults_and_28_simulated_sources() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.server.listen.port(), 50051);
        let sources = c.resolve_sources(&Catalog::dachuan()).unwrap();
        assert_eq!(sources.len(), 28);
        assert!(sources.iter().all(|s| s.transport.kind == "simulated"));
    }

    #[test]
    fn the_audit_log_sits_beside_the_report_store_unless_set() {
        let c = Config::parse("[store]\npath = '/var/lib/hedui/reports.db'\n", "a.toml").unwrap();
        let a = c.audit_config();
        assert_eq!(
            a.path.as_deref(),
            Some(Path::new("/var/lib/hedui/reports-audit.db"))
        );
        let c = Config::parse("[audit]\npath = 'x.db'\n", "a.toml").unwrap();
        assert_eq!(c.audit_config().path.as_deref(), Some(Path::new("x.db")));
        let e = Config::parse("[audit]\nretention_days = 30\n", "r.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("r.toml: audit.retention_days: 30 days"),
            "{e}"
        );
    }

    #[test]
    fn consent_is_not_required_unless_configured() {
        assert!(!Config::parse("", "x.toml").unwrap().consent.required);
        let c = Config::parse("[consent]\nrequired = true\n", "x.toml").unwrap();
        assert!(c.consent.required);
        let e = Config::parse("[consent]\nrequire = true\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("require"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let e =
            Config::parse("[server]\nlisten = '127.0.0.1:1'\nport = 3\n", "b.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("b.toml: "), "{msg}");
        assert!(msg.contains("port"), "{msg}");
    }

    #[test]
    fn a_new_bank_is_configuration() {
        let text = r#"
            [[sources]]
            id = "public-security"
            transport = { type = "grpc", endpoint = "http://127.0.0.1:1" }
            [[sources]]
            id = "county-bank"
            name = "Dazhou County Bank"
            fact_kinds = ["FINANCIAL_ACCOUNT", "ACCOUNT_OUTFLOW"]
            transport = { type = "grpc", endpoint = "http://127.0.0.1:2" }
        "#;
        let c = Config::parse(text, "c.toml").unwrap();
        let s = c.resolve_sources(&Catalog::dachuan()).unwrap();
        assert_eq!(s[1].spec.name, "Dazhou County Bank");
    }

    #[test]
    fn sources_without_household_registration_are_refused() {
        let text = "[[sources]]\nid = 'employment'\ntransport = { type = 'grpc', endpoint = 'http://127.0.0.1:1' }\n";
        let e = Config::parse(text, "d.toml").unwrap_err();
        assert!(e.to_string().contains("public-security"), "{e}");
        let text = "[[sources]]\nid = 'nobody'\ntransport = { type = 'grpc', endpoint = 'x' }\n";
        let e = Config::parse(text, "d.toml").unwrap_err();
        assert!(e.to_string().contains("sources[0] (id \"nobody\")"), "{e}");
    }

    #[test]
    fn environment_variables_override_the_file_and_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(&path, "[verification]\ndefault_deadline_ms = 5000\n").unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let c = Config::layered(
            Some(&path),
            &env(&[
                ("HEDUI__VERIFICATION__MAX_DEADLINE_MS", "60000"),
                ("HEDUI__SERVER__LISTEN", "0.0.0.0:50051"),
                ("HEDUI__LIMITS__DEFAULT__RATE_PER_S", "12"),
                ("HEDUI__TLS__MIN_VERSION", "\"1.2\""),
                ("HEDUI__TLS__CERT", "/run/b.pem"),
                ("HEDUI__TLS__KEY", "/run/k.pem"),
                ("HEDUI__TLS__CLIENT_CA", "[\"/run/ca.pem\"]"),
                ("HEDUI__CLIENTS__PLATFORM__ROLE", "platform"),
            ]),
        )
        .unwrap();
        assert_eq!(c.verification.default_deadline_ms, 5000, "the file's");
        assert_eq!(c.verification.max_deadline_ms, 60000);
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(c.tls.unwrap().min_version, "1.2");
        // An unknown key is refused, naming the variable.
        let e = Config::layered(Some(&path), &env(&[("HEDUI__SERVER__PORT", "1")])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("HEDUI__SERVER__PORT") && msg.contains("port"),
            "{msg}"
        );
        // A value of the wrong type too.
        let e = Config::layered(
            None,
            &env(&[("HEDUI__VERIFICATION__MAX_DEADLINE_MS", "soon")]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("HEDUI__VERIFICATION__MAX_DEADLINE_MS"),
            "{e}"
        );
        let e = Config::layered(None, &env(&[("HEDUI__", "x")])).unwrap_err();
        assert!(e.to_string().contains("empty key"), "{e}");
        // Validation runs on the layered result.
        let e = Config::layered(
            Some(&path),
            &env(&[("HEDUI__VERIFICATION__MAX_DEADLINE_MS", "10")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_deadline_ms"), "{e}");
    }

    /// Every `*.toml` under `dir`, recursively.
    fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                toml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_configuration_shipped_under_deploy_and_docs_loads() {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        toml_files(&top.join("deploy"), &mut files);
        toml_files(&top.join("docs"), &mut files);
        for file in &files {
            // The Kubernetes and compose configurations get the audit
            // database's URL from a Secret, through the environment
            // (deploy/k8s/deployment.yaml, deploy/compose.yaml).
            let env: Vec<(String, String)> = if file.starts_with(top.join("deploy/k8s"))
                || file.starts_with(top.join("deploy/compose"))
            {
                vec![(
                    "HEDUI__AUDIT__URL".into(),
                    "postgres://hedui@postgres:5432/hedui".into(),
                )]
            } else {
                Vec::new()
            };
            if let Err(e) = Config::layered(Some(file), &env) {
                panic!("{e}");
            }
        }
        eprintln!("{} configuration files load", files.len());
    }
}
