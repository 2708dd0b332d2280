//! The simulated population as the conformance kit's test data
//! ([`fixtures`]), and the simulation's faults as the kit's fault injection:
//! in-process ([`SimulatedInjector`]) or through the control service of a
//! running `mock-agencies serve` ([`ControlInjector`]).
//!
//! A department tests its adapter by loading the same synthetic population
//! into its test system (`mock-agencies sql load`, the REST mocks, its own
//! loader) and running `hedui adapter check` against it.

use std::sync::Arc;

use async_trait::async_trait;
use hedui_adapters::conformance::{Fault, FaultInjector, Fixtures};
use tonic::transport::Channel;

use crate::{
    control::proto::{
        Faults, SetFaultsRequest, agency_control_service_client::AgencyControlServiceClient,
    },
    population::Population,
    sim::{FaultConfig, SourceControl},
};

/// The test data of `source_id` in `population`: up to `max_known` persons
/// it holds records of (spread over the population) with those records,
/// and a few registered persons it holds none of.
pub fn fixtures(population: &Population, source_id: &str, max_known: usize) -> Fixtures {
    let ts = prost_types::Timestamp::default();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for h in population.households() {
        for p in h.members() {
            let facts = population.facts_for(source_id, p.id(), ts);
            if facts.is_empty() {
                if unknown.len() < 4 {
                    unknown.push(p.id().to_owned());
                }
            } else if known.len() < max_known {
                known.push((p.id().to_owned(), facts));
            }
        }
        if known.len() >= max_known && unknown.len() >= 4 {
            break;
        }
    }
    Fixtures { known, unknown }
}

fn config_of(fault: Fault) -> FaultConfig {
    match fault {
        Fault::Unavailable => FaultConfig {
            outage: true,
            ..FaultConfig::none()
        },
        Fault::Internal => FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::none()
        },
        Fault::Hang => FaultConfig {
            hang: true,
            ..FaultConfig::none()
        },
    }
}

/// Faults injected into a simulated source of this process.
#[derive(Debug, Clone)]
pub struct SimulatedInjector(pub Arc<SourceControl>);

#[async_trait]
impl FaultInjector for SimulatedInjector {
    async fn inject(&self, fault: Fault) -> Result<(), String> {
        self.0.set_faults(config_of(fault))
    }

    async fn clear(&self) -> Result<(), String> {
        self.0.set_faults(FaultConfig::none())
    }
}

/// Faults injected through the control service of the simulated agencies.
#[derive(Debug, Clone)]
pub struct ControlInjector {
    client: AgencyControlServiceClient<Channel>,
    source_id: String,
}

impl ControlInjector {
    /// Injects into `source_id` through the control service at `endpoint`
    /// (connects lazily).
    ///
    /// # Errors
    /// A message when the endpoint is not a URL.
    pub fn new(endpoint: &str, source_id: &str) -> Result<Self, String> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| format!("control endpoint {endpoint:?}: {e}"))?
            .connect_lazy();
        Ok(ControlInjector {
            client: AgencyControlServiceClient::new(channel),
            source_id: source_id.to_owned(),
        })
    }

    async fn set(&self, f: FaultConfig) -> Result<(), String> {
        let faults = Faults {
            error_rate: f.error_rate,
            timeout_rate: f.timeout_rate,
            outage: f.outage,
            hang: f.hang,
            hang_persons: f.hang_persons.into_iter().collect(),
            malformed_rate: f.malformed_rate,
            oversized_rate: f.oversized_rate,
        };
        self.client
            .clone()
            .set_faults(SetFaultsRequest {
                source_id: self.source_id.clone(),
                faults: Some(faults),
                latency: None,
            })
            .await
            .map(drop)
            .map_err(|s| format!("control service: {}", s.message()))
    }
}

#[async_trait]
impl FaultInjector for ControlInjector {
    async fn inject(&self, fault: Fault) -> Result<(), String> {
        self.set(config_of(fault)).await
    }

    async fn clear(&self) -> Result<(), String> {
        self.set(FaultConfig::none()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::NaiveDate;
    use hedui_adapters::{
        Adapter,
        catalog::Catalog,
        conformance::{Options, run},
    };

    use super::*;
    use crate::{
        population::PopulationConfig,
        sim::{LatencyConfig, SimulatedSource},
    };

    /// Every simulated source passes the kit, in-process.
    #[tokio::test]
    async fn every_simulated_source_passes_the_kit() {
        let pop = Population::shared(&PopulationConfig {
            seed: 5,
            households: 400,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        });
        let options = Options {
            short_deadline: Duration::from_millis(200),
            ..Options::default()
        };
        for spec in Catalog::dachuan().iter() {
            let source = Arc::new(SimulatedSource::new(spec, pop.clone(), LatencyConfig::ZERO));
            let injector = SimulatedInjector(source.control().clone());
            let f = fixtures(&pop, &spec.id, 8);
            let adapter: Arc<dyn Adapter> = source;
            let report = run(adapter, spec, &f, Some(&injector), &options).await;
            assert!(report.passed(), "{report}");
        }
    }
}
