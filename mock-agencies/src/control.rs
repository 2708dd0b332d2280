//! The control service (`hedui.mock.v1.AgencyControlService`): reads and
//! resets the counters of the simulated sources of a process and changes
//! their faults and latency while they serve.

use tonic::{Request, Response, Status};

use crate::sim::{ControlError, FaultConfig, LatencyConfig, SimulatedAgencies, SourceStats};

/// Generated messages, client and server of `hedui.mock.v1`.
#[allow(
    clippy::all,
    unreachable_pub,
    missing_debug_implementations,
    missing_docs
)]
pub mod proto {
    tonic::include_proto!("hedui.mock.v1");
}

/// The encoded `FileDescriptorSet` of `control.proto`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hedui_mock_descriptor.bin"));

use proto::{
    GetStatsRequest, GetStatsResponse, ResetStatsRequest, ResetStatsResponse, SetFaultsRequest,
    SetFaultsResponse, SimulateChangeRequest, SimulateChangeResponse,
    agency_control_service_server::{AgencyControlService, AgencyControlServiceServer},
};

/// `AgencyControlService` over the simulated sources of a process.
#[derive(Debug, Clone)]
pub struct ControlServer {
    agencies: SimulatedAgencies,
}

impl ControlServer {
    /// A control service for these sources.
    pub fn new(agencies: SimulatedAgencies) -> Self {
        ControlServer { agencies }
    }

    /// The tonic service.
    pub fn into_service(self) -> AgencyControlServiceServer<Self> {
        AgencyControlServiceServer::new(self)
    }
}

fn status(e: ControlError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl From<SourceStats> for proto::SourceStats {
    fn from(s: SourceStats) -> Self {
        proto::SourceStats {
            source_id: s.source_id,
            lookups: s.lookups,
            persons: s.persons,
            failures: s.failures,
        }
    }
}

impl From<&FaultConfig> for proto::Faults {
    fn from(f: &FaultConfig) -> Self {
        proto::Faults {
            error_rate: f.error_rate,
            timeout_rate: f.timeout_rate,
            outage: f.outage,
            hang: f.hang,
            hang_persons: f.hang_persons.iter().cloned().collect(),
            malformed_rate: f.malformed_rate,
            oversized_rate: f.oversized_rate,
        }
    }
}

impl From<proto::Faults> for FaultConfig {
    fn from(f: proto::Faults) -> Self {
        FaultConfig {
            error_rate: f.error_rate,
            timeout_rate: f.timeout_rate,
            outage: f.outage,
            hang: f.hang,
            hang_persons: f.hang_persons.into_iter().collect(),
            malformed_rate: f.malformed_rate,
            oversized_rate: f.oversized_rate,
        }
    }
}

impl From<LatencyConfig> for proto::Latency {
    fn from(l: LatencyConfig) -> Self {
        proto::Latency {
            p50_ms: u32::try_from(l.p50_ms).unwrap_or(u32::MAX),
            p99_ms: u32::try_from(l.p99_ms).unwrap_or(u32::MAX),
        }
    }
}

impl From<proto::Latency> for LatencyConfig {
    fn from(l: proto::Latency) -> Self {
        LatencyConfig::new(u64::from(l.p50_ms), u64::from(l.p99_ms))
    }
}

#[tonic::async_trait]
impl AgencyControlService for ControlServer {
    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let id = request.into_inner().source_id;
        let sources = if id.is_empty() {
            self.agencies.stats()
        } else {
            vec![self.agencies.stats_of(&id).map_err(status)?]
        };
        Ok(Response::new(GetStatsResponse {
            sources: sources.into_iter().map(Into::into).collect(),
        }))
    }

    async fn reset_stats(
        &self,
        request: Request<ResetStatsRequest>,
    ) -> Result<Response<ResetStatsResponse>, Status> {
        let id = request.into_inner().source_id;
        let source_ids = if id.is_empty() {
            self.agencies.reset_stats();
            self.agencies.source_ids()
        } else {
            let control = self
                .agencies
                .get(&id)
                .ok_or_else(|| status(unknown(&self.agencies, &id)))?;
            control.reset_stats();
            vec![id]
        };
        tracing::info!(sources = source_ids.len(), "counters reset");
        Ok(Response::new(ResetStatsResponse { source_ids }))
    }

    async fn set_faults(
        &self,
        request: Request<SetFaultsRequest>,
    ) -> Result<Response<SetFaultsResponse>, Status> {
        let req = request.into_inner();
        if req.source_id.is_empty() {
            return Err(Status::invalid_argument("source_id: required"));
        }
        let control = self
            .agencies
            .get(&req.source_id)
            .ok_or_else(|| status(unknown(&self.agencies, &req.source_id)))?;
        let faults: FaultConfig = req.faults.map(Into::into).unwrap_or_default();
        faults
            .validate()
            .map_err(|m| Status::invalid_argument(format!("faults.{m}")))?;
        if let Some(latency) = req.latency {
            let latency: LatencyConfig = latency.into();
            latency
                .validate()
                .map_err(|m| Status::invalid_argument(format!("latency.{m}")))?;
            control
                .set_latency(latency)
                .map_err(Status::invalid_argument)?;
        }
        control
            .set_faults(faults.clone())
            .map_err(Status::invalid_argument)?;
        tracing::info!(source = %req.source_id, ?faults, latency = ?control.latency(), "faults set");
        Ok(Response::new(SetFaultsResponse {
            faults: Some((&control.faults()).into()),
            latency: Some(control.latency().into()),
        }))
    }

    async fn simulate_change(
        &self,
        request: Request<SimulateChangeRequest>,
    ) -> Result<Response<SimulateChangeResponse>, Status> {
        let req = request.into_inner();
        let kind = hedui_proto::v1::ChangeKind::try_from(req.kind).map_err(|_| {
            Status::invalid_argument(format!("kind: {} is not a change kind", req.kind))
        })?;
        let event = self
            .agencies
            .simulate_change(&req.person_id, kind)
            .map_err(status)?;
        Ok(Response::new(SimulateChangeResponse { event: Some(event) }))
    }
}

fn unknown(agencies: &SimulatedAgencies, id: &str) -> ControlError {
    ControlError::UnknownSource {
        id: id.to_owned(),
        known: agencies.source_ids().join(", "),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::NaiveDate;
    use hedui_adapters::{Adapter, LookupContext, catalog::Catalog};
    use hedui_proto::v1::LookupRequest;
    use proto::agency_control_service_client::AgencyControlServiceClient;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::{
        population::{Population, PopulationConfig},
        sim::{LatencyProfile, simulate_catalog},
    };

    #[tokio::test]
    async fn control_service_reads_resets_and_injects() {
        let pop = Population::shared(&PopulationConfig {
            seed: 3,
            households: 100,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        });
        let agencies = SimulatedAgencies::new();
        let sources = simulate_catalog(&pop, &Catalog::dachuan(), LatencyProfile::Zero, &agencies);
        let bank = sources
            .iter()
            .find(|s| s.source_id() == "rural-commercial-bank")
            .unwrap()
            .clone();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(agencies.clone()).into_service())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut client = AgencyControlServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();

        let applicant = pop.household_at(0).unwrap().applicant().id().to_owned();
        let req = LookupRequest {
            person_ids: vec![applicant.clone()],
            ..Default::default()
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(1));
        bank.lookup(&ctx, &req).await.unwrap();

        let stats = client
            .get_stats(GetStatsRequest {
                source_id: "rural-commercial-bank".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.sources.len(), 1);
        assert_eq!((stats.sources[0].lookups, stats.sources[0].persons), (1, 1));
        let all = client
            .get_stats(GetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.sources.len(), 28);
        assert_eq!(all.sources[0].source_id, "public-security");

        let set = client
            .set_faults(SetFaultsRequest {
                source_id: "rural-commercial-bank".into(),
                faults: Some(proto::Faults {
                    outage: true,
                    ..Default::default()
                }),
                latency: Some(proto::Latency {
                    p50_ms: 5,
                    p99_ms: 9,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(set.faults.unwrap().outage);
        assert_eq!(set.latency.unwrap().p99_ms, 9);
        assert!(bank.lookup(&ctx, &req).await.is_err());
        assert_eq!(
            agencies.stats_of("rural-commercial-bank").unwrap().failures,
            1
        );

        // Unset faults clear them; unset latency keeps it.
        client
            .set_faults(SetFaultsRequest {
                source_id: "rural-commercial-bank".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        bank.lookup(&ctx, &req).await.unwrap();
        assert_eq!(bank.control().latency(), LatencyConfig::new(5, 9));

        let reset = client
            .reset_stats(ResetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reset.source_ids.len(), 28);
        assert_eq!(
            agencies.stats_of("rural-commercial-bank").unwrap().lookups,
            0
        );

        // Bad input names the field.
        for (req, field) in [
            (
                SetFaultsRequest {
                    source_id: "bank-of-atlantis".into(),
                    ..Default::default()
                },
                "source_id",
            ),
            (SetFaultsRequest::default(), "source_id"),
            (
                SetFaultsRequest {
                    source_id: "justice".into(),
                    faults: Some(proto::Faults {
                        error_rate: 2.0,
                        ..Default::default()
                    }),
                    latency: None,
                },
                "faults.error_rate",
            ),
            (
                SetFaultsRequest {
                    source_id: "justice".into(),
                    faults: None,
                    latency: Some(proto::Latency {
                        p50_ms: 50,
                        p99_ms: 10,
                    }),
                },
                "latency.p99_ms",
            ),
        ] {
            let err = client.set_faults(req).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with(field), "{}", err.message());
        }
        let err = client
            .get_stats(GetStatsRequest {
                source_id: "nobody".into(),
            })
            .await
            .unwrap_err();
        assert!(err.message().starts_with("source_id"), "{}", err.message());
        server.abort();
    }
}
