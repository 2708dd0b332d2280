//! End-to-end tests: the broker and the simulated agencies run as separate
//! processes on loopback and talk real gRPC.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use hedui_mock_agencies::{
    control::proto::{
        ResetStatsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::{Population, PopulationConfig},
    truth::{INDICATOR_IDS, TruthPolicy},
};
use hedui_proto::v1::{
    GetReportRequest, Outcome, Purpose, Report, SourceStatus, StreamVerifyRequest,
    VerificationRequest, VerifyRequest, stream_verify_response::Event,
};
use hedui_tests::{Agencies, Broker, SEED, china_today, total_lookups};
use tonic::Code;

fn request(applicant_id: &str) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant_id.to_owned(),
        consent_reference: "SQ-2026-000123".into(),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "case-worker-07".into(),
        deadline: None,
        max_age: None,
        declared_member_ids: Vec::new(),
    }
}

fn population(households: usize, today: &str) -> Population {
    Population::generate(&PopulationConfig {
        seed: SEED,
        households,
        today: today.parse().expect("date"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_households_match_the_ground_truth() {
    const HOUSEHOLDS: usize = 520;
    let today = china_today();
    let agencies = Agencies::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let client = broker.client().await.unwrap();

    let pop = population(HOUSEHOLDS, &today);
    let truths = pop.truth(&TruthPolicy::default());
    assert_eq!(truths.len(), HOUSEHOLDS);

    let reports: Vec<(usize, Report)> = stream::iter(truths.iter().enumerate())
        .map(|(i, t)| {
            let mut client = client.clone();
            async move {
                let report = client
                    .verify(VerifyRequest {
                        request: Some(request(&t.applicant_id)),
                    })
                    .await
                    .expect("verify")
                    .into_inner()
                    .report
                    .expect("report");
                (i, report)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut compared = 0;
    let mut verdicts: HashMap<i32, usize> = HashMap::new();
    for (i, report) in &reports {
        let truth = &truths[*i];
        let all_answered = report.sources.iter().all(|s| {
            s.status == SourceStatus::Ok as i32 || s.status == SourceStatus::NoRecord as i32
        });
        if !all_answered {
            continue;
        }
        compared += 1;
        *verdicts.entry(report.verdict).or_default() += 1;
        let income = report.income.as_ref().expect("income");
        assert_eq!(
            income.per_capita_monthly_fen, truth.per_capita_income_fen,
            "household {} per-capita income",
            truth.household_number
        );
        for (id, expected) in INDICATOR_IDS.iter().zip(&truth.indicators) {
            let got = report
                .indicators
                .iter()
                .find(|x| x.id == *id)
                .unwrap_or_else(|| panic!("indicator {id} missing"));
            assert_eq!(
                got.outcome, *expected as i32,
                "household {} indicator {id}: {}",
                truth.household_number, got.reason
            );
        }
        assert_eq!(
            report.verdict, truth.verdict as i32,
            "household {} verdict: {}",
            truth.household_number, report.verdict_reason
        );
    }
    assert!(compared >= 500, "only {compared} households fully answered");
    // The population is not degenerate: at least three different verdicts.
    assert!(verdicts.len() >= 3, "verdicts {verdicts:?}");
    broker.stop().await;
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_source_costs_at_most_the_deadline() {
    let today = china_today();
    let hung = "rural-commercial-bank";
    let agencies = Agencies::start(50, &today, &["--fault", &format!("{hung}=hang")])
        .await
        .unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let mut client = broker.client().await.unwrap();
    let pop = population(50, &today);
    let truth = &pop.truth(&TruthPolicy::default())[0];

    let deadline = Duration::from_millis(1500);
    let mut req = request(&truth.applicant_id);
    req.deadline = Some(deadline.try_into().unwrap());
    let started = Instant::now();
    let report = client
        .verify(VerifyRequest { request: Some(req) })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < deadline + Duration::from_millis(750),
        "took {elapsed:?} with a deadline of {deadline:?}"
    );
    let bank = report.sources.iter().find(|s| s.source_id == hung).unwrap();
    assert_eq!(bank.status, SourceStatus::Timeout as i32);
    // Every indicator fed by the bank is INCONCLUSIVE and names it; those
    // that do not need it are still decided.
    let mut inconclusive = BTreeSet::new();
    for i in &report.indicators {
        if i.input_sources.iter().any(|s| s == hung) {
            assert_eq!(
                i.outcome,
                Outcome::Inconclusive as i32,
                "{}: {}",
                i.id,
                i.reason
            );
            assert!(i.missing_sources.iter().any(|s| s == hung), "{}", i.id);
            inconclusive.insert(i.id.as_str());
        } else {
            assert_ne!(
                i.outcome,
                Outcome::Inconclusive as i32,
                "{}: {}",
                i.id,
                i.reason
            );
        }
    }
    for id in ["R1", "R2", "R9"] {
        assert!(inconclusive.contains(id), "{id} should depend on the bank");
    }
    assert!(!report.income.unwrap().complete);
    assert_ne!(report.verdict, Outcome::Pass as i32);
    broker.stop().await;
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_before_any_source_is_called() {
    let today = china_today();
    let agencies = Agencies::start(20, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let mut client = broker.client().await.unwrap();
    let mut control = AgencyControlServiceClient::connect(agencies.control.clone())
        .await
        .unwrap();
    control
        .reset_stats(ResetStatsRequest::default())
        .await
        .unwrap();

    let valid = population(20, &today).truth(&TruthPolicy::default())[0]
        .applicant_id
        .clone();
    let mut wrong_check = valid.clone();
    let last = wrong_check.pop().unwrap();
    wrong_check.push(if last == '0' { '1' } else { '0' });
    let impossible_date = {
        let first17 = format!("511703{}", "19810229123");
        format!(
            "{first17}{}",
            hedui_proto::resident_id::check_character(&first17)
        )
    };
    let cases: Vec<(&str, VerificationRequest)> = vec![
        ("applicant_id", request(&wrong_check)),
        ("applicant_id", request(&valid[..17])),
        ("applicant_id", request(&impossible_date)),
        ("consent_reference", {
            let mut r = request(&valid);
            r.consent_reference.clear();
            r
        }),
        ("purpose", {
            let mut r = request(&valid);
            r.purpose = 99;
            r
        }),
        ("purpose", {
            let mut r = request(&valid);
            r.purpose = Purpose::Unspecified as i32;
            r
        }),
        ("operator_id", {
            let mut r = request(&valid);
            r.operator_id.clear();
            r
        }),
    ];
    for (field, req) in cases {
        let status = client
            .verify(VerifyRequest {
                request: Some(req.clone()),
            })
            .await
            .expect_err("invalid request must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "message {:?} should name {field}",
            status.message()
        );
        let status = client
            .stream_verify(StreamVerifyRequest { request: Some(req) })
            .await
            .expect_err("invalid request must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    }
    assert_eq!(total_lookups(&agencies.control).await.unwrap(), 0);
    broker.stop().await;
    agencies.stop().await;
}

/// A report with everything that differs between two runs for the same
/// household cleared: ids, times, latencies, as-of times, whether answers
/// came from the cache.
fn normalized(mut r: Report) -> Report {
    r.report_id.clear();
    r.requested_at = None;
    r.completed_at = None;
    for s in &mut r.sources {
        s.latency = None;
        s.as_of = None;
        s.from_cache = false;
    }
    if let Some(income) = &mut r.income {
        for i in &mut income.items {
            if let Some(p) = &mut i.provenance {
                p.as_of = None;
            }
        }
    }
    if let Some(assets) = &mut r.assets {
        for i in &mut assets.items {
            if let Some(p) = &mut i.provenance {
                p.as_of = None;
            }
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_verify_yields_each_source_then_the_verify_report() {
    let today = china_today();
    let agencies = Agencies::start(30, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let mut client = broker.client().await.unwrap();
    let truths = population(30, &today).truth(&TruthPolicy::default());
    // A household with several members, so every source is asked about
    // more than one person.
    let truth = truths
        .iter()
        .find(|t| t.member_ids.len() >= 3)
        .expect("a household of three or more");

    let mut stream = client
        .stream_verify(StreamVerifyRequest {
            request: Some(request(&truth.applicant_id)),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e.event.expect("event"));
    }
    let Some(Event::HouseholdResolved(resolved)) = events.first() else {
        panic!("first event must be the household");
    };
    assert_eq!(resolved.source_ids.len(), 28);
    let Some(Event::Report(streamed)) = events.last() else {
        panic!("last event must be the report");
    };
    let per_source: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::SourceResult(s) => Some(s.source_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(per_source.len(), 28, "one event per source");
    assert_eq!(per_source.iter().collect::<BTreeSet<_>>().len(), 28);
    assert_eq!(events.len(), 30);
    assert_eq!(resolved.report_id, streamed.report_id);

    let unary = client
        .verify(VerifyRequest {
            request: Some(request(&truth.applicant_id)),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(normalized(streamed.clone()), normalized(unary));
    broker.stop().await;
    agencies.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_report_returns_the_stored_report() {
    let today = china_today();
    let agencies = Agencies::start(10, &today, &[]).await.unwrap();
    let broker = Broker::start(&agencies, "").await.unwrap();
    let mut client = broker.client().await.unwrap();
    let truth = &population(10, &today).truth(&TruthPolicy::default())[0];
    let report = client
        .verify(VerifyRequest {
            request: Some(request(&truth.applicant_id)),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let stored = client
        .get_report(GetReportRequest {
            report_id: report.report_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(stored, report);

    let unknown = client
        .get_report(GetReportRequest {
            report_id: "00000000-0000-4000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let garbage = client
        .get_report(GetReportRequest {
            report_id: "'; drop table reports; --".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(garbage.message().starts_with("report_id"));
    broker.stop().await;
    agencies.stop().await;
}
