//! The versioned gRPC contract of hedui, package `hedui.v1`.
//!
//! # Layout
//! - `hedui/v1/facts.proto`: the fact model: one typed message per kind of
//!   fact a source reports, money in integer fen, areas in hundredths of a
//!   square metre, dates as civil dates.
//! - `hedui/v1/adapter.proto`: `AdapterService`, the protocol a source
//!   implements in any language.
//! - `hedui/v1/verification.proto`: `VerificationService` and the report.
//! - `hedui/v1/watch.proto`: `WatchService`, households under management
//!   and their alerts.
//! - `hedui/v1/consent.proto`: `ConsentService`, the authorization letters
//!   (授权书) verifications name.
//! - `hedui/v1/health.proto`: `SourceHealthService`, how each source has
//!   answered lately (up, degraded, breaker open, rate limited).
//! - `hedui/v1/audit.proto`: `AuditService`, the access log for auditors
//!   and for households.
//!
//! The generated code lives in [`v1`]; this crate adds only small helpers
//! that every other crate needs ([`v1::fact::Value::kind`], civil-date
//! conversions, yuan formatting).

#![allow(missing_docs)]

/// Generated messages, clients and servers of `hedui.v1`.
#[allow(clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("hedui.v1");

    pub use crate::verify_response::VerifyResponse;
}

/// The encoded `FileDescriptorSet` of every hedui proto file, for gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hedui_descriptor.bin"));

pub mod codec;
pub mod resident_id;
mod verify_response;

use v1::{CivilDate, FactKind, fact::Value};

// === impl Value ===

impl Value {
    /// The kind of this fact (the case of the `value` oneof).
    pub fn kind(&self) -> FactKind {
        match self {
            Value::HouseholdRegistration(_) => FactKind::HouseholdRegistration,
            Value::Vehicle(_) => FactKind::Vehicle,
            Value::OperatingLicence(_) => FactKind::OperatingLicence,
            Value::FinancialAccount(_) => FactKind::FinancialAccount,
            Value::AccountOutflow(_) => FactKind::AccountOutflow,
            Value::Dwelling(_) => FactKind::Dwelling,
            Value::ProvidentFund(_) => FactKind::ProvidentFund,
            Value::Employment(_) => FactKind::Employment,
            Value::SocialInsurance(_) => FactKind::SocialInsurance,
            Value::MedicalInsurance(_) => FactKind::MedicalInsurance,
            Value::TaxRegistration(_) => FactKind::TaxRegistration,
            Value::IncomeTax(_) => FactKind::IncomeTax,
            Value::MarketEntity(_) => FactKind::MarketEntity,
            Value::IndividualBusiness(_) => FactKind::IndividualBusiness,
            Value::PublicPayroll(_) => FactKind::PublicPayroll,
            Value::ForestRight(_) => FactKind::ForestRight,
            Value::LandContract(_) => FactKind::LandContract,
            Value::SchoolEnrolment(_) => FactKind::SchoolEnrolment,
            Value::SocialAssistance(_) => FactKind::SocialAssistance,
            Value::Marriage(_) => FactKind::Marriage,
            Value::RelatedParty(_) => FactKind::RelatedParty,
            Value::Disability(_) => FactKind::Disability,
            Value::AssistanceReceived(_) => FactKind::AssistanceReceived,
        }
    }
}

// === impl CivilDate ===

impl CivilDate {
    /// Builds a civil date from its parts (not checked).
    pub fn ymd(year: i32, month: i32, day: i32) -> Self {
        Self { year, month, day }
    }
}

impl std::fmt::Display for CivilDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Formats an amount of fen as yuan with two decimals, e.g. `52000` as
/// `"520.00"`.
pub fn yuan(fen: i64) -> String {
    // Not through `format!`: a report writes dozens of amounts.
    let abs = fen.unsigned_abs();
    let cents = (abs % 100) as u8;
    let mut out = String::with_capacity(24);
    if fen < 0 {
        out.push('-');
    }
    out.push_str(itoa::Buffer::new().format(abs / 100));
    out.push('.');
    out.push(char::from(b'0' + cents / 10));
    out.push(char::from(b'0' + cents % 10));
    out
}

/// Formats hundredths of a square metre as square metres with two decimals.
pub fn square_metres(centi_m2: i64) -> String {
    yuan(centi_m2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_formats_fen() {
        assert_eq!(yuan(52000), "520.00");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(yuan(-123), "-1.23");
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(-5), "-0.05");
        assert_eq!(yuan(100), "1.00");
        assert_eq!(yuan(i64::MAX), "92233720368547758.07");
        assert_eq!(yuan(i64::MIN), "-92233720368547758.08");
        for fen in [-100_001, -99, 7, 1_234_567, 999_999_999_999] {
            let abs = i64::unsigned_abs(fen);
            let sign = if fen < 0 { "-" } else { "" };
            assert_eq!(yuan(fen), format!("{sign}{}.{:02}", abs / 100, abs % 100));
        }
    }

    #[test]
    fn descriptor_set_holds_every_service() {
        let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let services: Vec<_> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name().to_owned()))
            .collect();
        assert!(services.contains(&"VerificationService".to_owned()));
        assert!(services.contains(&"AdapterService".to_owned()));
        assert!(services.contains(&"ConsentService".to_owned()));
        assert!(services.contains(&"SourceHealthService".to_owned()));
    }
}
