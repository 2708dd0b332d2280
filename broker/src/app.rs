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
    /// What a configuration reload needs.
    pub reloader: Reloader,
}

/// Reloads what can change while the broker runs (`SIGHUP`): the
/// sources, their limits and cache lifetimes, the policies, what each
/// purpose may see, consent, the clients and their quotas. The listener,
/// stores, audit log, TLS, deadlines, change feed, telemetry and the
/// cache's size take a restart; a new configuration that changes them is
/// refused whole.
pub struct Reloader {
    registry: Registry,
    cache: Option<crate::guard::AnswerCache>,
    /// The configuration in force and, per source id, what its guard was
    /// built from.
    current: std::sync::Mutex<(Config, std::collections::BTreeMap<String, String>)>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// What a source's guard is built from: a reload keeps the guard (its
/// breaker, limiter, counters) when this is unchanged.
fn fingerprint(
    s: &crate::config::ResolvedSource,
    settings: &crate::guard::config::GuardSettings,
) -> String {
    format!("{:?}|{:?}|{settings:?}", s.spec, s.transport)
}

impl Reloader {
    /// Reads the configuration again (file, then `HEDUI__` variables) and
    /// applies it ([`Reloader::reload`]); a refusal is recorded in the
    /// audit log too.
    ///
    /// # Errors
    /// As [`Reloader::reload`], or the configuration does not load.
    pub async fn reload_from(
        &self,
        verifier: &Verifier,
        gate: Option<&crate::security::Gate>,
        path: Option<&std::path::Path>,
    ) -> Result<String, String> {
        let result = match Config::load_layered(path) {
            Ok(new) => self.reload(verifier, gate, new).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            let mut entry = crate::audit::Entry::new(crate::audit::Kind::Configuration);
            entry.outcome = "refused".into();
            entry.detail = format!("reload refused: {e}").chars().take(300).collect();
            let _ = verifier.audit().record(entry).await;
        }
        result
    }

    /// Applies `new` to the running broker: checks it, records it in the
    /// audit log, then swaps it in. Verifications under way finish with
    /// the setup they started with. Returns what changed.
    ///
    /// # Errors
    /// What is wrong or cannot be reloaded; nothing was changed then.
    pub async fn reload(
        &self,
        verifier: &Verifier,
        gate: Option<&crate::security::Gate>,
        new: Config,
    ) -> Result<String, String> {
        let (old, old_prints) = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fixed: [(&str, String, String); 9] = [
            (
                "server",
                format!("{:?}", old.server),
                format!("{:?}", new.server),
            ),
            (
                "store",
                format!("{:?}", old.store),
                format!("{:?}", new.store),
            ),
            (
                "audit",
                format!("{:?}", old.audit),
                format!("{:?}", new.audit),
            ),
            ("tls", format!("{:?}", old.tls), format!("{:?}", new.tls)),
            (
                "verification",
                format!("{:?}", old.verification),
                format!("{:?}", new.verification),
            ),
            (
                "changes",
                format!("{:?}", old.changes),
                format!("{:?}", new.changes),
            ),
            (
                "telemetry",
                format!("{:?}", old.telemetry),
                format!("{:?}", new.telemetry),
            ),
            ("ops", format!("{:?}", old.ops), format!("{:?}", new.ops)),
            (
                "cache.enabled / cache.max_bytes",
                format!("{:?}", (old.cache.enabled, old.cache.max_bytes)),
                format!("{:?}", (new.cache.enabled, new.cache.max_bytes)),
            ),
        ];
        for (key, was, is) in &fixed {
            if was != is {
                return Err(format!(
                    "{key}: changed, and it takes a restart to apply; nothing was reloaded"
                ));
            }
        }
        let resolved = new
            .resolve_sources(&Catalog::dachuan())
            .map_err(|e| format!("configuration: {e}"))?;
        let running = verifier.sources();
        let mut handles = Vec::with_capacity(resolved.len());
        let mut prints = std::collections::BTreeMap::new();
        let (mut kept, mut rebuilt, mut added) = (0, 0, 0);
        for s in resolved {
            let mut settings = crate::guard::config::settings_for(
                &new.cache,
                &new.limits,
                &s.spec.id,
                &s.spec.fact_kinds,
            );
            settings.transport.clone_from(&s.transport.kind);
            let print = fingerprint(&s, &settings);
            let same = old_prints.get(&s.spec.id) == Some(&print);
            let handle = match running.iter().find(|h| h.spec.id == s.spec.id) {
                Some(h) if same => {
                    kept += 1;
                    h.clone()
                }
                existing => {
                    if existing.is_some() {
                        rebuilt += 1;
                    } else {
                        added += 1;
                    }
                    let adapter = self
                        .registry
                        .build(&s.spec, &s.transport)
                        .map_err(|e| format!("source {:?}: {e}", s.spec.id))?;
                    SourceHandle::new(s.spec.clone(), adapter, settings, self.cache.clone())
                }
            };
            prints.insert(s.spec.id.clone(), print);
            handles.push(handle);
        }
        let removed = running
            .iter()
            .filter(|h| !prints.contains_key(&h.spec.id))
            .count();
        let policies = match &new.policy.dir {
            Some(dir) => PolicySet::load_dir(dir).map_err(|e| format!("policy.dir: {e}"))?,
            None => PolicySet::embedded(),
        };
        let specs: Vec<_> = handles.iter().map(|h| (*h.spec).clone()).collect();
        let disclosures = new
            .disclosures(&specs)
            .map_err(|e| format!("configuration: {e}"))?;
        let summary = format!(
            "sources: {kept} kept, {rebuilt} rebuilt, {added} added, {removed} removed; {} restricted purposes; consent required: {}; {} clients",
            disclosures.len(),
            new.consent.required,
            new.clients.len()
        );
        // Recorded before it takes effect: a change the log cannot take is
        // not made.
        let mut entry = crate::audit::configuration_entry(&new);
        entry.detail = format!("reloaded: {summary}");
        verifier.audit().record(entry).await.map_err(|e| {
            format!("the audit log cannot take the reload ({e}); nothing was reloaded")
        })?;
        verifier.replace_setup(crate::verify::Setup::new(
            handles,
            policies,
            disclosures,
            new.consent.required,
        ));
        if let Some(gate) = gate {
            gate.reconfigure(&new.clients, new.quotas);
        }
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (new, prints);
        Ok(summary)
    }
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
    let mut prints = std::collections::BTreeMap::new();
    for s in sources {
        let adapter = registry
            .build(&s.spec, &s.transport)
            .with_context(|| format!("source {:?}", s.spec.id))?;
        let mut settings = crate::guard::config::settings_for(
            &config.cache,
            &config.limits,
            &s.spec.id,
            &s.spec.fact_kinds,
        );
        settings.transport.clone_from(&s.transport.kind);
        prints.insert(s.spec.id.clone(), fingerprint(&s, &settings));
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
    let specs: Vec<_> = handles.iter().map(|h| (*h.spec).clone()).collect();
    let disclosures = config
        .disclosures(&specs)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let verifier = Arc::new(
        Verifier::new(handles, policies, store, audit, deadlines)
            .with_purposes(disclosures)
            .with_consent_required(config.consent.required),
    );
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
        reloader: Reloader {
            registry,
            cache,
            current: std::sync::Mutex::new((config.clone(), prints)),
        },
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
    auth: hedui_adapters::server::ServerAuth,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let log = Arc::new(FederationLog {
        audit: verifier.audit().clone(),
    });
    let server = hedui_adapters::peer::PeerServer::new(
        &broker_id,
        verifier.sources().iter().map(|s| {
            let bound: Arc<dyn hedui_adapters::Adapter> = Arc::new(PurposeBound {
                spec: s.spec.clone(),
                inner: s.guard.clone(),
                verifier: verifier.clone(),
            });
            ((*s.spec).clone(), bound)
        }),
    )
    .with_log(log);
    tracing::info!(broker = %broker_id, addr = ?listener.local_addr().ok(), "serving federation (hedui.v1.AdapterService)");
    auth.server()?
        .add_service(auth.wrap(server.into_service()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A source as a peer broker may ask it: under the `[purposes]` policy of
/// the lookup's purpose, as this broker's own verifications are. A source
/// the purpose may not ask refuses the lookup (naming the key); any other
/// is asked only for the kinds the purpose may see, and facts of other
/// kinds are dropped from its answer. Kinds the purpose sees as totals go
/// to the peer whole: the asking broker folds them (it needs the accounts
/// to take an account reported twice once) under its own policy.
#[derive(Debug)]
struct PurposeBound {
    spec: Arc<hedui_adapters::catalog::SourceSpec>,
    inner: Arc<dyn hedui_adapters::Adapter>,
    verifier: Arc<Verifier>,
}

#[async_trait::async_trait]
impl hedui_adapters::Adapter for PurposeBound {
    fn source_id(&self) -> &str {
        self.inner.source_id()
    }

    async fn lookup(
        &self,
        ctx: &hedui_adapters::LookupContext,
        request: &hedui_proto::v1::LookupRequest,
    ) -> Result<hedui_proto::v1::LookupResponse, hedui_adapters::AdapterError> {
        use hedui_adapters::AdapterError;
        let Some(d) = self.verifier.disclosure(request.purpose) else {
            return self.inner.lookup(ctx, request).await;
        };
        if let Some(why) = d.not_asked(&self.spec) {
            return Err(AdapterError::Rejected(why));
        }
        let allowed: Vec<i32> = d
            .narrowed(&self.spec)
            .fact_kinds
            .iter()
            .map(|k| *k as i32)
            .collect();
        let mut request = request.clone();
        request.fact_kinds = if request.fact_kinds.is_empty() {
            allowed.clone()
        } else {
            request
                .fact_kinds
                .iter()
                .copied()
                .filter(|k| allowed.contains(k))
                .collect()
        };
        if request.fact_kinds.is_empty() {
            let name = &d.purpose;
            return Err(AdapterError::Rejected(format!(
                "the purpose {name} may see none of the fact kinds asked for (purposes.{name}.fact_kinds)"
            )));
        }
        let mut response = self.inner.lookup(ctx, &request).await?;
        for a in &mut response.answers {
            a.facts.retain(|f| {
                f.value
                    .as_ref()
                    .is_some_and(|v| allowed.contains(&(v.kind() as i32)))
            });
        }
        Ok(response)
    }

    async fn check(&self) -> Result<hedui_proto::v1::CheckResponse, hedui_adapters::AdapterError> {
        self.inner.check().await
    }
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

    /// The shipped purpose policy loads, and says what its comments say:
    /// education assistance never sees bank deposits nor asks a bank,
    /// temporary assistance sees bank holdings as totals only, medical
    /// assistance asks four departments.
    #[test]
    fn the_shipped_purpose_policy_loads() {
        use hedui_proto::v1::FactKind;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/purposes.toml"
        );
        let config = Config::load(std::path::Path::new(path)).unwrap();
        let catalog = Catalog::dachuan();
        let specs: Vec<_> = catalog.iter().cloned().collect();
        let d = config.disclosures(&specs).unwrap();
        let education = &d[&(Purpose::EducationAssistance as i32)];
        assert!(!education.allows_kind(FactKind::FinancialAccount));
        assert!(!education.allows_kind(FactKind::AccountOutflow));
        for bank in ["rural-commercial-bank", "finance-office"] {
            let why = education.not_asked(catalog.get(bank).unwrap()).unwrap();
            assert!(
                why.contains("purposes.education_assistance.fact_kinds"),
                "{why}"
            );
        }
        assert!(
            education
                .not_asked(catalog.get("education").unwrap())
                .is_none()
        );
        let temporary = &d[&(Purpose::TemporaryAssistance as i32)];
        assert_eq!(
            temporary.aggregate,
            vec![FactKind::FinancialAccount, FactKind::AccountOutflow]
        );
        assert!(temporary.sources.is_none() && temporary.fact_kinds.is_none());
        let medical = &d[&(Purpose::MedicalAssistance as i32)];
        assert_eq!(medical.sources.as_ref().map(Vec::len), Some(4));
        // The Dibao purposes see everything.
        assert!(!d.contains_key(&(Purpose::DibaoApplication as i32)));
    }

    /// Bad `[purposes]` tables are refused at load, naming the key and
    /// what is allowed.
    #[test]
    fn bad_purpose_tables_name_the_key() {
        let refused = |text: &str| Config::parse(text, "p.toml").unwrap_err().to_string();
        let e = refused(
            "[purposes.education_assistance]\nfact_kinds = ['household_registration', 'bank_deposit']\n",
        );
        assert!(
            e.starts_with("p.toml: purposes.education_assistance.fact_kinds[1]: \"bank_deposit\" is not a fact kind; allowed: household_registration, vehicle,"),
            "{e}"
        );
        let e = refused("[purposes.education_assistance]\nfact_kinds = ['school_enrolment']\n");
        assert!(
            e.contains(
                "purposes.education_assistance.fact_kinds: must include \"household_registration\""
            ),
            "{e}"
        );
        let e = refused("[purposes.holiday]\nfact_kinds = ['household_registration']\n");
        assert!(
            e.contains(
                "purposes.holiday: not a purpose; allowed: dibao_application, dibao_review,"
            ),
            "{e}"
        );
        let e = refused("[purposes.temporary_assistance]\naggregate = ['vehicle']\n");
        assert!(
            e.contains("purposes.temporary_assistance.aggregate[0]: \"vehicle\" cannot be seen as totals; allowed: financial_account, account_outflow"),
            "{e}"
        );
        let e = refused(
            "[purposes.temporary_assistance]\nfact_kinds = ['household_registration']\naggregate = ['financial_account']\n",
        );
        assert!(
            e.contains("purposes.temporary_assistance.aggregate[0]: \"financial_account\" is not in purposes.temporary_assistance.fact_kinds"),
            "{e}"
        );
        let e = refused(
            "[purposes.low_income]\nfact_kinds = ['household_registration', 'vehicle', 'vehicle']\n",
        );
        assert!(
            e.contains("purposes.low_income.fact_kinds[2]: \"vehicle\" appears twice"),
            "{e}"
        );
        let e = refused(
            "[purposes.low_income]\nsources = ['public-security', 'traffic-police']\nfact_kinds = ['household_registration']\n",
        );
        assert!(
            e.contains("purposes.low_income.sources[1]: \"traffic-police\" serves none of purposes.low_income.fact_kinds"),
            "{e}"
        );
        let e = refused("[purposes.low_income]\ncolour = 'red'\n");
        assert!(e.contains("colour"), "{e}");
        // Absent keys restrict nothing; the catalog's upper-case spelling
        // is taken too.
        Config::parse("[purposes.low_income]\n", "p.toml").unwrap();
        Config::parse(
            "[purposes.low_income]\nfact_kinds = ['HOUSEHOLD_REGISTRATION', 'Vehicle']\n",
            "p.toml",
        )
        .unwrap();
    }

    /// splitmix64: the property test's own seeded generator.
    fn mix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random `[purposes.<name>]` table for every purpose: some kinds
    /// (household registration always), sometimes no kind restriction,
    /// sometimes a source list (only sources serving an allowed kind),
    /// some aggregated kinds.
    fn random_purposes(seed: u64) -> String {
        use crate::report::disclosure::{AGGREGATABLE, all_kinds, kind_name};
        use hedui_proto::v1::FactKind;
        let mut st = seed;
        let catalog = Catalog::dachuan();
        let mut out = String::new();
        for p in 1..=7 {
            let name = crate::verify::purpose_name(p);
            let restrict_kinds = !mix(&mut st).is_multiple_of(4);
            let kinds: Vec<FactKind> = all_kinds()
                .into_iter()
                .filter(|k| *k == FactKind::HouseholdRegistration || (mix(&mut st) % 5 < 2))
                .collect();
            let allowed = |k: &FactKind| !restrict_kinds || kinds.contains(k);
            out.push_str(&format!("[purposes.{name}]\n"));
            if restrict_kinds {
                let names: Vec<String> = kinds
                    .iter()
                    .map(|k| format!("{:?}", kind_name(*k)))
                    .collect();
                out.push_str(&format!("fact_kinds = [{}]\n", names.join(", ")));
            }
            if mix(&mut st).is_multiple_of(2) {
                let sources: Vec<String> = catalog
                    .iter()
                    .filter(|s| {
                        s.id == hedui_adapters::catalog::HOUSEHOLD_SOURCE
                            || (s.fact_kinds.iter().any(allowed) && !mix(&mut st).is_multiple_of(3))
                    })
                    .map(|s| format!("{:?}", s.id))
                    .collect();
                out.push_str(&format!("sources = [{}]\n", sources.join(", ")));
            }
            let aggregate: Vec<String> = AGGREGATABLE
                .iter()
                .filter(|k| allowed(k) && mix(&mut st).is_multiple_of(2))
                .map(|k| format!("{:?}", kind_name(*k)))
                .collect();
            if !aggregate.is_empty() {
                out.push_str(&format!("aggregate = [{}]\n", aggregate.join(", ")));
            }
        }
        out
    }

    /// The purpose filter, as a property: for every purpose, over
    /// generated households of several seeded populations, with the
    /// shipped policy and with random restrictions, no report, stream
    /// event or audit record carries a fact of a kind the purpose may not
    /// see (nor an account of a kind it sees as totals), a source the
    /// purpose may not ask gets no adapter call, and no indicator that
    /// needs a withheld kind is decided.
    #[tokio::test]
    async fn purpose_filter_holds_for_every_purpose_over_generated_households() {
        use crate::report::disclosure::{Disclosure, parse_kind};
        use crate::report::policy::IncomeKind;
        use hedui_mock_agencies::population::PopulationConfig;
        use hedui_proto::v1::{FactKind, Outcome, SourceStatus, stream_verify_response::Event};

        const HOUSEHOLDS: usize = 12;
        const APPLICANTS: usize = 3;
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/purposes.toml"
        ))
        .unwrap();
        let catalog = Catalog::dachuan();
        let specs: Vec<_> = catalog.iter().cloned().collect();
        let today = crate::time::china_date();
        let policies = crate::report::PolicySet::embedded();
        let policy = policies.select("511703", today);
        let income_kinds: Vec<FactKind> = IncomeKind::ALL
            .into_iter()
            .filter(|k| policy.counts(*k))
            .flat_map(|k| k.fact_kinds().iter().copied())
            .collect();
        let needs = |id: &str| -> Vec<FactKind> {
            use FactKind as K;
            match id {
                "R1" => income_kinds.clone(),
                "R2" => vec![K::FinancialAccount],
                "R3" => vec![K::Vehicle, K::OperatingLicence],
                "R4" => vec![K::Dwelling],
                "R5" => vec![K::MarketEntity, K::IndividualBusiness],
                "R6" => vec![K::PublicPayroll],
                "R7" => vec![K::RelatedParty],
                "R9" => vec![K::AccountOutflow],
                _ => Vec::new(),
            }
        };
        // How often each check bit, so that the property is not vacuous.
        let (mut cases, mut unasked, mut totals, mut undecided) = (0, 0, 0, 0);
        for seed in [2018u64, 7, 424_242] {
            let population = Population::generate(&PopulationConfig {
                seed,
                households: HOUSEHOLDS,
                today,
            });
            let truths = population.truth(&TruthPolicy::default());
            let ts = crate::time::timestamp(std::time::SystemTime::now());
            for purposes in [shipped.clone(), random_purposes(seed)] {
                let text = format!(
                    "[store]\npath = ':memory:'\n[changes]\ntransport = 'none'\n\
                     [simulation]\nseed = {seed}\nhouseholds = {HOUSEHOLDS}\n\
                     latency_p50_ms = 0\nlatency_p99_ms = 0\n{purposes}"
                );
                let config =
                    Config::parse(&text, "prop.toml").unwrap_or_else(|e| panic!("{e}\n{purposes}"));
                let disclosures = config.disclosures(&specs).unwrap();
                let built = build(&config).await.unwrap();
                let caller = crate::verify::Caller::new("prop");
                for p in 1..=7 {
                    let name = crate::verify::purpose_name(p);
                    let d = disclosures
                        .get(&p)
                        .cloned()
                        .unwrap_or_else(|| Disclosure::unrestricted(&name));
                    let withheld: Vec<FactKind> =
                        specs.iter().flat_map(|s| d.withheld(s)).collect();
                    let ctx = format!("seed {seed}, purpose {name}, {d:?}");
                    for truth in truths.iter().take(APPLICANTS) {
                        cases += 1;
                        built.simulated.reset_stats();
                        let request = VerificationRequest {
                            applicant_id: truth.applicant_id.clone(),
                            consent_reference: "SQ-PROP".into(),
                            purpose: p,
                            operator_id: "op".into(),
                            ..Default::default()
                        };
                        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
                        let v = &built.verifier;
                        let report = v
                            .run(v.validate(Some(request), None).unwrap(), &caller, Some(tx))
                            .await
                            .unwrap();
                        // Sources the purpose may not ask: no call at all.
                        for spec in &specs {
                            if d.not_asked(spec).is_some() {
                                let calls = built.simulated.stats_of(&spec.id).unwrap().lookups;
                                assert_eq!(calls, 0, "{} asked; {ctx}", spec.id);
                                unasked += 1;
                            }
                        }
                        // Every source result, in the report and streamed.
                        let mut results: Vec<hedui_proto::v1::SourceResult> =
                            report.sources.clone();
                        while let Ok(event) = rx.try_recv() {
                            match event.event {
                                Some(Event::SourceResult(r)) => results.push(r),
                                Some(Event::Report(r)) => assert_eq!(r, report),
                                _ => {}
                            }
                        }
                        for r in &results {
                            let spec = catalog.get(&r.source_id).unwrap();
                            let expected: Vec<i32> =
                                d.withheld(spec).iter().map(|k| *k as i32).collect();
                            assert_eq!(r.withheld_fact_kinds, expected, "{}; {ctx}", r.source_id);
                            if d.not_asked(spec).is_some() {
                                assert_eq!(r.status(), SourceStatus::NotQueried, "{ctx}");
                                assert_eq!(r.fact_count, 0, "{ctx}");
                            }
                        }
                        // Every figure of the report comes from a fact of an
                        // allowed kind, and a kind seen as totals shows no
                        // account.
                        let provenances = report
                            .income
                            .iter()
                            .flat_map(|i| i.items.iter().map(|x| (&x.description, &x.provenance)))
                            .chain(report.assets.iter().flat_map(|a| {
                                a.items.iter().map(|x| (&x.description, &x.provenance))
                            }));
                        for (description, p) in provenances {
                            let Some(p) = p else { continue };
                            if p.record_id.is_empty() {
                                assert!(
                                    d.aggregate.contains(&FactKind::FinancialAccount),
                                    "{description}; {ctx}"
                                );
                                assert!(!description.contains("****"), "{description}; {ctx}");
                                totals += 1;
                                continue;
                            }
                            let facts = population.facts_for(&p.source_id, &p.person_id, ts);
                            let kind = facts
                                .iter()
                                .find(|f| f.record_id == p.record_id)
                                .and_then(|f| f.value.as_ref())
                                .map(hedui_proto::v1::fact::Value::kind)
                                .unwrap_or_else(|| panic!("{p:?} not found; {ctx}"));
                            assert!(d.allows_kind(kind), "{kind:?} in the report; {ctx}");
                            assert!(
                                !d.aggregate.contains(&kind),
                                "{kind:?} shown whole: {description}; {ctx}"
                            );
                        }
                        let said: Vec<i32> = {
                            let mut w: Vec<i32> = withheld.iter().map(|k| *k as i32).collect();
                            w.sort_unstable();
                            w.dedup();
                            w
                        };
                        assert_eq!(report.withheld_fact_kinds, said, "{ctx}");
                        // Nothing needing a withheld kind is decided.
                        for i in &report.indicators {
                            if needs(&i.id).iter().any(|k| withheld.contains(k)) {
                                assert_eq!(
                                    i.outcome(),
                                    Outcome::Inconclusive,
                                    "{} {}: {}; {ctx}",
                                    i.id,
                                    i.name,
                                    i.reason
                                );
                                assert!(i.reason.contains("withheld"), "{}; {ctx}", i.reason);
                                undecided += 1;
                            }
                        }
                        if report.verdict() == Outcome::Pass {
                            assert!(withheld.is_empty(), "{ctx}");
                        }
                    }
                }
                // The audit log says what was disclosed, and nothing else.
                let rows = built
                    .verifier
                    .audit()
                    .backend()
                    .query(&crate::audit::store::Filter {
                        kind: Some("verification".into()),
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 7 * APPLICANTS);
                for row in &rows {
                    let p = Purpose::from_str_name(&format!(
                        "PURPOSE_{}",
                        row.purpose.to_ascii_uppercase()
                    ))
                    .unwrap() as i32;
                    let d = disclosures
                        .get(&p)
                        .cloned()
                        .unwrap_or_else(|| Disclosure::unrestricted(&row.purpose));
                    let body: serde_json::Value =
                        serde_json::from_str(row.body.as_deref().unwrap()).unwrap();
                    let entry = body.get("entry").unwrap_or(&body);
                    let disclosed = entry["disclosed"].as_array().cloned().unwrap_or_default();
                    assert!(!disclosed.is_empty(), "{entry}");
                    for source in &disclosed {
                        let id = source[0].as_str().unwrap();
                        let spec = catalog.get(id).unwrap();
                        assert!(d.not_asked(spec).is_none(), "{id} disclosed; {entry}");
                        for k in source[1].as_array().unwrap() {
                            let k = k.as_str().unwrap();
                            let (kind, total) = match k.strip_suffix(":total") {
                                Some(k) => (parse_kind(k).unwrap(), true),
                                None => (parse_kind(k).unwrap(), false),
                            };
                            assert!(d.allows_kind(kind), "{k} disclosed; {entry}");
                            assert_eq!(d.aggregate.contains(&kind), total, "{k}; {entry}");
                        }
                    }
                    for k in entry["withheld"].as_array().cloned().unwrap_or_default() {
                        let kind = parse_kind(k.as_str().unwrap()).unwrap();
                        assert!(!d.allows_kind(kind), "{k}; {entry}");
                    }
                }
                built.verifier.store().close().await;
                built.verifier.audit().close().await;
            }
        }
        assert_eq!(cases, 3 * 2 * 7 * APPLICANTS);
        assert!(
            unasked > 100 && totals > 5 && undecided > 50,
            "unasked {unasked}, totals {totals}, undecided {undecided}"
        );
    }

    /// A peer broker asking this broker's sources is bound by the same
    /// purpose policy: a source the purpose may not ask refuses, the
    /// others answer only the kinds the purpose may see.
    #[tokio::test]
    async fn peers_are_bound_by_the_purpose_policy_too() {
        use hedui_adapters::{Adapter, AdapterError, LookupContext};
        use hedui_proto::v1::{FactKind, LookupRequest};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/purposes.toml"
        );
        let mut config = Config::load(std::path::Path::new(path)).unwrap();
        config.store.path = ":memory:".into();
        config.audit.path = Some(":memory:".into());
        config.changes.transport = Some("none".into());
        config
            .simulation
            .insert("households".into(), toml::Value::Integer(30));
        config
            .simulation
            .insert("latency_p99_ms".into(), toml::Value::Integer(0));
        config
            .simulation
            .insert("latency_p50_ms".into(), toml::Value::Integer(0));
        let built = build(&config).await.unwrap();
        let bound = |id: &str| {
            let sources = built.verifier.sources();
            let s = sources.iter().find(|s| s.spec.id == id).unwrap();
            PurposeBound {
                spec: s.spec.clone(),
                inner: s.guard.clone(),
                verifier: built.verifier.clone(),
            }
        };
        let population = Population::generate(&hedui_mock_agencies::population::PopulationConfig {
            seed: hedui_mock_agencies::population::DEFAULT_SEED,
            households: 30,
            today: crate::time::china_date(),
        });
        let members: Vec<String> = population
            .truth(&TruthPolicy::default())
            .iter()
            .flat_map(|t| t.member_ids.clone())
            .collect();
        let lookup = |source: &str, purpose: Purpose| LookupRequest {
            request_id: "peer-1".into(),
            source_id: source.into(),
            person_ids: members.iter().take(40).cloned().collect(),
            fact_kinds: Vec::new(),
            purpose: purpose as i32,
            consent_reference: "SQ-1".into(),
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(5));
        let bank = bound("rural-commercial-bank");
        let e = bank
            .lookup(
                &ctx,
                &lookup("rural-commercial-bank", Purpose::EducationAssistance),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AdapterError::Rejected(m) if m.contains("purposes.education_assistance.fact_kinds")),
            "{e}"
        );
        assert_eq!(
            built
                .simulated
                .stats_of("rural-commercial-bank")
                .unwrap()
                .lookups,
            0
        );
        let full = bank
            .lookup(
                &ctx,
                &lookup("rural-commercial-bank", Purpose::DibaoApplication),
            )
            .await
            .unwrap();
        assert!(full.answers.iter().any(|a| !a.facts.is_empty()));
        // Civil affairs answers education assistance without marriages.
        let civil = bound("civil-affairs");
        let kinds = |r: &hedui_proto::v1::LookupResponse| -> Vec<FactKind> {
            r.answers
                .iter()
                .flat_map(|a| a.facts.iter().filter_map(|f| f.value.as_ref()))
                .map(hedui_proto::v1::fact::Value::kind)
                .collect()
        };
        let all = civil
            .lookup(&ctx, &lookup("civil-affairs", Purpose::DibaoApplication))
            .await
            .unwrap();
        assert!(kinds(&all).contains(&FactKind::Marriage));
        let education = civil
            .lookup(&ctx, &lookup("civil-affairs", Purpose::EducationAssistance))
            .await
            .unwrap();
        assert!(!kinds(&education).is_empty());
        assert!(!kinds(&education).contains(&FactKind::Marriage));
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
