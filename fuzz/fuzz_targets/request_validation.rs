//! Request validation on arbitrary `VerificationRequest`s (decoded from
//! the fuzzer's bytes as protobuf): it never panics, and a refusal names
//! the field it is about.
#![no_main]

use std::time::Duration;

use hedui::verify::{Deadlines, VerifyError, validate_request};
use hedui_proto::v1::VerificationRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const FIELDS: &[&str] = &[
    "request",
    "applicant_id",
    "consent_reference",
    "purpose",
    "operator_id",
    "deadline",
    "max_age",
    "declared_member_ids",
];

fuzz_target!(|data: &[u8]| {
    let Ok(request) = VerificationRequest::decode(data) else {
        return;
    };
    let deadlines = Deadlines {
        default: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };
    let call =
        (data.first() == Some(&0)).then(|| Duration::from_millis(u64::from(data.len() as u32)));
    match validate_request(Some(request), call, deadlines, (2026, 11, 24)) {
        Ok(valid) => {
            assert!(valid.timeout() <= deadlines.max, "{:?}", valid.timeout());
            assert!(!valid.timeout().is_zero() || call == Some(Duration::ZERO));
        }
        Err(e @ VerifyError::InvalidArgument { .. }) => {
            let text = e.to_string();
            let field = text.split(':').next().unwrap_or_default();
            assert!(
                FIELDS.contains(&field),
                "the refusal names no field: {text}"
            );
        }
        Err(e) => panic!("validation failed otherwise: {e}"),
    }
});
