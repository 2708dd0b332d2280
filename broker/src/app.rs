//! Assembling a broker from configuration, and the demo (the main job on
//! embedded defaults).

use std::{net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use hedui_adapters::{catalog::Catalog, registry::Registry};
use hedui_mock_agencies::{
    FaultConfig, GroundTruth, Population, SimulatedAgencies, SimulatedFactory, TruthPolicy,
    sim::SimulatedParams,
};
use hedui_proto::v1::{
    Purpose, VerificationRequest, VerifyRequest,
    verification_service_client::VerificationServiceClient,
};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    render,
    report::PolicySet,
    server,
    store::ReportStore,
    verify::{Deadlines, SourceHandle, Verifier},
};

/// A broker assembled from configuration.
#[derive(Debug)]
pub struct Built {
    /// The verifier every request shares.
    pub verifier: Arc<Verifier>,
    /// Households under management.
    pub watch: Arc<crate::watch::Watch>,
    /// Handles of the sources on the `simulated` transport (counters and
    /// fault injection); empty when none is simulated.
    pub simulated: SimulatedAgencies,
}

/// The transports this broker knows: those of the adapter SDK (`grpc`,
/// `http`, `sql`, `peer`) and the simulated agencies (`simulated`).
pub fn registry() -> (Registry, SimulatedAgencies) {
    registry_for(hedui_adapters::peer::DEFAULT_BROKER_ID)
}

/// The transports of a broker whose id in a federation is `broker_id`
/// (sent by its `peer` sources so that loops are found).
pub fn registry_for(broker_id: &str) -> (Registry, SimulatedAgencies) {
    let mut registry = Registry::with_builtin();
    registry.register(Box::new(hedui_adapters::peer::PeerFactory::new(broker_id)));
    let factory = SimulatedFactory::new();
    let agencies = factory.agencies();
    registry.register(Box::new(factory));
    (registry, agencies)
}

/// Builds the broker a configuration describes: adapters for its sources,
/// the policies, the report store.
///
/// # Errors
/// When a source cannot be built (naming it), a policy file is wrong, or
/// the store cannot be opened.
pub async fn build(config: &Config) -> anyhow::Result<Built> {
    build_as(config, hedui_adapters::peer::DEFAULT_BROKER_ID).await
}

/// [`build`] for a broker whose id in a federation is `broker_id`.
///
/// # Errors
/// As [`build`].
pub async fn build_as(config: &Config, broker_id: &str) -> anyhow::Result<Built> {
    let (registry, simulated) = registry_for(broker_id);
    let catalog = Catalog::dachuan();
    let sources = config
        .resolve_sources(&catalog)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let cache = config
        .cache
        .enabled
        .then(|| crate::guard::AnswerCache::new(config.cache.max_bytes));
    let mut handles = Vec::with_capacity(sources.len());
    for s in sources {
        let adapter = registry
            .build(&s.spec, &s.transport)
            .with_context(|| format!("source {:?}", s.spec.id))?;
        let settings = crate::guard::config::settings_for(
            &config.cache,
            &config.limits,
            &s.spec.id,
            &s.spec.fact_kinds,
        );
        handles.push(SourceHandle::new(s.spec, adapter, settings, cache.clone()));
    }
    let policies = match &config.policy.dir {
        Some(dir) => PolicySet::load_dir(dir)?,
        None => PolicySet::embedded(),
    };
    let store = ReportStore::open(&config.store.path)
        .await
        .with_context(|| format!("store.path {}", config.store.path.display()))?;
    let deadlines = Deadlines {
        default: Duration::from_millis(config.verification.default_deadline_ms),
        max: Duration::from_millis(config.verification.max_deadline_ms),
    };
    let audit_config = config.audit_config();
    let audit = crate::audit::AuditLog::open(&audit_config)
        .await
        .with_context(|| format!("audit log ({})", audit_config.location()))?;
    audit
        .record(crate::audit::configuration_entry(config))
        .await?;
    let ids: Vec<String> = handles.iter().map(|h| h.spec.id.clone()).collect();
    let allowed = config
        .allowed_sources(&ids)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let verifier =
        Arc::new(Verifier::new(handles, policies, store, audit, deadlines).with_purposes(allowed));
    verifier
        .close_abandoned()
        .await
        .context("closing reports left pending by an earlier run")?;
    let watch = Arc::new(crate::watch::Watch::new(verifier.clone()));
    let any_simulated = !simulated.source_ids().is_empty();
    match config.changes.transport.as_deref() {
        Some("nats") => {
            crate::watch::feed::run_nats(watch.clone(), &config.changes).await?;
        }
        Some("simulated") | None if any_simulated => {
            tokio::spawn(watch.clone().run_channel(simulated.subscribe()));
        }
        Some("simulated") => anyhow::bail!(
            "changes.transport: \"simulated\" needs sources on the simulated transport; none is"
        ),
        _ => {}
    }
    Ok(Built {
        verifier,
        watch,
        simulated,
    })
}

/// What `hedui demo` runs with.
pub struct DemoOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// SQLite file for reports.
    pub store: PathBuf,
    /// Households in the simulated population.
    pub households: usize,
    /// Keep serving after the reports are printed.
    pub serve: bool,
    /// Development certificates (minted when missing) to serve with mTLS;
    /// `None` serves plaintext.
    pub certs: Option<PathBuf>,
    /// Completes when the demo should stop serving.
    pub shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for DemoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoOptions")
            .field("listen", &self.listen)
            .field("store", &self.store)
            .field("households", &self.households)
            .field("serve", &self.serve)
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

/// The main job on embedded defaults: the broker with in-process simulated
/// agencies and a SQLite report store, a few chosen households verified
/// over its own gRPC API and printed, then serving until `shutdown`.
///
/// # Errors
/// When the broker cannot start or a verification fails.
pub async fn demo(options: DemoOptions) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.listen = options.listen;
    config.store.path = options.store.clone();
    config.simulation.insert(
        "households".into(),
        toml::Value::Integer(options.households as i64),
    );
    let built = build(&config).await?;
    // Certificates are minted once the rest of the demo's settings have
    // been found good: a wrong argument leaves nothing behind.
    if let Some(dir) = &options.certs {
        let file = dir.join("hedui.toml");
        if !file.exists() {
            crate::security::certs::dev(dir, false).map_err(anyhow::Error::msg)?;
            println!("minted development certificates in {}", dir.display());
        }
        let minted = Config::load(&file)?;
        crate::security::tls::server_config(minted.tls.as_ref().context("no [tls] in it")?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        config.tls = minted.tls;
        config.clients = minted.clients;
        config.quotas = minted.quotas;
    }
    let security = server::Listener::from_config(
        &config,
        built.verifier.audit().clone(),
        options.certs.is_none(),
    )
    .map_err(anyhow::Error::msg)?;

    // The same population the simulated sources answer from.
    let params: SimulatedParams =
        hedui_adapters::registry::parse_params("simulated", &config.simulation)?;
    let population = Population::shared(
        &params
            .population_config()
            .map_err(|e| anyhow::anyhow!("simulation: {e}"))?,
    );
    let picks = population
        .demo_picks(&TruthPolicy::dachuan_2018())
        .context(
            "the simulated population has no household for every demo case; try more --households",
        )?;
    // The bank does not answer for one household: it hangs until the
    // deadline, as a rural bank's batch system may.
    built.simulated.set_faults(
        "rural-commercial-bank",
        FaultConfig {
            hang_persons: picks.bank_outage.member_ids.iter().cloned().collect(),
            ..FaultConfig::none()
        },
    )?;

    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen)", options.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        Arc::clone(&built.verifier),
        Arc::clone(&built.watch),
        listener,
        security,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let connect = match &options.certs {
        Some(dir) => crate::client::Connect {
            certs: dir.clone(),
            ..crate::client::Connect::plaintext(format!("https://{addr}"))
        },
        None => crate::client::Connect::plaintext(format!("http://{addr}")),
    };
    let mut client = VerificationServiceClient::new(connect.channel().await?);
    let cases: [(&str, &GroundTruth); 4] = [
        ("an eligible household", &picks.pass),
        ("a household over the income line", &picks.income_fail),
        ("a household with a car", &picks.car_fail),
        ("a household whose bank does not answer", &picks.bank_outage),
    ];
    let mut ids = Vec::new();
    for (n, (what, truth)) in cases.iter().enumerate() {
        let request = VerificationRequest {
            applicant_id: truth.applicant_id.clone(),
            consent_reference: format!("SQ-DEMO-{:04}", n + 1),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "demo-case-worker".into(),
            deadline: prost_types::Duration::try_from(Duration::from_secs(3)).ok(),
            max_age: None,
            declared_member_ids: Vec::new(),
        };
        let report = client
            .verify(VerifyRequest {
                request: Some(request),
            })
            .await
            .map_err(|s| anyhow::anyhow!("verify: {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .report
            .context("no report")?;
        println!("\n{}. {what}\n", n + 1);
        print!("{}", render::text(&report));
        ids.push((what, truth.applicant_id.clone(), report.report_id.clone()));
    }

    println!(
        "\nhedui is serving on {addr} (reports in {}).",
        options.store.display()
    );
    println!("applicants of the simulated population you can verify:");
    for (what, applicant, report_id) in &ids {
        println!("  {applicant}  {what} (report {report_id})");
    }
    if let Some((_, applicant, _)) = ids.first() {
        println!(
            "try:\n  cargo run --release -p hedui -- verify {applicant} --consent SQ-2026-000123 --operator case-worker-07 --server {}{}",
            connect.server,
            options
                .certs
                .as_ref()
                .map(|d| format!(" --certs {}", d.display()))
                .unwrap_or_default()
        );
    }
    if options.serve {
        println!("press Ctrl-C to stop.");
        options.shutdown.await;
    }
    let _ = stop_tx.send(());
    server.await??;
    built.verifier.store().close().await;
    built.verifier.audit().close().await;
    Ok(())
}

// === federation and the conformance kit (issue 3) ===

/// Serves `hedui.v1.AdapterService` over the broker's own sources, for its
/// peers (the `peer` transport), on `listener` until `shutdown` completes.
///
/// # Errors
/// When the server fails.
pub async fn serve_federation(
    verifier: Arc<Verifier>,
    broker_id: String,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let log = Arc::new(FederationLog {
        audit: verifier.audit().clone(),
    });
    let server = hedui_adapters::peer::PeerServer::new(
        &broker_id,
        verifier.sources().iter().map(|s| {
            let guarded: Arc<dyn hedui_adapters::Adapter> = s.guard.clone();
            (s.spec.clone(), guarded)
        }),
    )
    .with_log(log);
    tracing::info!(broker = %broker_id, addr = ?listener.local_addr().ok(), "serving federation (hedui.v1.AdapterService)");
    tonic::transport::Server::builder()
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// The audit log of the lookups served to peer brokers: one
/// `federation_lookup` record per lookup, committed before the answer
/// leaves; no source is asked when the log cannot take records.
#[derive(Debug)]
struct FederationLog {
    audit: crate::audit::AuditLog,
}

#[async_trait::async_trait]
impl hedui_adapters::peer::LookupLog for FederationLog {
    async fn ready(&self) -> Result<(), String> {
        self.audit.ready().await.map_err(|e| e.to_string())
    }

    async fn record(&self, lookup: hedui_adapters::peer::ServedLookup<'_>) -> Result<(), String> {
        use crate::audit::{Entry, Kind, SourceEntry};
        use prost::Message;
        let key = self.audit.subject_key();
        let request = lookup.request;
        let mut entry = Entry::new(Kind::FederationLookup);
        entry.request_id = request.request_id.clone();
        // The path ends with this broker; the one before asked.
        let via = &lookup.path[..lookup.path.len().saturating_sub(1)];
        let asker = via.last().map_or("", String::as_str);
        entry.client = match lookup.remote {
            Some(addr) if !asker.is_empty() => format!("broker:{asker}@{}", addr.ip()),
            Some(addr) => addr.ip().to_string(),
            None if !asker.is_empty() => format!("broker:{asker}"),
            None => "anonymous".into(),
        };
        entry.purpose = crate::verify::purpose_name(request.purpose);
        entry.consent_reference = request.consent_reference.clone();
        entry.subjects = request
            .person_ids
            .iter()
            .map(|id| key.subject(id))
            .collect();
        let (status, facts) = match lookup.outcome {
            Ok(resp) => {
                entry.report_digest = self.audit.digest(&resp.encode_to_vec());
                let facts: usize = resp.answers.iter().map(|a| a.facts.len()).sum();
                (
                    if facts == 0 { "no_record" } else { "ok" }.to_owned(),
                    facts,
                )
            }
            Err(status) => {
                entry.outcome = snake_case(&format!("{:?}", status.code()));
                entry.detail = status.message().chars().take(200).collect();
                ("error".to_owned(), 0)
            }
        };
        entry.sources = vec![SourceEntry {
            id: request.source_id.clone(),
            status,
            cache_hit: false,
            facts: u32::try_from(facts).unwrap_or(u32::MAX),
        }];
        if !via.is_empty() {
            let path = format!("path {}", lookup.path.join(">"));
            entry.detail = if entry.detail.is_empty() {
                path
            } else {
                format!("{path}; {}", entry.detail)
            };
        }
        entry.latency_ms = u64::try_from(lookup.latency.as_millis()).unwrap_or(u64::MAX);
        self.audit
            .record(entry)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `DeadlineExceeded` → `deadline_exceeded`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// What `hedui adapter check` checks.
#[derive(Debug, Clone)]
pub struct AdapterCheck {
    /// The source to check, as configured.
    pub source_id: String,
    /// The test population's seed, size and day; unset ones come from the
    /// configuration's `[simulation]`, then the defaults.
    pub seed: Option<u64>,
    /// Households of the test population.
    pub households: Option<usize>,
    /// The test population's today.
    pub today: Option<chrono::NaiveDate>,
    /// Control endpoint of `mock-agencies serve`, to inject faults.
    pub control: Option<String>,
    /// Known test persons to compare.
    pub known: usize,
}

/// Runs the conformance kit against one configured source, with the
/// simulated population as its test data.
///
/// # Errors
/// When the source is not configured or cannot be built.
pub async fn adapter_check(
    config: &Config,
    check: &AdapterCheck,
) -> anyhow::Result<hedui_adapters::conformance::ConformanceReport> {
    use hedui_adapters::conformance::{FaultInjector, Options, run};
    use hedui_mock_agencies::kit::{ControlInjector, SimulatedInjector, fixtures};

    let sources = config
        .resolve_sources(&Catalog::dachuan())
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let Some(source) = sources.iter().find(|s| s.spec.id == check.source_id) else {
        anyhow::bail!(
            "source {:?} is not configured; configured: {}",
            check.source_id,
            sources
                .iter()
                .map(|s| s.spec.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let (registry, simulated) = registry();
    let adapter = registry
        .build(&source.spec, &source.transport)
        .with_context(|| format!("source {:?}", source.spec.id))?;
    let mut simulation = config.simulation.clone();
    if source.transport.kind == "simulated" {
        simulation.extend(source.transport.params.clone());
    }
    let params: SimulatedParams = hedui_adapters::registry::parse_params("simulated", &simulation)?;
    let mut population = params
        .population_config()
        .map_err(|e| anyhow::anyhow!("simulation: {e}"))?;
    if let Some(s) = check.seed {
        population.seed = s;
    }
    if let Some(h) = check.households {
        population.households = h;
    }
    if let Some(t) = check.today {
        population.today = t;
    }
    let pop = tokio::task::spawn_blocking(move || Population::shared(&population)).await?;
    let fixtures = fixtures(&pop, &source.spec.id, check.known);
    let injector: Option<Box<dyn FaultInjector>> =
        match (&check.control, simulated.get(&source.spec.id)) {
            (_, Some(control)) => Some(Box::new(SimulatedInjector(control))),
            (Some(endpoint), None) => Some(Box::new(
                ControlInjector::new(endpoint, &source.spec.id).map_err(anyhow::Error::msg)?,
            )),
            (None, None) => None,
        };
    Ok(run(
        adapter,
        &source.spec,
        &fixtures,
        injector.as_deref(),
        &Options::default(),
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A purpose restricted to some sources asks only those, whether or
    /// not the cache holds the others' answers for the same household
    /// (filled by a verification for another purpose), and what needs the
    /// others is inconclusive.
    #[tokio::test]
    async fn a_restricted_purpose_asks_only_its_sources_cache_or_not() {
        use hedui_mock_agencies::{Population, TruthPolicy};
        use hedui_proto::v1::{Outcome, Purpose, SourceStatus, VerificationRequest};
        let config = Config::parse(
            "[store]\npath = ':memory:'\n[changes]\ntransport = 'none'\n\
             [simulation]\nhouseholds = 30\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n\
             [purposes.medical_assistance]\n\
             sources = ['public-security', 'medical-insurance', 'civil-affairs', 'disabled-federation']\n",
            "p.toml",
        )
        .unwrap();
        let built = build(&config).await.unwrap();
        let applicant = Population::generate(&hedui_mock_agencies::population::PopulationConfig {
            seed: hedui_mock_agencies::population::DEFAULT_SEED,
            households: 30,
            today: crate::time::china_date(),
        })
        .truth(&TruthPolicy::default())[2]
            .applicant_id
            .clone();
        let caller = crate::verify::Caller::new("p");
        let verify = |purpose: Purpose| {
            let v = built.verifier.clone();
            let caller = caller.clone();
            let applicant = applicant.clone();
            async move {
                let r = VerificationRequest {
                    applicant_id: applicant,
                    consent_reference: "SQ-1".into(),
                    purpose: purpose as i32,
                    operator_id: "op".into(),
                    ..Default::default()
                };
                v.run(v.validate(Some(r), None).unwrap(), &caller, None)
                    .await
                    .unwrap()
            }
        };
        // Every source asked, and cached, for a Dibao application.
        let full = verify(Purpose::DibaoApplication).await;
        assert!(
            full.sources
                .iter()
                .all(|s| s.status() != SourceStatus::NotQueried)
        );
        built.simulated.reset_stats();
        let medical = verify(Purpose::MedicalAssistance).await;
        let allowed = [
            "public-security",
            "medical-insurance",
            "civil-affairs",
            "disabled-federation",
        ];
        for s in &medical.sources {
            if allowed.contains(&s.source_id.as_str()) {
                assert_ne!(s.status(), SourceStatus::NotQueried, "{}", s.source_id);
                assert!(s.from_cache, "{} from the cache", s.source_id);
            } else {
                assert_eq!(s.status(), SourceStatus::NotQueried, "{}", s.source_id);
                assert!(
                    s.detail.contains("purposes.medical_assistance"),
                    "{}",
                    s.detail
                );
                assert_eq!(s.fact_count, 0);
            }
        }
        // Nothing of the others reaches the report, from the cache or not.
        let items = medical
            .income
            .iter()
            .flat_map(|i| i.items.iter().filter_map(|x| x.provenance.as_ref()))
            .chain(
                medical
                    .assets
                    .iter()
                    .flat_map(|a| a.items.iter().filter_map(|x| x.provenance.as_ref())),
            );
        for p in items {
            assert!(allowed.contains(&p.source_id.as_str()), "{}", p.source_id);
        }
        let r2 = medical.indicators.iter().find(|i| i.id == "R2").unwrap();
        assert_eq!(r2.outcome, Outcome::Inconclusive as i32);
        for id in ["rural-commercial-bank", "traffic-police", "employment"] {
            assert_eq!(built.simulated.stats_of(id).unwrap().lookups, 0, "{id}");
        }
        // A wrong purpose name or source is named.
        let e = Config::parse(
            "[purposes.holiday]\nsources = ['public-security']\n",
            "p.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("purposes.holiday"), "{e}");
        let e = Config::parse(
            "[purposes.dibao_review]\nsources = ['employment']\n",
            "p.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("purposes.dibao_review.sources"), "{e}");
    }

    /// Every configuration shipped under deploy/ parses and builds.
    #[tokio::test]
    async fn shipped_configurations_build() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let mut config = Config::load(&path).unwrap();
                config.store.path = ":memory:".into();
                config.audit.path = Some(":memory:".into());
                build(&config)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "found {n} configurations");
    }

    #[tokio::test]
    async fn unknown_transport_names_the_source() {
        let config = Config::parse(
            "[[sources]]\nid = 'public-security'\ntransport = { type = 'fax' }\n",
            "t.toml",
        )
        .unwrap();
        let e = build(&config).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("public-security") && msg.contains("fax"),
            "{msg}"
        );
        assert!(msg.contains("grpc, http, peer, simulated, sql"), "{msg}");
    }
}
