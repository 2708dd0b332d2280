//! `hedui.v1.VerifyResponse`, written by hand so that a report the broker
//! has encoded already is not encoded again.
//!
//! The broker encodes each report once, for its audit record's digest and
//! for the report store; the generated message would encode it a second
//! time into the response (a 28-source report is about 7 KB, and prost
//! works out every nested message's length again on the way). This type is
//! the generated one with a cache: [`VerifyResponse::encoded`] takes the
//! report with its encoding, and encoding the response copies those bytes.
//! On the wire it is exactly the message of `verification.proto` (field 1,
//! the report); decoding fills [`VerifyResponse::report`] as before, and
//! `proto/build.rs` maps the proto type onto this one (`extern_path`).

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{
        DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, message,
        skip_field,
    },
};

use crate::v1::Report;

/// The report's field number in `VerifyResponse`.
const REPORT_TAG: u32 = 1;

/// Response of `Verify`.
#[derive(Clone, Default)]
pub struct VerifyResponse {
    /// The consolidated report. Public, as in the generated message, for
    /// readers of a decoded response; a response made by
    /// [`VerifyResponse::encoded`] sends the encoding it was given, so its
    /// report is not to be changed afterwards.
    pub report: Option<Report>,
    /// `report`'s encoding, when the caller had it; `None` once `report`
    /// may have changed (decoding, [`Message::clear`]).
    encoded: Option<Bytes>,
}

impl VerifyResponse {
    /// The response carrying `report`; it is encoded when sent.
    pub fn new(report: Report) -> Self {
        Self {
            report: Some(report),
            encoded: None,
        }
    }

    /// The response carrying `report`, whose protobuf encoding is
    /// `encoded` (`report.encode_to_vec()`): sending it copies `encoded`
    /// instead of encoding the report again. Debug builds check that the
    /// two agree.
    pub fn encoded(report: Report, encoded: Bytes) -> Self {
        debug_assert_eq!(
            report.encode_to_vec(),
            encoded.as_ref(),
            "encoded is the report's encoding"
        );
        Self {
            report: Some(report),
            encoded: Some(encoded),
        }
    }
}

impl Message for VerifyResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.report) {
            (Some(bytes), Some(_)) => {
                encode_key(REPORT_TAG, WireType::LengthDelimited, buf);
                encode_varint(bytes.len() as u64, buf);
                buf.put_slice(bytes);
            }
            (_, Some(report)) => message::encode(REPORT_TAG, report, buf),
            (_, None) => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == REPORT_TAG {
            self.encoded = None;
            let report = self.report.get_or_insert_with(Report::default);
            message::merge(wire_type, report, buf, ctx).map_err(|mut e| {
                e.push("VerifyResponse", "report");
                e
            })
        } else {
            skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match (&self.encoded, &self.report) {
            (Some(bytes), Some(_)) => {
                key_len(REPORT_TAG) + encoded_len_varint(bytes.len() as u64) + bytes.len()
            }
            (_, Some(report)) => message::encoded_len(REPORT_TAG, report),
            (_, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.report = None;
        self.encoded = None;
    }
}

/// Equal when the reports are: the encoding is a cache.
impl PartialEq for VerifyResponse {
    fn eq(&self, other: &Self) -> bool {
        self.report == other.report
    }
}

impl std::fmt::Debug for VerifyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyResponse")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::SourceResult;

    /// The generated message `VerifyResponse` stood for, to compare with.
    #[derive(Clone, PartialEq, Message)]
    struct Generated {
        #[prost(message, optional, tag = "1")]
        report: Option<Report>,
    }

    fn report() -> Report {
        Report {
            report_id: "r-1".into(),
            sources: vec![
                SourceResult {
                    source_id: "public-security".into(),
                    ..Default::default()
                };
                3
            ],
            active_member_count: 2,
            verdict_reason: "收入超过标准".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pre_encoded_report_goes_out_as_the_generated_message_would_send_it() {
        let r = report();
        let generated = Generated {
            report: Some(r.clone()),
        }
        .encode_to_vec();
        let cached = VerifyResponse::encoded(r.clone(), Bytes::from(r.encode_to_vec()));
        assert_eq!(cached.encode_to_vec(), generated);
        assert_eq!(cached.encoded_len(), generated.len());
        let fresh = VerifyResponse::new(r);
        assert_eq!(fresh.encode_to_vec(), generated);
        assert_eq!(fresh.encoded_len(), generated.len());
        assert_eq!(VerifyResponse::default().encode_to_vec(), Vec::<u8>::new());
    }

    #[test]
    fn decoding_reads_the_report_and_skips_fields_it_does_not_know() {
        let r = report();
        let mut wire = Generated {
            report: Some(r.clone()),
        }
        .encode_to_vec();
        // Field 9, a varint, from a later version of the contract.
        wire.extend_from_slice(&[9 << 3, 42]);
        let decoded = VerifyResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.report, Some(r.clone()));
        assert_eq!(decoded, VerifyResponse::new(r));
        assert_eq!(decoded.encoded, None);
    }

    #[test]
    fn a_broken_report_is_an_error_that_names_it() {
        // Field 1, length 5, but only two bytes follow.
        let e = VerifyResponse::decode(&[10u8, 5, 1, 2][..]).unwrap_err();
        assert!(e.to_string().contains("VerifyResponse.report"), "{e}");
    }
}
