//! The security sections of the configuration:
//!
//! ```toml
//! [tls]                                   # the broker's listener: mTLS only
//! cert = "/etc/hedui/broker.pem"          # certificate chain, PEM
//! key = "/etc/hedui/broker-key.pem"       # private key, PEM (a file, never inline)
//! client_ca = ["/etc/hedui/clients-ca.pem"]   # CAs client certificates must chain to
//! crl = ["/etc/hedui/clients-ca.crl.pem"]     # revoked client certificates
//! min_version = "1.3"                     # "1.2" only if a client needs it
//! handshake_timeout_ms = 10000
//!
//! [quotas]                                # every client without its own
//! rate_per_s = 50                         # calls per second (absent: none)
//! burst = 100                             # calls at once above the rate (0: a second's worth)
//! max_concurrent = 16                     # verifications in flight (0: none)
//!
//! [clients."spiffe://dachuan.gov.cn/platform/township"]   # SAN URI or DNS name
//! role = "platform"                       # platform, auditor or admin
//! purposes = ["dibao_application", "dibao_review"]         # platforms only; absent: any
//! rate_per_s = 20                         # overrides [quotas]
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::Role;

/// The broker's TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The broker's certificate chain (PEM).
    pub cert: PathBuf,
    /// The broker's private key (PEM file).
    pub key: PathBuf,
    /// CAs a client certificate must chain to (PEM); at least one.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// Certificate revocation lists (PEM) of those CAs.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// The oldest TLS version accepted: `"1.3"` (default) or `"1.2"`.
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// How long a client may take to finish its handshake, in
    /// milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_min_version() -> String {
    "1.3".into()
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

/// A client's quota; zero means no limit on that axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Calls per second; absent: no limit (0 written is refused).
    #[serde(default, deserialize_with = "positive_quota_rate")]
    pub rate_per_s: f64,
    /// Calls at once above the rate; 0 means a second's worth.
    #[serde(default)]
    pub burst: u32,
    /// Verifications (and reviews) in flight at once.
    #[serde(default)]
    pub max_concurrent: u32,
}

/// One client certificate identity and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// What the client is.
    pub role: Role,
    /// For a platform, the purposes it may verify for (names as in
    /// `[purposes]`, e.g. `dibao_application`); absent means any.
    pub purposes: Option<Vec<String>>,
    /// Calls per second, overriding `[quotas]`.
    #[serde(default, deserialize_with = "positive_quota_rate_override")]
    pub rate_per_s: Option<f64>,
    /// Burst, overriding `[quotas]`.
    pub burst: Option<u32>,
    /// Verifications in flight, overriding `[quotas]`.
    pub max_concurrent: Option<u32>,
}

impl ClientConfig {
    /// The client's quota: its own settings over `default`.
    pub fn quota(&self, default: &QuotaConfig) -> QuotaConfig {
        QuotaConfig {
            rate_per_s: self.rate_per_s.unwrap_or(default.rate_per_s),
            burst: self.burst.unwrap_or(default.burst),
            max_concurrent: self.max_concurrent.unwrap_or(default.max_concurrent),
        }
    }
}

/// The proto number of a purpose written as configuration names it
/// (`dibao_application`), or `None`.
pub fn purpose_number(name: &str) -> Option<i32> {
    hedui_proto::v1::Purpose::from_str_name(&format!("PURPOSE_{}", name.to_ascii_uppercase()))
        .filter(|p| *p != hedui_proto::v1::Purpose::Unspecified)
        .map(|p| p as i32)
}

fn check_quota(key: &str, q: &QuotaConfig) -> Result<(), String> {
    if !q.rate_per_s.is_finite() || q.rate_per_s < 0.0 {
        return Err(format!("{key}.rate_per_s: must be a number >= 0.001"));
    }
    if q.rate_per_s > 0.0 && q.rate_per_s < 0.001 {
        return Err(format!(
            "{key}.rate_per_s: must be at least 0.001 (leave it out for no limit)"
        ));
    }
    Ok(())
}

/// A client's written rate: 0 is refused (it would let no call through);
/// absent means no limit.
fn positive_quota_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let rate = <f64 as serde::Deserialize>::deserialize(d)?;
    if rate == 0.0 {
        return Err(serde::de::Error::custom(
            "a rate of 0 would let no call through; leave rate_per_s out for no limit",
        ));
    }
    Ok(rate)
}

fn positive_quota_rate_override<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<f64>, D::Error> {
    positive_quota_rate(d).map(Some)
}

/// Checks the security sections; the message names the key.
///
/// # Errors
/// What is wrong, naming the key and what is allowed.
pub fn validate(
    tls: Option<&TlsConfig>,
    quotas: &QuotaConfig,
    clients: &BTreeMap<String, ClientConfig>,
) -> Result<(), String> {
    if let Some(tls) = tls {
        if tls.client_ca.is_empty() {
            return Err(
                "tls.client_ca: at least one CA is required: clients are identified only by their certificates"
                    .into(),
            );
        }
        if !matches!(tls.min_version.as_str(), "1.2" | "1.3") {
            return Err(format!(
                "tls.min_version: {:?} is not allowed; \"1.3\" or \"1.2\"",
                tls.min_version
            ));
        }
        if tls.handshake_timeout_ms == 0 || tls.handshake_timeout_ms > 60_000 {
            return Err("tls.handshake_timeout_ms: must be 1..=60000".into());
        }
        if clients.is_empty() {
            return Err(
                "clients: no certificate identity is given a role, so every call would be refused; add [clients.\"<SAN URI or DNS name>\"] role = \"platform\""
                    .into(),
            );
        }
    }
    check_quota("quotas", quotas)?;
    for (id, c) in clients {
        let key = format!("clients.{id:?}");
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(format!(
                "{key}: an identity is a SAN URI or DNS name of 1 to 256 printable characters"
            ));
        }
        check_quota(&key, &c.quota(quotas))?;
        if let Some(purposes) = &c.purposes {
            if c.role != Role::Platform {
                return Err(format!(
                    "{key}.purposes: only a platform verifies; this client is an {}",
                    c.role
                ));
            }
            if purposes.is_empty() {
                return Err(format!(
                    "{key}.purposes: empty; leave it out to allow every purpose"
                ));
            }
            for (i, p) in purposes.iter().enumerate() {
                if purpose_number(p).is_none() {
                    return Err(format!(
                        "{key}.purposes[{i}]: {p:?} is not a purpose (e.g. dibao_application, dibao_review, medical_assistance)"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsConfig {
        TlsConfig {
            cert: "b.pem".into(),
            key: "k.pem".into(),
            client_ca: vec!["ca.pem".into()],
            crl: Vec::new(),
            min_version: "1.3".into(),
            handshake_timeout_ms: 1000,
        }
    }

    fn platform() -> ClientConfig {
        ClientConfig {
            role: Role::Platform,
            purposes: None,
            rate_per_s: None,
            burst: None,
            max_concurrent: None,
        }
    }

    #[test]
    fn each_wrong_key_is_named() {
        let q = QuotaConfig::default();
        let one = BTreeMap::from([("spiffe://x/p".to_owned(), platform())]);
        assert_eq!(validate(Some(&tls()), &q, &one), Ok(()));
        let mut t = tls();
        t.client_ca.clear();
        assert!(
            validate(Some(&t), &q, &one)
                .unwrap_err()
                .starts_with("tls.client_ca")
        );
        let mut t = tls();
        t.min_version = "1.1".into();
        assert!(
            validate(Some(&t), &q, &one)
                .unwrap_err()
                .starts_with("tls.min_version")
        );
        assert!(
            validate(Some(&tls()), &q, &BTreeMap::new())
                .unwrap_err()
                .starts_with("clients")
        );
        let bad_rate = QuotaConfig {
            rate_per_s: -1.0,
            ..q
        };
        assert!(
            validate(None, &bad_rate, &one)
                .unwrap_err()
                .starts_with("quotas.rate_per_s")
        );
        let mut c = platform();
        c.purposes = Some(vec!["dibao_review".into(), "holiday".into()]);
        let e = validate(None, &q, &BTreeMap::from([("p".to_owned(), c)])).unwrap_err();
        assert!(e.starts_with("clients.\"p\".purposes[1]"), "{e}");
        let mut c = platform();
        c.role = Role::Auditor;
        c.purposes = Some(vec!["dibao_review".into()]);
        let e = validate(None, &q, &BTreeMap::from([("a".to_owned(), c)])).unwrap_err();
        assert!(e.contains("only a platform"), "{e}");
    }
}
