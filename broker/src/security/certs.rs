//! Development certificates (`hedui certs dev`): a CA, a broker
//! certificate for `localhost` and `127.0.0.1`, one client certificate per
//! role, an empty CRL and a configuration that uses them, so that the
//! broker runs with mTLS on from the first command. Tests mint their own
//! (expired, revoked, foreign) certificates with [`DevCa`].
//!
//! Never use these for real data: the CA key sits beside the
//! certificates.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use chrono::{Datelike, NaiveDate, TimeDelta};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};

/// The client identities `hedui certs dev` mints: file stem, role, SAN URI.
pub const DEV_CLIENTS: [(&str, &str, &str); 4] = [
    ("platform", "platform", "spiffe://hedui.dev/platform/demo"),
    (
        "platform-b",
        "platform",
        "spiffe://hedui.dev/platform/other",
    ),
    ("auditor", "auditor", "spiffe://hedui.dev/auditor/demo"),
    ("admin", "admin", "spiffe://hedui.dev/admin/demo"),
];

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Its serial number, for a CRL.
    pub serial: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (the broker).
    Server,
    /// A TLS client.
    Client,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    next_serial: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

macro_rules! at {
    ($d:expr) => {{
        let d: NaiveDate = $d;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    }};
}

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

impl DevCa {
    /// A new CA named `name`, valid from yesterday for ten years.
    ///
    /// # Errors
    /// When a key cannot be generated.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "hedui development");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at!(today() - TimeDelta::days(1));
        params.not_after = at!(today() + TimeDelta::days(3650));
        params.serial_number = Some(SerialNumber::from(1u64));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            next_serial: std::sync::atomic::AtomicU64::new(2),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `names` (each an IP address, a URI with
    /// `://`, or a DNS name), valid from `not_before` to `not_after`.
    ///
    /// # Errors
    /// When a name is not valid in a certificate or signing fails.
    pub fn issue_between(
        &self,
        names: &[&str],
        usage: Usage,
        not_before: NaiveDate,
        not_after: NaiveDate,
    ) -> Result<Issued, rcgen::Error> {
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("hedui"),
        );
        for name in names {
            params
                .subject_alt_names
                .push(if let Ok(ip) = name.parse::<IpAddr>() {
                    SanType::IpAddress(ip)
                } else if name.contains("://") {
                    SanType::URI((*name).try_into()?)
                } else {
                    SanType::DnsName((*name).try_into()?)
                });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at!(not_before);
        params.not_after = at!(not_after);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Issues a certificate for `names` valid from yesterday for a year.
    ///
    /// # Errors
    /// As [`DevCa::issue_between`].
    pub fn issue(&self, names: &[&str], usage: Usage) -> Result<Issued, rcgen::Error> {
        self.issue_between(
            names,
            usage,
            today() - TimeDelta::days(1),
            today() + TimeDelta::days(365),
        )
    }

    /// A CRL, PEM, revoking the certificates with these serial numbers,
    /// valid for thirty days.
    ///
    /// # Errors
    /// When signing fails.
    pub fn crl(&self, revoked: &[u64]) -> Result<String, rcgen::Error> {
        let params = CertificateRevocationListParams {
            this_update: at!(today() - TimeDelta::days(1)),
            next_update: at!(today() + TimeDelta::days(30)),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: at!(today() - TimeDelta::days(1)),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

/// What `hedui certs dev` wrote.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The directory.
    pub dir: PathBuf,
    /// The configuration that uses them (`hedui.toml` there).
    pub config: PathBuf,
}

/// The `[tls]` and `[clients]` sections for certificates in `dir`, as
/// `hedui certs dev` writes them.
pub fn dev_config(dir: &Path) -> String {
    let p = |f: &str| toml::Value::String(dir.join(f).display().to_string()).to_string();
    let mut out = format!(
        "# Written by `hedui certs dev`: development certificates only.\n\
         [tls]\ncert = {}\nkey = {}\nclient_ca = [{}]\ncrl = [{}]\n\n\
         [quotas]\nrate_per_s = 200\nmax_concurrent = 64\n",
        p("broker.pem"),
        p("broker-key.pem"),
        p("ca.pem"),
        p("crl.pem"),
    );
    for (_, role, identity) in DEV_CLIENTS {
        out.push_str(&format!("\n[clients.\"{identity}\"]\nrole = \"{role}\"\n"));
    }
    out
}

/// Mints the development CA and certificates into `dir` (created if
/// needed): `ca.pem`, `ca-key.pem`, `broker.pem`, `broker-key.pem`, a
/// certificate and key per client of [`DEV_CLIENTS`], `crl.pem` and
/// `hedui.toml`. Refuses to overwrite existing files unless `force`.
///
/// # Errors
/// What could not be written, naming the file.
pub fn dev(dir: &Path, force: bool) -> Result<DevFiles, String> {
    let config = dir.join("hedui.toml");
    if !force && config.exists() {
        return Err(format!(
            "{} exists already; pass --force to mint new certificates",
            config.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let e = |e: rcgen::Error| format!("minting: {e}");
    let ca = DevCa::new("hedui development CA").map_err(e)?;
    let broker = ca
        .issue(
            &[
                "localhost",
                &IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
                &IpAddr::V6(Ipv6Addr::LOCALHOST).to_string(),
            ],
            Usage::Server,
        )
        .map_err(e)?;
    let mut files = vec![
        ("ca.pem".to_owned(), ca.cert_pem().to_owned()),
        ("ca-key.pem".to_owned(), ca.key_pem().to_owned()),
        ("broker.pem".to_owned(), broker.cert_pem),
        ("broker-key.pem".to_owned(), broker.key_pem),
        ("crl.pem".to_owned(), ca.crl(&[]).map_err(e)?),
    ];
    for (stem, _, identity) in DEV_CLIENTS {
        let c = ca.issue(&[identity], Usage::Client).map_err(e)?;
        files.push((format!("{stem}.pem"), c.cert_pem));
        files.push((format!("{stem}-key.pem"), c.key_pem));
    }
    files.push(("hedui.toml".to_owned(), dev_config(dir)));
    for (name, text) in files {
        write_private(&dir.join(&name), &text)?;
    }
    Ok(DevFiles {
        dir: dir.to_owned(),
        config,
    })
}

/// Writes `text` to `path`, readable by its owner only (keys among them).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn dev_certificates_make_a_configuration_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev(dir.path(), false).unwrap();
        let config = crate::config::Config::load(&files.config).unwrap();
        let tls = config.tls.as_ref().unwrap();
        crate::security::tls::server_config(tls).unwrap();
        assert_eq!(config.clients.len(), DEV_CLIENTS.len());
        // Not overwritten by accident.
        assert!(dev(dir.path(), false).unwrap_err().contains("--force"));
        assert!(dev(dir.path(), true).is_ok());
    }

    #[test]
    fn an_issued_certificate_carries_its_identity() {
        let ca = DevCa::new("t").unwrap();
        let c = ca
            .issue(&["spiffe://x/platform/a", "a.example"], Usage::Client)
            .unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::security::tls::identity_of(&der).as_deref(),
            Some("spiffe://x/platform/a")
        );
        let c = ca.issue(&["b.example"], Usage::Client).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::security::tls::identity_of(&der).as_deref(),
            Some("b.example")
        );
    }
}
