//! Consent (issue 5 item 3), with a real broker process requiring
//! registered authorization letters (`[consent] required = true`): a letter
//! registered over gRPC lets its household be verified; a person it does
//! not cover, a purpose it does not cover, an expired letter (registered
//! with `hedui consent register`) and a revoked one are each refused with
//! `PERMISSION_DENIED`, recorded as refusals, and the simulated agencies
//! count zero lookups for all of them.

use chrono::{Days, NaiveDate};
use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{
    AuditFilter, AuditRecordKind, CivilDate, Consent, GetConsentRequest, Purpose,
    QueryRecordsRequest, RegisterConsentRequest, RevokeConsentRequest, StreamVerifyRequest,
    VerificationRequest, VerifyRequest, consent_service_client::ConsentServiceClient,
};
use hedui_tests::{BrokerProcess, SEED, china_today, total_lookups, workspace_bin};
use tonic::Code;

const HOUSEHOLDS: usize = 40;

fn civil(d: NaiveDate) -> CivilDate {
    CivilDate::ymd(
        chrono::Datelike::year(&d),
        i32::try_from(chrono::Datelike::month(&d)).unwrap(),
        i32::try_from(chrono::Datelike::day(&d)).unwrap(),
    )
}

fn request(applicant: &str, reference: &str, purpose: Purpose) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.into(),
        consent_reference: reference.into(),
        purpose: purpose as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncovered_person_purpose_and_expired_letter_are_refused_before_any_source() {
    let broker = BrokerProcess::start(
        &format!(
            "[consent]\nrequired = true\n\n[cache]\nenabled = false\n\n\
             [simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        &["--simulation-control", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    let control = broker.simulation_control.clone().unwrap();
    let today: NaiveDate = china_today().parse().unwrap();
    let truths: Vec<GroundTruth> = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today,
    })
    .truth(&TruthPolicy::default());
    let family = truths
        .iter()
        .find(|t| t.member_ids.len() > 1)
        .expect("a household of several members")
        .clone();
    let stranger = truths
        .iter()
        .find(|t| !family.member_ids.contains(&t.applicant_id))
        .unwrap()
        .applicant_id
        .clone();

    // A letter covering the household, for Dibao applications.
    let mut consents = ConsentServiceClient::connect(broker.url.clone())
        .await
        .unwrap();
    let letter = Consent {
        reference: "SQ-E2E-1".into(),
        person_ids: family.member_ids.clone(),
        purposes: vec![Purpose::DibaoApplication as i32],
        valid_from: Some(civil(today - Days::new(30))),
        valid_until: Some(civil(today + Days::new(30))),
        operator_id: "case-worker-07".into(),
        ..Default::default()
    };
    let registered = consents
        .register_consent(RegisterConsentRequest {
            consent: Some(letter.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert!(!registered.platform.is_empty(), "set by the broker");
    assert!(registered.registered_at.is_some());
    let got = consents
        .get_consent(GetConsentRequest {
            reference: "SQ-E2E-1".into(),
            platform: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert_eq!(got, registered);
    // Other content under the same reference is refused.
    let e = consents
        .register_consent(RegisterConsentRequest {
            consent: Some(Consent {
                purposes: vec![Purpose::MedicalAssistance as i32],
                ..letter.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    // A bad letter names the field.
    let e = consents
        .register_consent(RegisterConsentRequest {
            consent: Some(Consent {
                reference: "SQ-E2E-BAD".into(),
                person_ids: vec!["123".into()],
                ..letter.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("consent.person_ids: [0]"),
        "{}",
        e.message()
    );

    // An expired letter, registered through the CLI.
    let from = (today - Days::new(400)).to_string();
    let until = (today - Days::new(1)).to_string();
    let mut cli = vec![
        "consent",
        "register",
        "--reference",
        "SQ-E2E-OLD",
        "--purpose",
        "dibao-application",
        "--from",
        &from,
        "--until",
        &until,
        "--operator",
        "case-worker-07",
        "--server",
        &broker.url,
    ];
    for m in &family.member_ids {
        cli.extend(["--person", m.as_str()]);
    }
    let out = tokio::process::Command::new(workspace_bin("hedui"))
        .args(&cli)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("SQ-E2E-OLD"), "{printed}");
    assert!(printed.contains(&until), "{printed}");

    // Covered: verified, sources asked.
    let mut client = broker.client().await.unwrap();
    let mut covered = request(&family.applicant_id, "SQ-E2E-1", Purpose::DibaoApplication);
    covered.declared_member_ids = family.member_ids[1..].to_vec();
    let report = client
        .verify(VerifyRequest {
            request: Some(covered),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(report.household_number, family.household_number);
    let before = total_lookups(&control).await.unwrap();
    assert!(before > 0);

    // Refused, each before any source is asked.
    let mut declared_stranger =
        request(&family.applicant_id, "SQ-E2E-1", Purpose::DibaoApplication);
    declared_stranger.declared_member_ids = vec![stranger.clone()];
    let cases = [
        (
            "uncovered applicant",
            request(&stranger, "SQ-E2E-1", Purpose::DibaoApplication),
            "does not cover the applicant",
        ),
        (
            "uncovered declared member",
            declared_stranger,
            "does not cover declared_member_ids[0]",
        ),
        (
            "uncovered purpose",
            request(&family.applicant_id, "SQ-E2E-1", Purpose::MedicalAssistance),
            "does not cover purpose medical_assistance",
        ),
        (
            "expired letter",
            request(
                &family.applicant_id,
                "SQ-E2E-OLD",
                Purpose::DibaoApplication,
            ),
            "expired",
        ),
    ];
    for (what, r, says) in &cases {
        let e = client
            .verify(VerifyRequest {
                request: Some(r.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {}", e.message());
        assert!(e.message().contains(says), "{what}: {}", e.message());
        assert!(!e.message().contains(&stranger), "{what}: {}", e.message());
        assert_eq!(
            total_lookups(&control).await.unwrap(),
            before,
            "{what}: a source was asked"
        );
    }
    // The streaming call is held the same way.
    let mut stream = client
        .stream_verify(StreamVerifyRequest {
            request: Some(request(
                &family.applicant_id,
                "SQ-E2E-OLD",
                Purpose::DibaoApplication,
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());

    // Revoked: refused too.
    let revoked = consents
        .revoke_consent(RevokeConsentRequest {
            reference: "SQ-E2E-1".into(),
            platform: String::new(),
            operator_id: "case-worker-07".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let e = client
        .verify(VerifyRequest {
            request: Some(request(
                &family.applicant_id,
                "SQ-E2E-1",
                Purpose::DibaoApplication,
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("revoked"), "{}", e.message());
    assert_eq!(total_lookups(&control).await.unwrap(), before);

    // Every refusal is in the audit log, and so are the letters' changes.
    let audit = broker.audit_client().await.unwrap();
    let count = |kind: AuditRecordKind, outcome: &str| {
        let filter = AuditFilter {
            kind: kind as i32,
            outcome: outcome.into(),
            ..Default::default()
        };
        let mut audit = audit.clone();
        async move {
            audit
                .query_records(QueryRecordsRequest {
                    auditor_id: "inspector-1".into(),
                    filter: Some(filter),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .records
                .len()
        }
    };
    assert_eq!(
        count(AuditRecordKind::Denied, "permission_denied").await,
        cases.len() + 2
    );
    assert_eq!(count(AuditRecordKind::ConsentRegistered, "").await, 2);
    assert_eq!(count(AuditRecordKind::ConsentRevoked, "").await, 1);
    broker.stop().await;
}
