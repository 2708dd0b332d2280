//! Serving the simulated agencies as their own process: one gRPC listener
//! per source (`hedui.v1.AdapterService`, as a department would serve it),
//! one HTTP listener for each source that also has a REST API
//! ([`crate::http`], the second rural bank included) and one for the control
//! service, each on an ephemeral port.

use std::{
    fmt,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hedui_adapters::{
    Adapter,
    catalog::Catalog,
    server::{AdapterServer, ServerAuth},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::{Server, server::Router};

use crate::{
    control::ControlServer,
    http,
    population::{Population, PopulationConfig},
    sim::{FaultConfig, LatencyProfile, SimulatedAgencies, SimulatedSource, simulate_catalog},
};

/// How long [`RunningAgencies::shutdown`] waits for lookups in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The population the sources answer from.
    pub population: PopulationConfig,
    /// The address to listen on (each listener takes an ephemeral port).
    pub host: IpAddr,
    /// The latency of every source.
    pub profile: LatencyProfile,
    /// Faults in force from the start, by source id.
    pub faults: Vec<(String, FaultConfig)>,
    /// The sources to simulate.
    pub catalog: Catalog,
    /// TLS (optionally requiring client certificates) on every source's
    /// gRPC and REST listener, and a bearer token every gRPC call must
    /// carry (the REST APIs keep their own authentication). The control
    /// service stays plaintext and open: it is the tests' own.
    pub auth: ServerAuth,
}

impl ServeConfig {
    /// Dachuan's 28 sources on the loopback address, realistic latency, no
    /// faults.
    pub fn new(population: PopulationConfig) -> Self {
        ServeConfig {
            population,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            profile: LatencyProfile::Realistic,
            faults: Vec::new(),
            catalog: Catalog::dachuan(),
            auth: ServerAuth::none(),
        }
    }
}

/// Why the agencies could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {host}: {source}")]
    Bind {
        /// The host asked for.
        host: IpAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A fault names a source that is not simulated.
    #[error("fault for unknown source {0:?}")]
    UnknownSource(String),
    /// The TLS configuration cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// A fault is out of range.
    #[error("fault for {source_id}: {message}")]
    BadFault {
        /// The source.
        source_id: String,
        /// What is wrong.
        message: String,
    },
}

/// The simulated agencies serving: their addresses, their handles, and the
/// means to stop them. Dropping it stops them too.
pub struct RunningAgencies {
    control: SocketAddr,
    sources: Vec<(String, SocketAddr)>,
    http: Vec<(String, SocketAddr)>,
    agencies: SimulatedAgencies,
    population: Arc<Population>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// `https` when the sources are served over TLS, else `http`.
    scheme: &'static str,
}

impl fmt::Debug for RunningAgencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningAgencies")
            .field("control", &self.control)
            .field("sources", &self.sources)
            .field("http", &self.http)
            .field("population", &self.population)
            .finish()
    }
}

fn spawn_server(
    name: String,
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let signal = async move {
            // An error means the sender is gone: stop too.
            let _ = stop.wait_for(|v| *v).await;
        };
        // Answers go out at once, not after the caller's delayed ACK
        // (Nagle): a department's latency is what its simulation sets.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = router.serve_with_incoming_shutdown(incoming, signal).await;
        if let Err(e) = served {
            tracing::error!(server = %name, error = %e, "server stopped with an error");
        }
    })
}

impl RunningAgencies {
    /// Generates (or reuses) the population, binds one listener per source
    /// and one for control on `config.host`, and serves them until
    /// [`RunningAgencies::shutdown`] or drop.
    ///
    /// # Errors
    /// [`ServeError`] when a listener cannot be bound or a fault is wrong.
    pub async fn start(config: ServeConfig) -> Result<RunningAgencies, ServeError> {
        let pop_config = config.population;
        let population = tokio::task::spawn_blocking(move || Population::shared(&pop_config))
            .await
            .expect("population generation does not panic");
        let agencies = SimulatedAgencies::new();
        let sources = simulate_catalog(&population, &config.catalog, config.profile, &agencies);
        for (id, faults) in &config.faults {
            let control = agencies
                .get(id)
                .ok_or_else(|| ServeError::UnknownSource(id.clone()))?;
            control
                .set_faults(faults.clone())
                .map_err(|message| ServeError::BadFault {
                    source_id: id.clone(),
                    message,
                })?;
        }
        let bind = || async {
            TcpListener::bind(SocketAddr::new(config.host, 0))
                .await
                .map_err(|source| ServeError::Bind {
                    host: config.host,
                    source,
                })
        };
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = Vec::with_capacity(sources.len() + 8);
        let mut addrs = Vec::with_capacity(sources.len());
        let mut http_addrs = Vec::new();
        // The second rural bank has a REST API only.
        let second_bank = Arc::new(SimulatedSource::new(
            &http::second_bank_spec(),
            population.clone(),
            config.profile.latency(crate::population::SECOND_BANK_ID),
        ));
        agencies.register(second_bank.control().clone());
        let rest = sources
            .iter()
            .cloned()
            .chain([second_bank])
            .filter_map(|s| Some((s.source_id().to_owned(), http::router(s)?)));
        for (id, router) in rest {
            let listener = bind().await?;
            let addr = listener.local_addr().map_err(|source| ServeError::Bind {
                host: config.host,
                source,
            })?;
            tasks.push(match config.auth.rustls_config() {
                Some(tls) => http::spawn_tls(listener, router, tls, stop.clone()),
                None => http::spawn(listener, router, stop.clone()),
            });
            http_addrs.push((id, addr));
        }
        for source in sources {
            let listener = bind().await?;
            let addr = listener.local_addr().map_err(|source| ServeError::Bind {
                host: config.host,
                source,
            })?;
            let id = source.source_id().to_owned();
            let adapter: Arc<dyn Adapter> = source;
            // No limit on what a simulated department sends: an oversized
            // answer (fault `oversized`) must reach the broker, whose own
            // limit is what is tested.
            let service = AdapterServer::new([adapter])
                .into_service()
                .max_encoding_message_size(usize::MAX);
            let router = config
                .auth
                .server()
                .map_err(|e| ServeError::Tls(e.to_string()))?
                .add_service(config.auth.wrap(service));
            tasks.push(spawn_server(id.clone(), listener, router, stop.clone()));
            addrs.push((id, addr));
        }
        let listener = bind().await?;
        let control = listener.local_addr().map_err(|source| ServeError::Bind {
            host: config.host,
            source,
        })?;
        let router =
            Server::builder().add_service(ControlServer::new(agencies.clone()).into_service());
        tasks.push(spawn_server("control".into(), listener, router, stop));
        tracing::info!(
            sources = addrs.len(),
            %control,
            households = population.len(),
            persons = population.person_count(),
            "simulated agencies serving"
        );
        Ok(RunningAgencies {
            control,
            sources: addrs,
            http: http_addrs,
            agencies,
            population,
            shutdown,
            tasks,
            scheme: config.auth.scheme(),
        })
    }

    /// Address of the control service.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// URL of the control service, e.g. `http://127.0.0.1:40123`.
    pub fn control_endpoint(&self) -> String {
        format!("http://{}", self.control)
    }

    /// Every source with its address, in catalog order.
    pub fn sources(&self) -> &[(String, SocketAddr)] {
        &self.sources
    }

    /// URL of a source's `AdapterService`.
    pub fn endpoint(&self, source_id: &str) -> Option<String> {
        self.sources
            .iter()
            .find(|(id, _)| id == source_id)
            .map(|(_, a)| format!("{}://{a}", self.scheme))
    }

    /// Every source with a REST API, with its address.
    pub fn http_sources(&self) -> &[(String, SocketAddr)] {
        &self.http
    }

    /// URL of a source's REST API, e.g. `http://127.0.0.1:40124`
    /// (`https://` when served over TLS).
    pub fn http_endpoint(&self, source_id: &str) -> Option<String> {
        self.http
            .iter()
            .find(|(id, _)| id == source_id)
            .map(|(_, a)| format!("{}://{a}", self.scheme))
    }

    /// The handles of the sources (counters, faults, latency).
    pub fn agencies(&self) -> &SimulatedAgencies {
        &self.agencies
    }

    /// The population the sources answer from.
    pub fn population(&self) -> &Arc<Population> {
        &self.population
    }

    /// The sources as the broker's configuration takes them: one
    /// `[[sources]]` table per source with a `grpc` transport. Over TLS the
    /// endpoints are `https://` and the broker's entries still need their
    /// `tls` (and `auth`) blocks.
    pub fn sources_toml(&self) -> String {
        let mut out = String::new();
        for (i, (id, addr)) in self.sources.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            writeln!(
                out,
                "[[sources]]\nid = \"{id}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"{}://{addr}\"",
                self.scheme
            )
            .expect("writing to a string");
        }
        out
    }

    /// The one line printed when ready: JSON with the control endpoint,
    /// each source's gRPC endpoint (`sources`) and each REST API (`http`).
    pub fn ready_line(&self) -> String {
        let map = |v: &[(String, SocketAddr)]| -> serde_json::Map<String, serde_json::Value> {
            v.iter()
                .map(|(id, a)| (id.clone(), format!("{}://{a}", self.scheme).into()))
                .collect()
        };
        serde_json::json!({
            "control": self.control_endpoint(),
            "sources": map(&self.sources),
            "http": map(&self.http),
        })
        .to_string()
    }

    /// Stops every listener, waiting up to [`SHUTDOWN_GRACE`] for lookups
    /// in flight.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_join(tasks);
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("lookups still in flight at shutdown; aborted");
            for a in aborts {
                a.abort();
            }
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Drop for RunningAgencies {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use hedui_adapters::{
        LookupContext,
        grpc::{GrpcAdapter, GrpcParams},
    };
    use hedui_proto::v1::LookupRequest;

    use super::*;

    #[tokio::test]
    async fn serves_every_source_and_describes_itself() {
        let mut config = ServeConfig::new(PopulationConfig {
            seed: 4,
            households: 60,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        });
        config.profile = LatencyProfile::Zero;
        config.faults = vec![(
            "justice".into(),
            FaultConfig {
                outage: true,
                ..FaultConfig::none()
            },
        )];
        let running = RunningAgencies::start(config).await.unwrap();
        assert_eq!(running.sources().len(), 28);

        let toml_text = running.sources_toml();
        let parsed: toml::Table = toml::from_str(&toml_text).unwrap();
        let entries = parsed["sources"].as_array().unwrap();
        assert_eq!(entries.len(), 28);
        assert_eq!(entries[0]["id"].as_str(), Some("public-security"));
        assert_eq!(entries[0]["transport"]["type"].as_str(), Some("grpc"));
        assert!(toml_text.starts_with("[[sources]]\nid = \"public-security\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"http://127.0.0.1:"));

        let ready: serde_json::Value = serde_json::from_str(&running.ready_line()).unwrap();
        assert_eq!(ready["control"], running.control_endpoint());
        assert_eq!(ready["sources"].as_object().unwrap().len(), 28);
        let rest = ready["http"].as_object().unwrap();
        assert_eq!(rest.len(), http::HTTP_SOURCES.len());
        assert_eq!(
            rest["tongchuan-rural-bank"].as_str(),
            running.http_endpoint("tongchuan-rural-bank").as_deref()
        );

        let catalog = Catalog::dachuan();
        let call = |id: &str| {
            GrpcAdapter::new(
                catalog.get(id).unwrap(),
                &GrpcParams {
                    endpoint: running.endpoint(id).unwrap(),
                    connect_timeout_ms: 1_000,
                    max_answer_bytes: hedui_adapters::grpc::MAX_ANSWER_BYTES,
                    tls: None,
                    auth: None,
                },
            )
            .unwrap()
        };
        let applicant = running
            .population()
            .household_at(0)
            .unwrap()
            .applicant()
            .id()
            .to_owned();
        let req = LookupRequest {
            source_id: "public-security".into(),
            person_ids: vec![applicant.clone()],
            ..Default::default()
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(5));
        let resp = call("public-security").lookup(&ctx, &req).await.unwrap();
        assert_eq!(resp.answers[0].facts.len(), 1);
        let err = call("justice")
            .lookup(
                &ctx,
                &LookupRequest {
                    source_id: "justice".into(),
                    person_ids: vec![applicant],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, hedui_adapters::AdapterError::Unavailable(_)),
            "{err}"
        );
        assert_eq!(running.agencies().stats_of("justice").unwrap().failures, 1);
        running.shutdown().await;
    }
}
