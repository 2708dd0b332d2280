//! Configuration reload on SIGHUP (issue 7), with the broker as its own
//! process: a new purpose restriction takes effect without a restart and
//! is recorded in the audit log; a configuration that changes what takes a
//! restart is refused whole, recorded, and the broker goes on as before.

use std::time::Duration;

use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{
    AuditFilter, AuditRecordKind, Purpose, QueryRecordsRequest, SourceStatus, VerificationRequest,
    VerifyRequest,
};
use hedui_tests::{BrokerProcess, SEED, china_today};

const HOUSEHOLDS: usize = 30;

async fn traffic_police_status(broker: &BrokerProcess) -> SourceStatus {
    let applicant = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default())[1]
        .applicant_id
        .clone();
    let report = broker
        .client()
        .await
        .unwrap()
        .verify(VerifyRequest {
            request: Some(VerificationRequest {
                applicant_id: applicant,
                consent_reference: "SQ-RELOAD".into(),
                purpose: Purpose::DibaoApplication as i32,
                operator_id: "case-worker-07".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    report
        .sources
        .iter()
        .find(|s| s.source_id == "traffic-police")
        .unwrap()
        .status()
}

async fn hangup(broker: &BrokerProcess) {
    let sent = tokio::process::Command::new("kill")
        .arg("-HUP")
        .arg(broker.pid().unwrap().to_string())
        .status()
        .await
        .unwrap();
    assert!(sent.success());
}

/// Configuration records with `outcome`, waiting up to 5 s for `at_least`.
async fn configuration_records(
    broker: &BrokerProcess,
    outcome: &str,
    at_least: usize,
) -> Vec<String> {
    let mut audit = broker.audit_client().await.unwrap();
    let mut details = Vec::new();
    for _ in 0..50 {
        details = audit
            .query_records(QueryRecordsRequest {
                auditor_id: "inspector-1".into(),
                filter: Some(AuditFilter {
                    kind: AuditRecordKind::Configuration as i32,
                    outcome: outcome.into(),
                    ..Default::default()
                }),
                page_size: 50,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .map(|r| r.detail)
            .collect();
        if details.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    details
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_what_can_be_reloaded_and_refuses_the_rest() {
    let broker = BrokerProcess::start(
        &format!(
            "[simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        ),
        &[],
    )
    .await
    .unwrap();
    assert_ne!(
        traffic_police_status(&broker).await,
        SourceStatus::NotQueried
    );
    let file = broker.dir.path().join("hedui.toml");
    let original = std::fs::read_to_string(&file).unwrap();

    // A purpose restriction, applied on SIGHUP.
    std::fs::write(
        &file,
        format!(
            "{original}\n[purposes.dibao_application]\nsources = [\"public-security\", \"civil-affairs\"]\n"
        ),
    )
    .unwrap();
    hangup(&broker).await;
    let mut status = SourceStatus::Unspecified;
    for _ in 0..50 {
        status = traffic_police_status(&broker).await;
        if status == SourceStatus::NotQueried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        SourceStatus::NotQueried,
        "the reload did not take effect"
    );
    let reloaded = configuration_records(&broker, "ok", 2).await;
    assert!(
        reloaded
            .iter()
            .any(|d| d.starts_with("reloaded: sources: 28 kept")),
        "{reloaded:?}"
    );

    // The report store cannot move under a running broker: refused whole.
    std::fs::write(
        &file,
        original.replace("reports.db", "elsewhere.db")
            + "\n[purposes.dibao_application]\nsources = [\"public-security\"]\n",
    )
    .unwrap();
    hangup(&broker).await;
    let refused = configuration_records(&broker, "refused", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("store: changed"), "{refused:?}");
    // Nothing of it applied: the restriction in force is the earlier one.
    let applicant_status = traffic_police_status(&broker).await;
    assert_eq!(applicant_status, SourceStatus::NotQueried);
    assert!(!broker.dir.path().join("elsewhere.db").exists());

    // A file that does not parse: refused, the broker goes on.
    std::fs::write(&file, "this is = = not toml [").unwrap();
    hangup(&broker).await;
    assert_eq!(configuration_records(&broker, "refused", 2).await.len(), 2);
    assert_eq!(
        traffic_police_status(&broker).await,
        SourceStatus::NotQueried
    );
    broker.stop().await;
}
