//! The `[audit]` section of the configuration.
//!
//! ```toml
//! [audit]
//! backend = "sqlite"              # or "postgres"
//! # path = "hedui-audit.db"       # sqlite: the file, or ":memory:";
//!                                 # default: beside the report store
//! # url = "postgres://hedui@db/hedui"   # postgres: the server
//! # schema = "hedui_audit"        # postgres: the schema (created if missing)
//! suite = "sha256-ed25519"        # or "sm3-sm2"
//! hmac_key_file = "/run/secrets/hedui-audit-hmac"     # >= 32 bytes
//! signing_key_file = "/run/secrets/hedui-audit-sign"  # 64 hex digits
//! checkpoint_every_records = 1000
//! checkpoint_every_ms = 10000
//! retention_days = 1096           # 3 years; below 183 (6 months) refused
//! sqlite_cache_mib = 16           # sqlite: page cache per connection (4 of them)
//! ```
//!
//! Without the key settings the embedded demo keys are used and the broker
//! says so in its log at start: they are public, so not for production.

use std::path::PathBuf;

use serde::Deserialize;

use super::crypto::Suite;

/// The shortest retention the law allows: 6 months (Cybersecurity Law art.
/// 21), in days.
pub const MIN_RETENTION_DAYS: u32 = 183;
/// The default retention: 3 years (PIPL art. 55-56 processing records), in
/// days.
pub const DEFAULT_RETENTION_DAYS: u32 = 1096;

/// Where the audit log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A SQLite file (WAL): the embedded default.
    #[default]
    Sqlite,
    /// A PostgreSQL schema: production, shared by replicas.
    Postgres,
}

/// The `[audit]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub backend: BackendKind,
    /// SQLite: the file (created when missing), or `:memory:`. Default:
    /// beside the report store, `<store file stem>-audit.db`
    /// (`crate::config::Config::audit_config`), else `hedui-audit.db`.
    pub path: Option<PathBuf>,
    /// PostgreSQL: the connection URL (required for `postgres`).
    pub url: Option<String>,
    /// PostgreSQL: the schema holding the audit tables, created if missing.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// PostgreSQL: connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// SQLite: the page cache of each of the log's 4 connections, MiB
    /// (the log's memory is bounded by 4 times this).
    #[serde(default = "default_sqlite_cache_mib")]
    pub sqlite_cache_mib: u32,
    /// The algorithm suite: `sha256-ed25519` (default) or `sm3-sm2`.
    #[serde(default)]
    pub suite: Suite,
    /// A file holding the HMAC key for identity numbers (at least 32
    /// bytes). Wins over `hmac_key`.
    pub hmac_key_file: Option<PathBuf>,
    /// The HMAC key inline (prefer `hmac_key_file`). Neither: the embedded
    /// demo key, not for production.
    pub hmac_key: Option<Secret>,
    /// A file holding the checkpoint signing key (32 bytes as 64 hex
    /// digits). Wins over `signing_key`.
    pub signing_key_file: Option<PathBuf>,
    /// The signing key inline (prefer `signing_key_file`). Neither: the
    /// embedded demo key, not for production.
    pub signing_key: Option<Secret>,
    /// A signed checkpoint at least every this many records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// A signed checkpoint at least every this many milliseconds while
    /// records arrive.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_every_ms: u64,
    /// Most records written in one transaction (group commit).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long records are kept, in days; at least 183 (6 months).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Purge records past retention every this many hours (0: only when
    /// `hedui audit purge` is run).
    #[serde(default = "default_purge_hours")]
    pub purge_every_hours: u64,
    /// What a household sees of its own access history.
    #[serde(default)]
    pub subject_view: SubjectView,
}

/// A secret from the configuration: deserialized as a string, never shown
/// by `Debug` (configurations are printed and hashed whole).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The display policy of subject access: what a household's self-service
/// front shows of each access to its data. Time, purpose and the sources
/// asked are always shown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectView {
    /// Show the calling platform (client identity).
    #[serde(default = "yes")]
    pub client: bool,
    /// Show the operator (case worker) id.
    #[serde(default)]
    pub operator: bool,
    /// Show the consent reference.
    #[serde(default = "yes")]
    pub consent_reference: bool,
}

impl Default for SubjectView {
    fn default() -> Self {
        Self {
            client: true,
            operator: false,
            consent_reference: true,
        }
    }
}

fn yes() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            path: None,
            url: None,
            schema: default_schema(),
            max_connections: default_max_connections(),
            sqlite_cache_mib: default_sqlite_cache_mib(),
            suite: Suite::default(),
            hmac_key_file: None,
            hmac_key: None,
            signing_key_file: None,
            signing_key: None,
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_every_ms: default_checkpoint_ms(),
            batch_max: default_batch_max(),
            retention_days: default_retention_days(),
            purge_every_hours: default_purge_hours(),
            subject_view: SubjectView::default(),
        }
    }
}

fn default_schema() -> String {
    "public".into()
}
fn default_max_connections() -> u32 {
    8
}
fn default_sqlite_cache_mib() -> u32 {
    16
}
fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_ms() -> u64 {
    10_000
}
fn default_batch_max() -> usize {
    512
}
fn default_purge_hours() -> u64 {
    24
}
fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}

impl AuditConfig {
    /// The SQLite file: `path`, or `hedui-audit.db`.
    pub fn sqlite_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("hedui-audit.db"))
    }

    /// Checks the section; the message names the key.
    ///
    /// # Errors
    /// A message naming the `audit.` key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_days < MIN_RETENTION_DAYS {
            return Err(format!(
                "audit.retention_days: {} days is below the legal minimum of {MIN_RETENTION_DAYS} days (6 months, Cybersecurity Law art. 21); the default is {DEFAULT_RETENTION_DAYS} (3 years)",
                self.retention_days
            ));
        }
        if self.backend == BackendKind::Postgres && self.url.is_none() {
            return Err("audit.url: required when audit.backend is \"postgres\"".into());
        }
        if !super::postgres::valid_schema_name(&self.schema) {
            return Err(format!(
                "audit.schema: {:?} must be letters, digits and underscores",
                self.schema
            ));
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_ms == 0 {
            return Err(
                "audit.checkpoint_every_records, audit.checkpoint_every_ms: must be > 0".into(),
            );
        }
        if !(1..=1024).contains(&self.sqlite_cache_mib) {
            return Err(format!(
                "audit.sqlite_cache_mib: {} must be between 1 and 1024 (MiB per connection)",
                self.sqlite_cache_mib
            ));
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err("audit.batch_max: must be between 1 and 10000".into());
        }
        if let Some(k) = &self.hmac_key
            && k.expose().len() < 32
        {
            return Err("audit.hmac_key: must be at least 32 bytes".into());
        }
        Ok(())
    }

    /// Reads and checks the keys (`audit.hmac_key_file` or `hmac_key`,
    /// `audit.signing_key_file` or `signing_key`) as opening the log will:
    /// the broker checks them before it creates any database, so a wrong key
    /// leaves nothing behind. Not part of [`AuditConfig::validate`]: offline
    /// commands given a public key need no secret.
    ///
    /// # Errors
    /// A message naming the key and what is wrong with it.
    pub fn check_keys(&self) -> Result<(), String> {
        super::keys(self).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Where the log is, for messages (never the URL's password).
    pub fn location(&self) -> String {
        match self.backend {
            BackendKind::Sqlite => format!("sqlite {}", self.sqlite_path().display()),
            BackendKind::Postgres => {
                let url = self.url.as_deref().unwrap_or_default();
                let host = url.rsplit('@').next().unwrap_or(url);
                format!("postgres {host} schema {}", self.schema)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_below_six_months_is_refused() {
        let mut c = AuditConfig::default();
        assert_eq!(c.retention_days, 1096);
        assert!(c.validate().is_ok());
        c.retention_days = 90;
        let e = c.validate().unwrap_err();
        assert!(e.starts_with("audit.retention_days: 90 days"), "{e}");
        c.retention_days = 183;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn postgres_needs_a_url_and_a_plain_schema() {
        let c: AuditConfig = toml::from_str("backend = 'postgres'").unwrap();
        assert!(c.validate().unwrap_err().starts_with("audit.url"));
        let c: AuditConfig = toml::from_str(
            "backend = 'postgres'\nurl = 'postgres://x:secret@h/db'\nschema = 'a;b'",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().starts_with("audit.schema"));
        let c: AuditConfig =
            toml::from_str("backend = 'postgres'\nurl = 'postgres://x:secret@h/db'").unwrap();
        assert!(!c.location().contains("secret"));
        assert!(toml::from_str::<AuditConfig>("suite = 'md5-rsa'").is_err());
        assert!(toml::from_str::<AuditConfig>("paht = 'x'").is_err());
        let c: AuditConfig =
            toml::from_str("hmac_key = 'a very secret key of 32 bytes....'").unwrap();
        assert!(!format!("{c:?}").contains("very secret"));
    }

    #[test]
    fn keys_are_checked_without_opening_the_log() {
        assert!(AuditConfig::default().check_keys().is_ok());
        let c: AuditConfig = toml::from_str("hmac_key_file = '/no/such/hmac.key'").unwrap();
        let e = c.check_keys().unwrap_err();
        assert!(e.starts_with("audit.hmac_key_file: "), "{e}");
        let c: AuditConfig = toml::from_str("signing_key = 'not hex'").unwrap();
        let e = c.check_keys().unwrap_err();
        assert!(e.starts_with("audit.signing_key: "), "{e}");
        let c: AuditConfig = toml::from_str("signing_key_file = '/no/such/sign.key'").unwrap();
        assert!(
            c.check_keys()
                .unwrap_err()
                .starts_with("audit.signing_key_file")
        );
    }
}
