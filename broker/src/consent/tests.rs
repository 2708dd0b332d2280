//! Authorization letters: validation, who may register, read and revoke
//! them, and verifications refused for consent before any source is asked
//! (counted on the in-process simulated agencies).

use chrono::{Days, NaiveDate};
use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::{GroundTruth, TruthPolicy},
};
use hedui_proto::v1::{
    ChangeKind, CivilDate, Consent, GetConsentRequest, Purpose, RegisterConsentRequest,
    RevokeConsentRequest, VerificationRequest,
};
use tonic::Code;

use super::{service::ConsentApi, *};
use crate::{
    audit::store::{Filter, Row},
    config::Config,
    security::Role,
    verify::{Caller, VerifyError},
};

const HOUSEHOLDS: usize = 40;
const REFERENCE: &str = "SQ-2026-0001";
const APPLICANT: &str = "11010519491231002X";

fn today() -> NaiveDate {
    crate::time::china_date()
}

fn civil(d: NaiveDate) -> CivilDate {
    civil_of(d)
}

/// A letter for `persons`, valid from a month ago to a month from now.
fn letter(reference: &str, persons: &[String], purposes: &[Purpose]) -> Consent {
    Consent {
        reference: reference.into(),
        person_ids: persons.to_vec(),
        purposes: purposes.iter().map(|p| *p as i32).collect(),
        valid_from: Some(civil(today() - Days::new(30))),
        valid_until: Some(civil(today() + Days::new(30))),
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

fn platform(identity: &str) -> Caller {
    Caller::with_role(identity, Role::Platform, None)
}

/// A broker on simulated agencies (no cache: every answer is a lookup),
/// requiring consent or not.
async fn built(required: bool) -> crate::app::Built {
    let config = Config::parse(
        &format!(
            "[store]\npath = ':memory:'\n[changes]\ntransport = 'none'\n[cache]\nenabled = false\n\
             [consent]\nrequired = {required}\n\
             [simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        "test.toml",
    )
    .unwrap();
    crate::app::build(&config).await.unwrap()
}

fn truths() -> Vec<GroundTruth> {
    Population::generate(&PopulationConfig {
        seed: hedui_mock_agencies::population::DEFAULT_SEED,
        households: HOUSEHOLDS,
        today: today(),
    })
    .truth(&TruthPolicy::default())
}

/// A household of several active members.
fn family() -> GroundTruth {
    truths()
        .into_iter()
        .find(|t| t.member_ids.len() > 2)
        .expect("a household of three or more")
}

fn lookups(b: &crate::app::Built) -> u64 {
    b.simulated.stats().iter().map(|s| s.lookups).sum()
}

fn request(t: &GroundTruth, purpose: Purpose) -> VerificationRequest {
    VerificationRequest {
        applicant_id: t.applicant_id.clone(),
        consent_reference: REFERENCE.into(),
        purpose: purpose as i32,
        operator_id: "case-worker-07".into(),
        ..Default::default()
    }
}

async fn verify(
    b: &crate::app::Built,
    caller: &Caller,
    r: VerificationRequest,
) -> Result<hedui_proto::v1::Report, VerifyError> {
    let valid = b.verifier.validate(Some(r), None).unwrap();
    b.verifier.run(valid, caller, None).await
}

async fn records(b: &crate::app::Built, kind: &str) -> Vec<Row> {
    b.verifier
        .audit()
        .backend()
        .query(&Filter {
            kind: Some(kind.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn register(b: &crate::app::Built, caller: &Caller, c: Consent) -> Result<Consent, Code> {
    ConsentApi::new(b.verifier.consents().clone())
        .register_as(caller, RegisterConsentRequest { consent: Some(c) })
        .await
        .map(|r| r.consent.unwrap())
        .map_err(|s| s.code())
}

fn field_of(e: ConsentError) -> &'static str {
    match e {
        ConsentError::InvalidArgument { field, .. } => field,
        other => panic!("not an invalid argument: {other}"),
    }
}

#[test]
fn validation_names_the_field() {
    let ok = letter(REFERENCE, &[APPLICANT.into()], &[Purpose::DibaoApplication]);
    let with = |f: &dyn Fn(&mut Consent)| {
        let mut c = ok.clone();
        f(&mut c);
        validate(Some(c), today()).map(|_| ()).map_err(field_of)
    };
    assert_eq!(with(&|_| {}), Ok(()));
    assert_eq!(
        validate(None, today()).map(|_| ()).map_err(field_of),
        Err("consent")
    );
    assert_eq!(
        with(&|c| c.reference = " ".into()),
        Err("consent.reference")
    );
    assert_eq!(
        with(&|c| c.reference = "x".repeat(MAX_CONSENT_REFERENCE + 1)),
        Err("consent.reference")
    );
    assert_eq!(
        with(&|c| c.reference = "a\nb".into()),
        Err("consent.reference")
    );
    assert_eq!(with(&|c| c.person_ids.clear()), Err("consent.person_ids"));
    assert_eq!(
        with(&|c| c.person_ids = vec!["11010519491231002x".into()]),
        Err("consent.person_ids")
    );
    assert_eq!(
        with(&|c| c.person_ids = vec![APPLICANT.into(), APPLICANT.into()]),
        Err("consent.person_ids")
    );
    let many: Vec<String> = (0..=MAX_CONSENT_PERSONS as u32)
        .map(|i| resident_id::compose("511703", 1980, 1, 1, i))
        .collect();
    assert_eq!(
        with(&|c| c.person_ids = many.clone()),
        Err("consent.person_ids")
    );
    assert_eq!(with(&|c| c.purposes.clear()), Err("consent.purposes"));
    assert_eq!(with(&|c| c.purposes = vec![0]), Err("consent.purposes"));
    assert_eq!(with(&|c| c.purposes = vec![99]), Err("consent.purposes"));
    assert_eq!(with(&|c| c.purposes = vec![1, 1]), Err("consent.purposes"));
    assert_eq!(with(&|c| c.valid_from = None), Err("consent.valid_from"));
    assert_eq!(
        with(&|c| c.valid_from = Some(CivilDate::ymd(2026, 2, 30))),
        Err("consent.valid_from")
    );
    assert_eq!(
        with(&|c| c.valid_until = Some(CivilDate::ymd(2026, -1, 1))),
        Err("consent.valid_until")
    );
    assert_eq!(
        with(&|c| std::mem::swap(&mut c.valid_from, &mut c.valid_until)),
        Err("consent.valid_until")
    );
    assert_eq!(with(&|c| c.operator_id.clear()), Err("consent.operator_id"));
    assert_eq!(
        with(&|c| c.platform = "p\u{7}".into()),
        Err("consent.platform")
    );
    // A one-day letter is fine; a duplicate message names the index.
    assert_eq!(with(&|c| c.valid_until = c.valid_from), Ok(()));
    let e = validate(
        Some(Consent {
            person_ids: vec![APPLICANT.into(), "123".into()],
            ..ok.clone()
        }),
        today(),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("consent.person_ids: [1]: "),
        "{e}"
    );
}

#[tokio::test]
async fn registering_again_is_idempotent_and_other_content_already_exists() {
    let b = built(true).await;
    let a = platform("platform-a");
    let c = letter(REFERENCE, &[APPLICANT.into()], &[Purpose::DibaoApplication]);
    let first = register(&b, &a, c.clone()).await.unwrap();
    assert_eq!(first.platform, "platform-a");
    assert!(first.registered_at.is_some());
    let again = register(&b, &a, c.clone()).await.unwrap();
    assert_eq!(again, first, "the earlier registration, unchanged");
    let other = Consent {
        purposes: vec![Purpose::MedicalAssistance as i32],
        ..c.clone()
    };
    assert_eq!(register(&b, &a, other).await, Err(Code::AlreadyExists));
    // The same reference is another letter for another platform.
    register(&b, &platform("platform-b"), c.clone())
        .await
        .unwrap();
    let rows = records(&b, "consent_registered").await;
    assert_eq!(rows.len(), 2, "each registration recorded once");
    let body = rows[1].body.as_deref().unwrap();
    assert!(!body.contains(APPLICANT), "{body}");
    let subject = b.verifier.audit().subject_key().subject(APPLICANT);
    assert!(body.contains(&subject), "{body}");
    assert_eq!(rows[1].client, "platform-a");
    assert_eq!(rows[1].operator, "case-worker-07");
    // Revoked, the reference cannot be registered again.
    let api = ConsentApi::new(b.verifier.consents().clone());
    api.revoke_as(
        &a,
        RevokeConsentRequest {
            reference: REFERENCE.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(register(&b, &a, c).await, Err(Code::AlreadyExists));
}

#[tokio::test]
async fn letters_are_their_platforms_own() {
    let b = built(true).await;
    let api = ConsentApi::new(b.verifier.consents().clone());
    let (a, other) = (platform("platform-a"), platform("platform-b"));
    let c = letter(REFERENCE, &[APPLICANT.into()], &[Purpose::DibaoApplication]);
    register(&b, &a, c.clone()).await.unwrap();
    let get = |caller: Caller, platform: &str| {
        let api = api.clone();
        let platform = platform.to_owned();
        async move {
            api.get_as(
                &caller,
                GetConsentRequest {
                    reference: REFERENCE.into(),
                    platform,
                },
            )
            .await
            .map(|r| r.consent.unwrap())
        }
    };
    assert_eq!(get(a.clone(), "").await.unwrap().platform, "platform-a");
    assert_eq!(
        get(a.clone(), "platform-a").await.unwrap().reference,
        REFERENCE
    );
    // Another platform's letter is not found, exactly as an unknown one.
    let theirs = get(other.clone(), "platform-a").await.unwrap_err();
    let unknown = api
        .get_as(
            &a,
            GetConsentRequest {
                reference: "SQ-NONE".into(),
                platform: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        get(other.clone(), "").await.unwrap_err().code(),
        Code::NotFound
    );
    let revoke = api
        .revoke_as(
            &other,
            RevokeConsentRequest {
                reference: REFERENCE.into(),
                platform: "platform-a".into(),
                operator_id: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(revoke.code(), Code::NotFound);
    assert!(
        get(a.clone(), "").await.unwrap().revoked_at.is_none(),
        "not revoked by another platform"
    );
    // A platform registers for itself only.
    let for_a = Consent {
        platform: "platform-a".into(),
        reference: "SQ-B".into(),
        ..c.clone()
    };
    assert_eq!(
        register(&b, &other, for_a.clone()).await,
        Err(Code::PermissionDenied)
    );
    // An admin names the platform; without it, the field is named.
    let admin = Caller::with_role("admin-1", Role::Admin, None);
    let e = register(
        &b,
        &admin,
        Consent {
            platform: String::new(),
            ..for_a.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e, Code::InvalidArgument);
    let registered = register(&b, &admin, for_a).await.unwrap();
    assert_eq!(registered.platform, "platform-a");
    assert_eq!(
        get(admin.clone(), "platform-a").await.unwrap().reference,
        REFERENCE
    );
    assert_eq!(
        get(admin.clone(), "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // An auditor is refused, and the refusal recorded.
    let auditor = Caller::with_role("auditor-1", Role::Auditor, None);
    assert_eq!(register(&b, &auditor, c).await, Err(Code::PermissionDenied));
    assert_eq!(
        get(auditor, "platform-a").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let denied = records(&b, "denied").await;
    assert!(
        denied
            .iter()
            .any(|r| r.client == "auditor-1" && r.outcome == "permission_denied")
    );
    assert!(
        denied
            .iter()
            .any(|r| r.client == "platform-b" && r.outcome == "permission_denied")
    );
}

#[tokio::test]
async fn a_covered_verification_asks_the_sources() {
    let b = built(true).await;
    let t = family();
    let a = platform("platform-a");
    register(
        &b,
        &a,
        letter(REFERENCE, &t.member_ids, &[Purpose::DibaoApplication]),
    )
    .await
    .unwrap();
    let mut r = request(&t, Purpose::DibaoApplication);
    r.declared_member_ids = t.member_ids[1..].to_vec();
    let report = verify(&b, &a, r).await.unwrap();
    assert_eq!(
        report.members.len(),
        t.member_ids.len() + t.inactive_member_ids.len()
    );
    assert!(lookups(&b) > 1);
    // Without `required`, no letter is needed.
    let b = built(false).await;
    verify(&b, &a, request(&t, Purpose::DibaoApplication))
        .await
        .unwrap();
}

/// Every refusal before any source is asked, each recorded as denied.
#[tokio::test]
async fn uncovered_requests_are_refused_before_any_source_is_asked() {
    let b = built(true).await;
    let t = family();
    let a = platform("platform-a");
    let api = ConsentApi::new(b.verifier.consents().clone());
    let all = t.member_ids.clone();
    let purposes = [Purpose::DibaoApplication];
    register(&b, &a, letter(REFERENCE, &all, &purposes))
        .await
        .unwrap();
    let expired = Consent {
        valid_from: Some(civil(today() - Days::new(400))),
        valid_until: Some(civil(today() - Days::new(1))),
        ..letter("SQ-EXPIRED", &all, &purposes)
    };
    register(&b, &a, expired).await.unwrap();
    let early = Consent {
        valid_from: Some(civil(today() + Days::new(1))),
        ..letter("SQ-EARLY", &all, &purposes)
    };
    register(&b, &a, early).await.unwrap();
    register(&b, &a, letter("SQ-REVOKED", &all, &purposes))
        .await
        .unwrap();
    api.revoke_as(
        &a,
        RevokeConsentRequest {
            reference: "SQ-REVOKED".into(),
            platform: String::new(),
            operator_id: "case-worker-07".into(),
        },
    )
    .await
    .unwrap();
    // The applicant alone: the other members are not covered.
    register(&b, &a, letter("SQ-APPLICANT", &all[..1], &purposes))
        .await
        .unwrap();
    // The members but not the applicant.
    register(&b, &a, letter("SQ-MEMBERS", &all[1..], &purposes))
        .await
        .unwrap();
    register(
        &b,
        &platform("platform-b"),
        letter("SQ-THEIRS", &all, &purposes),
    )
    .await
    .unwrap();

    let with = |reference: &str, f: &dyn Fn(&mut VerificationRequest)| {
        let mut r = request(&t, Purpose::DibaoApplication);
        r.consent_reference = reference.into();
        f(&mut r);
        r
    };
    let stranger = truths()
        .into_iter()
        .find(|o| !all.contains(&o.applicant_id))
        .unwrap()
        .applicant_id;
    let cases: Vec<(&str, VerificationRequest, &str)> = vec![
        ("unknown", with("SQ-NONE", &|_| {}), "no letter SQ-NONE"),
        (
            "another platform's",
            with("SQ-THEIRS", &|_| {}),
            "no letter SQ-THEIRS",
        ),
        ("revoked", with("SQ-REVOKED", &|_| {}), "was revoked on"),
        ("expired", with("SQ-EXPIRED", &|_| {}), "expired"),
        ("not yet valid", with("SQ-EARLY", &|_| {}), "not yet today"),
        (
            "uncovered purpose",
            with(REFERENCE, &|r| {
                r.purpose = Purpose::MedicalAssistance as i32
            }),
            "does not cover purpose medical_assistance",
        ),
        (
            "uncovered applicant",
            with("SQ-MEMBERS", &|_| {}),
            "does not cover the applicant",
        ),
        (
            "uncovered declared member",
            with(REFERENCE, &|r| {
                r.declared_member_ids = vec![all[1].clone(), stranger.clone()]
            }),
            "does not cover declared_member_ids[1]",
        ),
    ];
    let before = lookups(&b);
    for (i, (what, r, says)) in cases.iter().enumerate() {
        let e = verify(&b, &a, r.clone()).await.unwrap_err();
        let VerifyError::PermissionDenied { message } = &e else {
            panic!("{what}: {e}");
        };
        assert!(
            message.starts_with("consent_reference: "),
            "{what}: {message}"
        );
        assert!(message.contains(says), "{what}: {message}");
        assert!(!message.contains(&stranger), "{what}: {message}");
        assert_eq!(
            crate::server::to_status(e).code(),
            Code::PermissionDenied,
            "{what}"
        );
        assert_eq!(lookups(&b), before, "{what}: a source was asked");
        let denied = records(&b, "denied").await;
        assert_eq!(denied.len(), i + 1, "{what}");
        assert_eq!(denied[0].outcome, "permission_denied", "{what}");
        assert_eq!(denied[0].client, "platform-a", "{what}");
        let body = denied[0].body.as_deref().unwrap();
        assert!(!body.contains(&t.applicant_id), "{what}: {body}");
    }
    // The streaming path is held the same way: not an event leaves.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let valid = b
        .verifier
        .validate(Some(with("SQ-EXPIRED", &|_| {})), None)
        .unwrap();
    let e = b.verifier.run(valid, &a, Some(tx)).await.unwrap_err();
    assert!(matches!(e, VerifyError::PermissionDenied { .. }), "{e}");
    assert!(rx.try_recv().is_err(), "an event left");
    assert_eq!(lookups(&b), before);
}

/// The message of a refusal for an uncovered registered member, which says
/// what was asked (`asked`).
fn member_refusal<'a>(e: &'a VerifyError, asked: &str) -> &'a str {
    let VerifyError::PermissionDenied { message } = e else {
        panic!("{e}");
    };
    assert!(
        message.contains("does not cover household member"),
        "{message}"
    );
    assert!(message.contains(asked), "{message}");
    message
}

#[tokio::test]
async fn an_uncovered_registered_member_is_refused_after_household_registration_alone() {
    let b = built(true).await;
    let t = family();
    let a = platform("platform-a");
    register(
        &b,
        &a,
        letter(
            "SQ-APPLICANT",
            &t.member_ids[..1],
            &[Purpose::DibaoApplication],
        ),
    )
    .await
    .unwrap();
    b.simulated.reset_stats();
    let mut r = request(&t, Purpose::DibaoApplication);
    r.consent_reference = "SQ-APPLICANT".into();
    let e = verify(&b, &a, r).await.unwrap_err();
    let message = member_refusal(&e, "only household registration was asked");
    for m in &t.member_ids {
        assert!(!message.contains(m.as_str()), "{message}");
    }
    for s in b.simulated.stats() {
        let expected = u64::from(s.source_id == hedui_adapters::catalog::HOUSEHOLD_SOURCE);
        assert_eq!(s.lookups, expected, "{}", s.source_id);
    }
    let denied = records(&b, "denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].outcome, "permission_denied");
    let body = denied[0].body.as_deref().unwrap();
    assert!(
        body.contains(hedui_adapters::catalog::HOUSEHOLD_SOURCE),
        "{body}"
    );
    let key = b.verifier.audit().subject_key();
    for m in &t.member_ids {
        assert!(!body.contains(m.as_str()), "{body}");
        assert!(
            body.contains(&key.subject(m)),
            "every member concerned: {body}"
        );
    }
}

#[tokio::test]
async fn an_uncovered_registered_member_is_refused_after_the_declared_ones_were_asked_about() {
    let b = built(true).await;
    let t = family();
    let a = platform("platform-a");
    let other = t
        .member_ids
        .iter()
        .find(|m| **m != t.applicant_id)
        .unwrap()
        .clone();
    let covered = [t.applicant_id.clone(), other.clone()];
    register(
        &b,
        &a,
        letter("SQ-TWO", &covered, &[Purpose::DibaoApplication]),
    )
    .await
    .unwrap();
    // Registration answers after the others were asked about the two.
    b.simulated
        .set_latency(
            hedui_adapters::catalog::HOUSEHOLD_SOURCE,
            hedui_mock_agencies::sim::LatencyConfig::new(200, 200),
        )
        .unwrap();
    b.simulated.reset_stats();
    let mut r = request(&t, Purpose::DibaoApplication);
    r.consent_reference = "SQ-TWO".into();
    r.declared_member_ids = vec![other];
    let e = verify(&b, &a, r).await.unwrap_err();
    member_refusal(&e, "the applicant and the declared members only");
    let others: Vec<_> = b
        .simulated
        .stats()
        .into_iter()
        .filter(|s| s.source_id != hedui_adapters::catalog::HOUSEHOLD_SOURCE)
        .collect();
    for s in &others {
        assert_eq!(s.lookups, 1, "{}: asked about the covered two", s.source_id);
    }
    let denied = records(&b, "denied").await;
    assert_eq!(denied.len(), 1);
    let body = denied[0].body.as_deref().unwrap();
    for s in &others {
        assert!(body.contains(&s.source_id), "every source asked: {body}");
    }
}

#[tokio::test]
async fn watched_households_are_held_to_the_enrolling_platforms_letter() {
    let b = built(true).await;
    let t = family();
    let a = platform("platform-a");
    register(
        &b,
        &a,
        letter(REFERENCE, &t.member_ids, &[Purpose::DibaoReview]),
    )
    .await
    .unwrap();
    let watch = crate::watch::Watch::new(b.verifier.clone());
    let (enrolment, baseline) = watch
        .enrol(&a, Some(request(&t, Purpose::DibaoReview)))
        .await
        .unwrap();
    let last = || async {
        let (id,): (String,) =
            sqlx::query_as("SELECT last_report_id FROM enrolments WHERE enrolment_id = ?")
                .bind(&enrolment)
                .fetch_one(b.verifier.store().pool())
                .await
                .unwrap();
        id
    };
    assert_eq!(last().await, baseline.report_id);
    // A change: the broker re-verifies under platform-a's letter.
    let event = b
        .simulated
        .simulate_change(&t.member_ids[1], ChangeKind::VehicleRegistered)
        .unwrap();
    watch.on_event(&event).await.unwrap();
    let second = last().await;
    assert_ne!(second, baseline.report_id, "re-verified");
    // Revoked: the next change is handled (no error, no crash) but the
    // household is not verified again, and the refusal is recorded.
    ConsentApi::new(b.verifier.consents().clone())
        .revoke_as(
            &a,
            RevokeConsentRequest {
                reference: REFERENCE.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    b.simulated.reset_stats();
    let event = b
        .simulated
        .simulate_change(&t.member_ids[1], ChangeKind::VehicleRegistered)
        .unwrap();
    assert!(watch.on_event(&event).await.unwrap().is_empty());
    assert_eq!(last().await, second, "not re-verified");
    assert_eq!(lookups(&b), 0);
    let denied = records(&b, "denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].client, "watch:platform-a");
    assert_eq!(denied[0].outcome, "permission_denied");
    // Handled: a redelivery changes nothing.
    assert!(watch.on_event(&event).await.unwrap().is_empty());
    assert_eq!(records(&b, "denied").await.len(), 1);
}

#[tokio::test]
async fn changes_are_not_made_when_they_cannot_be_recorded() {
    let b = built(true).await;
    let a = platform("platform-a");
    let c = letter(REFERENCE, &[APPLICANT.into()], &[Purpose::DibaoApplication]);
    b.verifier.audit().backend().close().await;
    assert_eq!(register(&b, &a, c).await, Err(Code::Unavailable));
    assert_eq!(
        b.verifier
            .consents()
            .get("platform-a", REFERENCE)
            .await
            .unwrap(),
        None,
        "nothing half-written"
    );
}
