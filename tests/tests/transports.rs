//! The transports end to end: HTTP/JSON sources (a 29th source added by
//! configuration alone), SQL views in the real PostgreSQL and MariaDB,
//! federation between two broker processes, the conformance kit against
//! every shipped adapter, and one report over every transport at once.
//!
//! The database tests fail, never skip, when PostgreSQL (127.0.0.1:5432,
//! database `test`) or MariaDB (127.0.0.1:3306, database `test`) is absent;
//! `HEDUI_TEST_POSTGRES_URL` and `HEDUI_TEST_MARIADB_URL` point elsewhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use hedui_adapters::{
    Adapter, LookupContext,
    catalog::{Catalog, SourceSpec},
    conformance::{self, Options},
    registry::{Registry, TransportConfig},
};
use hedui_mock_agencies::{
    control::proto::{
        Faults, SetFaultsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    http::second_bank_spec,
    kit::{ControlInjector, fixtures},
    population::{Population, PopulationConfig, SECOND_BANK_ID},
    sql::{self, Server},
    truth::{INDICATOR_IDS, TruthPolicy},
};
use hedui_proto::v1::{
    AssetCategory, LookupRequest, Outcome, Purpose, Report, SourceStatus, VerificationRequest,
    VerifyRequest, fact::Value,
};
use hedui_tests::{
    AgencyProcess, BrokerProcess, SEED, china_today, free_port, mariadb_url, postgres_url,
    unique_name,
};

fn population(households: usize, today: &str) -> Arc<Population> {
    Population::shared(&PopulationConfig {
        seed: SEED,
        households,
        today: today.parse().expect("date"),
    })
}

fn request(applicant_id: &str, deadline: Option<Duration>) -> VerifyRequest {
    VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: applicant_id.to_owned(),
            consent_reference: "SQ-2026-000123".into(),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "case-worker-07".into(),
            deadline: deadline.and_then(|d| d.try_into().ok()),
            max_age: None,
            declared_member_ids: Vec::new(),
        }),
    }
}

async fn verify(broker: &BrokerProcess, applicant: &str, deadline: Option<Duration>) -> Report {
    broker
        .client()
        .await
        .expect("broker reachable")
        .verify(request(applicant, deadline))
        .await
        .expect("verify")
        .into_inner()
        .report
        .expect("report")
}

fn source<'a>(r: &'a Report, id: &str) -> &'a hedui_proto::v1::SourceResult {
    r.sources
        .iter()
        .find(|s| s.source_id == id)
        .unwrap_or_else(|| panic!("{id} is not in the report"))
}

/// The entry of one source, parsed, built into its adapter.
fn adapter_of(entry: &str, spec: &SourceSpec) -> Arc<dyn Adapter> {
    let table: toml::Table = toml::from_str(entry).expect("entry parses");
    let e = &table["sources"].as_array().expect("[[sources]]")[0];
    let transport: TransportConfig = e["transport"].clone().try_into().expect("transport");
    Registry::with_builtin()
        .build(spec, &transport)
        .unwrap_or_else(|err| panic!("{}: {err}", spec.id))
}

async fn set_faults(control: &str, source_id: &str, faults: Faults) {
    AgencyControlServiceClient::connect(control.to_owned())
        .await
        .expect("control reachable")
        .set_faults(SetFaultsRequest {
            source_id: source_id.into(),
            faults: Some(faults),
            latency: None,
        })
        .await
        .expect("faults set");
}

/// The first proof: a second rural bank, reached over HTTP/JSON,
/// added to a broker by its configuration file alone. Its deposits are in
/// the report with their provenance; its silence makes the rules that need
/// it inconclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_29th_source_is_configuration_alone() {
    const HOUSEHOLDS: usize = 200;
    let today = china_today();
    let agencies = AgencyProcess::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let entry = agencies.http_entry(SECOND_BANK_ID).unwrap();
    assert!(
        Catalog::dachuan().get(SECOND_BANK_ID).is_none(),
        "the bank must be new to the catalog"
    );
    // The same household is verified again after the new bank goes
    // silent: its answers must not come from the cache.
    let config = format!(
        "{}\n[cache.sources.{SECOND_BANK_ID}]\nenabled = false\n",
        agencies.sources(&BTreeMap::new(), &[entry])
    );
    let broker = BrokerProcess::start(&config, &[]).await.unwrap();

    // A household with deposits at the new bank.
    let pop = population(HOUSEHOLDS, &today);
    let ts = prost_types::Timestamp::default();
    let (household, deposits) = pop
        .households()
        .find_map(|h| {
            let d: Vec<(String, hedui_proto::v1::Fact)> = h
                .active_members()
                .flat_map(|p| {
                    pop.facts_for(SECOND_BANK_ID, p.id(), ts)
                        .into_iter()
                        .map(move |f| (p.id().to_owned(), f))
                })
                .collect();
            (!d.is_empty()).then_some((h, d))
        })
        .expect("some household banks at Tongchuan");
    let truth = household.truth(&TruthPolicy::default());
    let report = verify(&broker, household.applicant().id(), None).await;

    assert_eq!(report.sources.len(), 29);
    let bank = source(&report, SECOND_BANK_ID);
    assert_eq!(bank.status, SourceStatus::Ok as i32, "{}", bank.detail);
    assert_eq!(bank.source_name, "Tongchuan Rural Commercial Bank");
    let assets = report.assets.as_ref().unwrap();
    let mut found: Vec<(String, String, i64)> = assets
        .items
        .iter()
        .filter_map(|i| {
            let p = i.provenance.as_ref()?;
            (p.source_id == SECOND_BANK_ID).then(|| {
                assert_eq!(i.category, AssetCategory::Deposits as i32);
                assert!(p.as_of.is_some(), "provenance has an as-of time");
                (p.person_id.clone(), p.record_id.clone(), i.value_fen)
            })
        })
        .collect();
    let mut expected: Vec<(String, String, i64)> = deposits
        .iter()
        .map(|(p, f)| {
            let Some(Value::FinancialAccount(a)) = &f.value else {
                panic!("a deposit")
            };
            (p.clone(), f.record_id.clone(), a.balance_fen)
        })
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "the new bank's deposits, with provenance");
    let extra: i64 = expected.iter().map(|e| e.2).sum();
    assert_eq!(assets.money_assets_fen, truth.money_assets_fen + extra);
    let r2 = report.indicators.iter().find(|i| i.id == "R2").unwrap();
    assert!(
        r2.input_sources.iter().any(|s| s == SECOND_BANK_ID),
        "{r2:?}"
    );

    // Silent, the new bank makes the money-asset rule inconclusive.
    set_faults(
        &agencies.control,
        SECOND_BANK_ID,
        Faults {
            hang: true,
            ..Default::default()
        },
    )
    .await;
    let report = verify(
        &broker,
        household.applicant().id(),
        Some(Duration::from_millis(1500)),
    )
    .await;
    assert_eq!(
        source(&report, SECOND_BANK_ID).status,
        SourceStatus::Timeout as i32
    );
    let r2 = report.indicators.iter().find(|i| i.id == "R2").unwrap();
    assert_eq!(r2.outcome, Outcome::Inconclusive as i32, "{}", r2.reason);
    assert!(r2.missing_sources.iter().any(|s| s == SECOND_BANK_ID));
    broker.stop().await;
    agencies.stop().await;
}

/// What the housing bureau, the traffic police and the agricultural
/// bureau hold, loaded into views of the real PostgreSQL and MariaDB: read
/// through the SQL transport, every source passes the conformance kit on
/// both, and ids written to inject SQL find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_views_in_postgres_and_mariadb_pass_the_kit() {
    let today = china_today();
    let pop = population(300, &today);
    let catalog = Catalog::dachuan();
    for (server, admin) in [
        (Server::Postgres, postgres_url()),
        (Server::MariaDb, mariadb_url()),
    ] {
        let loaded = sql::load(&pop, server, &admin, &unique_name("kit"), &sql::SQL_SOURCES)
            .await
            .unwrap_or_else(|e| panic!("{server:?} at {admin} is required for this test: {e}"));
        let entries = loaded.sources_toml();
        let table: toml::Table = toml::from_str(&entries).unwrap();
        for e in table["sources"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap();
            let spec = catalog.get(id).unwrap();
            let transport: TransportConfig = e["transport"].clone().try_into().unwrap();
            let adapter = Registry::with_builtin().build(spec, &transport).unwrap();
            let f = fixtures(&pop, id, 10);
            assert!(!f.known.is_empty(), "{id}: the population holds records");
            let report =
                conformance::run(adapter.clone(), spec, &f, None, &Options::default()).await;
            assert!(report.passed(), "{server:?}\n{report}");

            // Injection attempts are just ids nobody has.
            let known = f.known[0].0.clone();
            let attempts = [
                "' OR 1=1 --",
                "' OR '1'='1",
                "x' UNION SELECT * FROM property_rights --",
                "'; DROP VIEW v_dwelling_by_owner; --",
                "\\' OR 1=1 #",
            ];
            let mut ids: Vec<String> = attempts.iter().map(|s| s.to_string()).collect();
            ids.push(known.clone());
            let req = LookupRequest {
                person_ids: ids,
                ..Default::default()
            };
            let resp = adapter
                .lookup(&LookupContext::with_timeout(Duration::from_secs(10)), &req)
                .await
                .unwrap_or_else(|e| panic!("{server:?} {id}: {e}"));
            for a in &resp.answers {
                if a.person_id == known {
                    assert_eq!(a.facts.len(), f.known[0].1.len(), "{id}: still there");
                } else {
                    assert!(
                        a.facts.is_empty(),
                        "{server:?} {id}: {:?} found {:?}",
                        a.person_id,
                        a.facts
                    );
                }
            }
        }
        loaded.drop_all().await.unwrap();
    }
}

/// The kit passes every shipped adapter the simulated agencies serve: the
/// 28 sources over gRPC and the REST APIs over HTTP/JSON, with faults
/// injected through the control service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_source_passes_the_kit() {
    const HOUSEHOLDS: usize = 300;
    let today = china_today();
    let agencies = AgencyProcess::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let pop = population(HOUSEHOLDS, &today);
    let catalog = Catalog::dachuan();
    let mut cases: Vec<(SourceSpec, String)> = Vec::new();
    for spec in catalog.iter() {
        cases.push((
            spec.clone(),
            format!(
                "[[sources]]\nid = \"{}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"{}\"\n",
                spec.id, agencies.grpc[&spec.id]
            ),
        ));
    }
    for id in agencies.http.keys() {
        let spec = catalog.get(id).cloned().unwrap_or_else(second_bank_spec);
        cases.push((spec, agencies.http_entry(id).unwrap()));
    }
    assert_eq!(cases.len(), 32);
    let options = Options {
        short_deadline: Duration::from_millis(300),
        ..Options::default()
    };
    // The gRPC and the REST API of a source share one simulated source and
    // its faults: one phase per transport, so no two runs inject into the
    // same source at once.
    let (grpc, rest): (Vec<_>, Vec<_>) = cases
        .into_iter()
        .partition(|(_, entry)| entry.contains("type = \"grpc\""));
    let mut reports = Vec::new();
    for phase in [grpc, rest] {
        let done: Vec<_> = stream::iter(phase)
            .map(|(spec, entry)| {
                let pop = pop.clone();
                let control = agencies.control.clone();
                let options = options.clone();
                async move {
                    let adapter = adapter_of(&entry, &spec);
                    let injector = ControlInjector::new(&control, &spec.id).unwrap();
                    let f = fixtures(&pop, &spec.id, 8);
                    let transport = if entry.contains("type = \"http\"") {
                        "http"
                    } else {
                        "grpc"
                    };
                    (
                        transport,
                        conformance::run(adapter, &spec, &f, Some(&injector), &options).await,
                    )
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        reports.extend(done);
    }
    for (transport, r) in &reports {
        assert!(r.passed(), "over {transport}:\n{r}");
        // Faults were injected, not skipped.
        let Some(conformance::Outcome::Passed(t)) = r.outcome("typed errors") else {
            panic!("{r}")
        };
        assert!(t.contains("Unavailable came back as UNAVAILABLE"), "{r}");
    }
    agencies.stop().await;
}

/// A household's report equals the ground truth on what it decides.
fn assert_matches_truth(report: &Report, truth: &hedui_mock_agencies::GroundTruth) {
    for s in &report.sources {
        assert!(
            s.status == SourceStatus::Ok as i32 || s.status == SourceStatus::NoRecord as i32,
            "household {}: source {} is {} ({})",
            truth.household_number,
            s.source_id,
            s.status,
            s.detail
        );
    }
    let income = report.income.as_ref().unwrap();
    assert_eq!(
        income.per_capita_monthly_fen, truth.per_capita_income_fen,
        "household {} per-capita income",
        truth.household_number
    );
    assert_eq!(
        report.assets.as_ref().unwrap().money_assets_fen,
        truth.money_assets_fen,
        "household {} money assets",
        truth.household_number
    );
    for (id, expected) in INDICATOR_IDS.iter().zip(&truth.indicators) {
        let got = report.indicators.iter().find(|x| x.id == *id).unwrap();
        assert_eq!(
            got.outcome, *expected as i32,
            "household {} indicator {id}: {}",
            truth.household_number, got.reason
        );
    }
    assert_eq!(
        report.verdict, truth.verdict as i32,
        "household {}: {}",
        truth.household_number, report.verdict_reason
    );
}

fn peer_entry(id: &str, endpoint: &str, remote: &[&str]) -> String {
    let remote: Vec<String> = remote.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[sources]]\nid = \"{id}\"\n[sources.transport]\ntype = \"peer\"\nendpoint = \"{endpoint}\"\nsources = [{}]\n",
        remote.join(", ")
    )
}

/// Federation with two broker processes: broker A ("dachuan") asks its
/// forestry source through broker B ("dazhou"); the report carries B's
/// facts, with provenance naming B and the source behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_broker_is_one_source_with_provenance() {
    const HOUSEHOLDS: usize = 200;
    let today = china_today();
    let agencies = AgencyProcess::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let b = BrokerProcess::start(
        &agencies.sources(&BTreeMap::new(), &[]),
        &[
            "--broker-id",
            "dazhou",
            "--federation-listen",
            "127.0.0.1:0",
        ],
    )
    .await
    .unwrap();
    let b_fed = b.federation.clone().expect("B serves federation");
    let replace: BTreeMap<String, String> = [(
        "forestry".to_owned(),
        peer_entry("forestry", &b_fed, &["forestry"]),
    )]
    .into();
    let a = BrokerProcess::start(
        &agencies.sources(&replace, &[]),
        &["--broker-id", "dachuan"],
    )
    .await
    .unwrap();

    let pop = population(HOUSEHOLDS, &today);
    let ts = prost_types::Timestamp::default();
    let households: Vec<_> = pop
        .households()
        .filter(|h| {
            h.active_members()
                .any(|p| !pop.facts_for("forestry", p.id(), ts).is_empty())
        })
        .take(3)
        .collect();
    assert!(!households.is_empty(), "somebody holds a forest right");
    // The peer transport passes the kit; its record ids name the peer.
    let spec = Catalog::dachuan().get("forestry").unwrap().clone();
    let mut f = fixtures(&pop, "forestry", 8);
    for (_, facts) in &mut f.known {
        for fact in facts {
            fact.record_id = format!("dazhou/forestry/{}", fact.record_id);
        }
    }
    let kit = conformance::run(
        adapter_of(&peer_entry("forestry", &b_fed, &["forestry"]), &spec),
        &spec,
        &f,
        Some(&ControlInjector::new(&agencies.control, "forestry").unwrap()),
        &Options::default(),
    )
    .await;
    assert!(kit.passed(), "{kit}");
    for h in households {
        let report = verify(&a, h.applicant().id(), None).await;
        assert_matches_truth(&report, &h.truth(&TruthPolicy::default()));
        let forest: Vec<_> = report
            .assets
            .as_ref()
            .unwrap()
            .items
            .iter()
            .filter(|i| i.category == AssetCategory::Forest as i32)
            .collect();
        assert!(!forest.is_empty());
        for item in forest {
            let p = item.provenance.as_ref().unwrap();
            assert_eq!(p.source_id, "forestry");
            assert!(
                p.record_id.starts_with("dazhou/forestry/FR-"),
                "{}",
                p.record_id
            );
        }
        // B recorded the lookup it served to A, before answering it.
        let served = b
            .audit_client()
            .await
            .unwrap()
            .query_records(hedui_proto::v1::QueryRecordsRequest {
                auditor_id: "inspector-1".into(),
                filter: Some(hedui_proto::v1::AuditFilter {
                    subject_id: h.applicant().id().to_owned(),
                    client: "broker:dachuan@127.0.0.1".into(),
                    kind: hedui_proto::v1::AuditRecordKind::FederationLookup as i32,
                    ..Default::default()
                }),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(served.len(), 1, "{served:?}");
        let r = &served[0];
        assert_eq!(r.request_id, report.report_id);
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].source_id, "forestry");
        assert_eq!(r.sources[0].status, "ok");
        assert_eq!(r.outcome, "ok");
        assert!(!r.report_digest.is_empty());
    }
    a.stop().await;
    b.stop().await;
    agencies.stop().await;
}

/// A→B→A: each broker asks its forestry source through the other. The
/// lookup is refused with an error naming the loop, and what needs the
/// forestry source is inconclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_loop_is_refused_and_named() {
    let today = china_today();
    let agencies = AgencyProcess::start(30, &today, &[]).await.unwrap();
    let (pa, pb) = (free_port().unwrap(), free_port().unwrap());
    let via = |port: u16| -> BTreeMap<String, String> {
        [(
            "forestry".to_owned(),
            peer_entry(
                "forestry",
                &format!("http://127.0.0.1:{port}"),
                &["forestry"],
            ),
        )]
        .into()
    };
    let a_listen = format!("127.0.0.1:{pa}");
    let b_listen = format!("127.0.0.1:{pb}");
    let a = BrokerProcess::start(
        &agencies.sources(&via(pb), &[]),
        &["--broker-id", "dachuan", "--federation-listen", &a_listen],
    )
    .await
    .unwrap();
    let b = BrokerProcess::start(
        &agencies.sources(&via(pa), &[]),
        &["--broker-id", "dazhou", "--federation-listen", &b_listen],
    )
    .await
    .unwrap();
    let applicant = population(30, &today)
        .household_at(0)
        .unwrap()
        .applicant()
        .id()
        .to_owned();
    let started = std::time::Instant::now();
    let report = verify(&a, &applicant, Some(Duration::from_secs(5))).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a loop is refused, not waited out"
    );
    let forestry = source(&report, "forestry");
    assert_eq!(forestry.status, SourceStatus::Error as i32);
    assert!(
        forestry
            .detail
            .contains("federation loop: dachuan → dazhou → dachuan"),
        "{}",
        forestry.detail
    );
    let mut needing = 0;
    for i in &report.indicators {
        if i.input_sources.iter().any(|s| s == "forestry") {
            needing += 1;
            assert_eq!(
                i.outcome,
                Outcome::Inconclusive as i32,
                "{}: {}",
                i.id,
                i.reason
            );
        }
    }
    assert!(needing > 0, "some rule needs the forestry source");
    a.stop().await;
    b.stop().await;
    agencies.stop().await;
}

/// The whole report over every transport at once: household registration
/// and civil affairs (and the rest) over gRPC; the Rural Commercial Bank,
/// the provident fund and the employment agency over HTTP/JSON; housing and
/// land from views in PostgreSQL, vehicles from a view in MariaDB; forestry
/// through a second broker. Every report equals the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transports_give_the_ground_truth() {
    const HOUSEHOLDS: usize = 240;
    let today = china_today();
    let pop = population(HOUSEHOLDS, &today);
    let pg = sql::load(
        &pop,
        Server::Postgres,
        &postgres_url(),
        &unique_name("e2e"),
        &["housing-management", "agriculture"],
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {} is required for this test: {e}",
            postgres_url()
        )
    });
    let maria = sql::load(
        &pop,
        Server::MariaDb,
        &mariadb_url(),
        &unique_name("e2e"),
        &["traffic-police"],
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "MariaDB at {} is required for this test: {e}",
            mariadb_url()
        )
    });

    let agencies = AgencyProcess::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let b = BrokerProcess::start(
        &agencies.sources(&BTreeMap::new(), &[]),
        &[
            "--broker-id",
            "dazhou",
            "--federation-listen",
            "127.0.0.1:0",
        ],
    )
    .await
    .unwrap();
    let mut replace: BTreeMap<String, String> = BTreeMap::new();
    for id in ["rural-commercial-bank", "provident-fund", "employment"] {
        replace.insert(id.into(), agencies.http_entry(id).unwrap());
    }
    for loaded in [&pg, &maria] {
        let table: toml::Table = toml::from_str(&loaded.sources_toml()).unwrap();
        for e in table["sources"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap().to_owned();
            let mut one = toml::Table::new();
            one.insert("sources".into(), toml::Value::Array(vec![e.clone()]));
            replace.insert(id, toml::to_string(&one).unwrap());
        }
    }
    replace.insert(
        "forestry".into(),
        peer_entry("forestry", b.federation.as_ref().unwrap(), &["forestry"]),
    );
    let config = agencies.sources(&replace, &[]);
    for t in [
        "type = \"grpc\"",
        "type = \"http\"",
        "type = \"sql\"",
        "type = \"peer\"",
    ] {
        assert!(config.contains(t), "{t}");
    }
    let a = BrokerProcess::start(&config, &["--broker-id", "dachuan"])
        .await
        .unwrap();

    let client = a.client().await.unwrap();
    let truths = pop.truth(&TruthPolicy::default());
    let reports: Vec<(usize, Report)> = stream::iter(truths.iter().enumerate().take(120))
        .map(|(i, t)| {
            let mut client = client.clone();
            async move {
                let r = client
                    .verify(request(&t.applicant_id, None))
                    .await
                    .expect("verify")
                    .into_inner()
                    .report
                    .expect("report");
                (i, r)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut verdicts = BTreeSet::new();
    let mut sql_facts = 0;
    for (i, report) in &reports {
        assert_matches_truth(report, &truths[*i]);
        verdicts.insert(report.verdict);
        for s in ["housing-management", "traffic-police", "agriculture"] {
            sql_facts += source(report, s).fact_count;
        }
    }
    assert_eq!(reports.len(), 120);
    assert!(verdicts.len() >= 3, "verdicts {verdicts:?}");
    assert!(sql_facts > 0, "the views held records of these households");
    a.stop().await;
    b.stop().await;
    agencies.stop().await;
    pg.drop_all().await.unwrap();
    maria.drop_all().await.unwrap();
}

/// Makes the Python adapter fail on purpose, through its fault file.
struct FaultFile(std::path::PathBuf);

#[async_trait::async_trait]
impl conformance::FaultInjector for FaultFile {
    async fn inject(&self, fault: conformance::Fault) -> Result<(), String> {
        let word = match fault {
            conformance::Fault::Unavailable => "unavailable",
            conformance::Fault::Internal => "internal",
            conformance::Fault::Hang => "hang",
        };
        std::fs::write(&self.0, word).map_err(|e| e.to_string())
    }

    async fn clear(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}

/// The proof that a department needs no Rust: the example adapter in
/// Python (grpcio, stubs generated from proto/ when it starts) passes the
/// conformance kit, and a broker reports its facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_passes_the_kit() {
    use tokio::io::AsyncBufReadExt;

    const SOURCE: &str = "disabled-federation";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/tools (it installs grpcio into .venv)",
        python.display()
    );
    let today = china_today();
    let pop = population(300, &today);
    let dir = tempfile::tempdir().unwrap();
    // The department's register, exported from its system.
    let mut csv = String::from("record_no,id_no,category,grade,allowance_yuan\n");
    let ts = prost_types::Timestamp::default();
    for h in pop.households() {
        for p in h.members() {
            for f in pop.facts_for(SOURCE, p.id(), ts) {
                let Some(Value::Disability(d)) = f.value else {
                    panic!("a disability certificate")
                };
                csv.push_str(&format!(
                    "{},{},{},{},{}\n",
                    f.record_id,
                    p.id(),
                    d.category,
                    d.grade,
                    hedui_proto::yuan(d.monthly_allowance_fen)
                ));
            }
        }
    }
    let data = dir.path().join("register.csv");
    std::fs::write(&data, csv).unwrap();
    let fault_file = dir.path().join("fault");
    let mut child = tokio::process::Command::new(&python)
        .arg(root.join("adapters/examples/python/adapter.py"))
        .arg("--proto")
        .arg(root.join("proto"))
        .arg("--data")
        .arg(&data)
        .arg("--fault-file")
        .arg(&fault_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the Python adapter gets ready in a minute")
        .unwrap()
        .expect("the Python adapter prints its ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let endpoint = format!("http://{}", ready["listening"].as_str().unwrap());
    let entry = format!(
        "[[sources]]\nid = \"{SOURCE}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"{endpoint}\"\n"
    );
    let spec = Catalog::dachuan().get(SOURCE).unwrap().clone();
    let f = fixtures(&pop, SOURCE, 10);
    assert!(!f.known.is_empty());
    let report = conformance::run(
        adapter_of(&entry, &spec),
        &spec,
        &f,
        Some(&FaultFile(fault_file)),
        &Options::default(),
    )
    .await;
    assert!(report.passed(), "{report}");
    let Some(conformance::Outcome::Passed(t)) = report.outcome("typed errors") else {
        panic!("{report}")
    };
    assert!(
        t.contains("Unavailable came back as UNAVAILABLE"),
        "{report}"
    );

    // And a broker reports what it answers.
    let agencies = AgencyProcess::start(300, &today, &[]).await.unwrap();
    let broker = BrokerProcess::start(
        &agencies.sources(&[(SOURCE.to_owned(), entry)].into(), &[]),
        &[],
    )
    .await
    .unwrap();
    let person = &f.known[0].0;
    let household = pop.household_of(person).unwrap();
    let report = verify(&broker, household.applicant().id(), None).await;
    assert_matches_truth(&report, &household.truth(&TruthPolicy::default()));
    assert_eq!(source(&report, SOURCE).status, SourceStatus::Ok as i32);
    broker.stop().await;
    agencies.stop().await;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// `hedui adapter check` in plain words: all passes for the bank over its
/// REST API, and a wrong code table fails with the record that differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_check_command_speaks_plainly() {
    const HOUSEHOLDS: usize = 300;
    let today = china_today();
    let agencies = AgencyProcess::start(HOUSEHOLDS, &today, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let entry = agencies.http_entry("rural-commercial-bank").unwrap();
    let run = |entry: String| {
        let config = dir.path().join(format!("{}.toml", unique_name("cfg")));
        std::fs::write(
            &config,
            agencies.sources(&[("rural-commercial-bank".to_owned(), entry)].into(), &[]),
        )
        .unwrap();
        let households = HOUSEHOLDS.to_string();
        let seed = SEED.to_string();
        let args = [
            "adapter",
            "check",
            "rural-commercial-bank",
            "--config",
            config.to_str().unwrap(),
            "--seed",
            &seed,
            "--households",
            &households,
            "--today",
            &today,
            "--control",
            &agencies.control,
        ]
        .map(str::to_owned);
        async move {
            let out = tokio::process::Command::new(hedui_tests::workspace_bin("hedui"))
                .args(args)
                .output()
                .await
                .unwrap();
            (out.status.code(), String::from_utf8(out.stdout).unwrap())
        }
    };
    let (code, text) = run(entry.clone()).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("7 checks: 7 passed, 0 failed, 0 skipped"),
        "{text}"
    );
    assert!(
        text.contains("Unavailable came back as UNAVAILABLE"),
        "{text}"
    );
    // The bank's product 01 read as a fund, not a deposit.
    let wrong = entry.replace("\"01\" = \"DEPOSIT\"", "\"01\" = \"FUND\"");
    assert_ne!(wrong, entry);
    let (code, text) = run(wrong).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  known persons"), "{text}");
    assert!(text.contains("differs: expected"), "{text}");
    agencies.stop().await;
}
