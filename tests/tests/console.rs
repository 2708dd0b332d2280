//! The web console in a real browser (issue 8): Debian's Chromium, driven
//! by playwright-core (tests/browser/run.mjs), against the broker as its
//! own process. The test makes what the pages show: a completed report, a
//! report waiting for the bank, and the accesses to one household; the
//! script performs each page's main task (search the access log, open a
//! record and its inclusion proof, check the chain, export CSV; open a
//! report and print it; see a late answer arrive; "who looked at my data")
//! and saves screenshots to docs/screenshots/. Chromium or Node.js missing
//! is a failure, not a skip: scripts/browser-deps installs them.

use std::{path::PathBuf, process::Stdio, time::Duration};

use hedui_mock_agencies::{
    control::proto::{
        Faults, SetFaultsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{Purpose, VerificationRequest, VerifyRequest};
use hedui_tests::{Agencies, Broker, SEED, china_today};
use tokio::io::{AsyncBufReadExt, BufReader};

const BANK: &str = "rural-commercial-bank";
const HOUSEHOLDS: usize = 30;

fn request(applicant_id: &str, deadline: Option<Duration>) -> VerifyRequest {
    VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: applicant_id.to_owned(),
            consent_reference: "SQ-2026-000123".into(),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "case-worker-07".into(),
            deadline: deadline.and_then(|d| prost_types::Duration::try_from(d).ok()),
            ..Default::default()
        }),
    }
}

async fn bank_hangs(control: &str, hang: bool) {
    AgencyControlServiceClient::connect(control.to_owned())
        .await
        .unwrap()
        .set_faults(SetFaultsRequest {
            source_id: BANK.into(),
            faults: hang.then(|| Faults {
                hang: true,
                ..Default::default()
            }),
            latency: None,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_does_its_main_task_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let deps = std::process::Command::new(root.join("scripts/browser-deps"))
        .output()
        .expect("scripts/browser-deps runs");
    assert!(
        deps.status.success(),
        "scripts/browser-deps failed (Chromium and playwright-core are needed):\n{}",
        String::from_utf8_lossy(&deps.stderr)
    );

    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    // The bank's late answers are waited for; every record is covered by a
    // checkpoint at once, so its inclusion proof can be shown.
    let broker = Broker::start(
        &agencies,
        &format!(
            "[limits.sources.{BANK}]\nlate_deadline_ms = 60000\n\n[audit]\ncheckpoint_every_records = 1\n"
        ),
    )
    .await
    .unwrap();
    let truths = Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    })
    .truth(&TruthPolicy::default());
    let subject = truths[3].applicant_id.clone();
    let mut client = broker.client().await.unwrap();
    let complete = client
        .verify(request(&subject, None))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(!complete.pending);

    bank_hangs(&agencies.control, true).await;
    let pending = client
        .verify(request(
            &truths[4].applicant_id,
            Some(Duration::from_millis(800)),
        ))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert!(pending.pending, "the bank's answer is awaited");

    let mut node = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .env("HEDUI_URL", &broker.url)
        .env("HEDUI_REPORT", &complete.report_id)
        .env("HEDUI_PENDING", &pending.report_id)
        .env("HEDUI_SUBJECT", &subject)
        .env("HEDUI_SCREENSHOTS", root.join("docs/screenshots"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js 20 or later)");
    let mut stdout = BufReader::new(node.stdout.take().unwrap()).lines();
    let stderr = node.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
            text.push('\n');
        }
        text
    });
    let mut out = String::new();
    let run = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line == "READY_FOR_LATE_ANSWER" {
                // The report is open and waiting: the bank answers now.
                bank_hangs(&agencies.control, false).await;
            }
            out.push_str(&line);
            out.push('\n');
        }
        node.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test finished within 3 minutes");
    let errors = errors.await.unwrap();
    eprintln!("{out}{errors}");
    assert!(
        status.success(),
        "the browser test failed:\n{out}\n{errors}"
    );
    assert!(out.contains("console: every page passed"), "{out}");
}
