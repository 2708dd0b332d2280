//! The calls the load generator makes: an echo call (baseline A), a direct
//! fan-out to the simulated agencies (baseline B), a verification through
//! the broker (S1 to S4), and the agencies' control service.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use hedui_adapters::catalog::{Catalog, HOUSEHOLD_SOURCE};
use hedui_mock_agencies::control::proto::{
    Faults, Latency, SetFaultsRequest, agency_control_service_client::AgencyControlServiceClient,
};
use hedui_proto::v1::{
    CheckRequest, LookupRequest, Purpose, RegistrationStatus, SourceStatus, VerificationRequest,
    VerifyRequest, adapter_service_client::AdapterServiceClient, fact,
};
use tonic::transport::Channel;

use crate::load::{Inner, Outcome};

/// Deadline of every request the benchmark sends (gRPC and, for the
/// broker, the verification's own).
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Largest answer accepted from the broker.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// `n` HTTP/2 connections to `url` (each a tonic channel), connected now.
pub(crate) async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Channel::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// Baseline A: one `AdapterService/Check` to the echo server.
pub(crate) async fn echo_once(channel: Channel, i: usize) -> Outcome {
    let mut client = AdapterServiceClient::new(channel);
    let mut request = tonic::Request::new(CheckRequest {
        source_id: format!("echo-{i}"),
    });
    request.set_timeout(REQUEST_DEADLINE);
    let answer = client.check(request).await?.into_inner();
    if !answer.serving {
        bail!("the echo server says it is not serving");
    }
    Ok(None)
}

/// A household the bench verifies: its applicant, and the members the
/// platform's application declares (the active members of the register;
/// none with `--undeclared`).
#[derive(Debug, Clone)]
pub(crate) struct Applicant {
    pub(crate) id: String,
    pub(crate) declared: Vec<String>,
}

impl std::fmt::Display for Applicant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// The verification request for `applicant`, the `i`-th of the run.
pub(crate) fn verification_request(
    applicant: &Applicant,
    i: usize,
    deadline: Duration,
) -> VerificationRequest {
    VerificationRequest {
        applicant_id: applicant.id.clone(),
        declared_member_ids: applicant.declared.clone(),
        consent_reference: format!("SQ-BENCH-{i}"),
        purpose: Purpose::DibaoApplication as i32,
        operator_id: "bench".into(),
        deadline: prost_types::Duration::try_from(deadline).ok(),
        ..Default::default()
    }
}

fn duration_of(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(*d).ok())
}

/// What the load generator reads of a `VerifyResponse`: the report's
/// sources, each with its id, status, latency and detail, under the tags
/// of `verification.proto` (`VerifyResponse.report` 1, `Report.sources`
/// 13; `SourceResult` 1, 3, 4, 7). prost skips every other field as it
/// decodes (the members, facts, income, assets, indicators and wording of
/// a 28-source report, about 6.8 KB): a load generator reads what it checks,
/// as h2load reads nothing, so the rates measure the broker rather than
/// the client's decoding of fields it never looks at.
mod view {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct VerifyResponse {
        #[prost(message, optional, tag = "1")]
        pub(crate) report: Option<Report>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Report {
        #[prost(message, repeated, tag = "13")]
        pub(crate) sources: Vec<SourceResult>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct SourceResult {
        #[prost(string, tag = "1")]
        pub(crate) source_id: String,
        #[prost(enumeration = "hedui_proto::v1::SourceStatus", tag = "3")]
        pub(crate) status: i32,
        #[prost(message, optional, tag = "4")]
        pub(crate) latency: Option<prost_types::Duration>,
        #[prost(string, tag = "7")]
        pub(crate) detail: String,
    }
}

/// A unary call of `path` on `channel`, its answer decoded as `R`: a
/// message that reads only some fields of the real answer (prost skips the
/// others), or `()`, which reads none.
async fn unary_as<Q, R>(
    channel: Channel,
    path: &'static str,
    request: tonic::Request<Q>,
) -> Result<R, tonic::Status>
where
    Q: prost::Message + Send + 'static,
    R: prost::Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the channel is not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let codec = hedui_proto::codec::LeanCodec::<Q, R>::default();
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

/// S1 to S4: one `VerificationService/Verify`. A report in which a source
/// did not answer (`OK` or `NO_RECORD`) counts as a failure: it is not a
/// whole verification. Gives the sources' latencies in the report: the
/// slowest, and the critical path (the household lookup, then the slowest
/// source asked after it; the slower of the two when the request declares
/// the members).
pub(crate) async fn verify_once(channel: Channel, applicant: &Applicant, i: usize) -> Outcome {
    let mut request = tonic::Request::new(VerifyRequest {
        request: Some(verification_request(applicant, i, REQUEST_DEADLINE)),
    });
    request.set_timeout(REQUEST_DEADLINE + Duration::from_secs(1));
    let report = unary_as::<_, view::VerifyResponse>(
        channel,
        "/hedui.v1.VerificationService/Verify",
        request,
    )
    .await?
    .report
    .context("a VerifyResponse without a report")?;
    inner_of(&report, !applicant.declared.is_empty())
}

/// [`verify_once`]'s reading of a report; `declared`: whether the request
/// declared the members.
fn inner_of(report: &view::Report, declared: bool) -> Outcome {
    let answered =
        |s: &view::SourceResult| matches!(s.status(), SourceStatus::Ok | SourceStatus::NoRecord);
    if let Some(bad) = report.sources.iter().find(|s| !answered(s)) {
        let count = report.sources.iter().filter(|s| !answered(s)).count();
        bail!(
            "{count} source(s) did not answer, e.g. {}: {:?} {}",
            bad.source_id,
            bad.status(),
            bad.detail
        );
    }
    if report.sources.is_empty() {
        bail!("a report with no sources");
    }
    let latency = |s: &view::SourceResult| duration_of(s.latency.as_ref());
    let household = report
        .sources
        .iter()
        .find(|s| s.source_id == HOUSEHOLD_SOURCE)
        .and_then(latency);
    let after = report
        .sources
        .iter()
        .filter(|s| s.source_id != HOUSEHOLD_SOURCE)
        .filter_map(latency)
        .max();
    // Declared members are asked about while the household is: the path
    // is then the slower of the two, not their sum.
    Ok(match (household, after) {
        (Some(h), Some(a)) => Some(Inner {
            slowest: h.max(a),
            path: if declared { h.max(a) } else { h + a },
        }),
        (Some(only), None) | (None, Some(only)) => Some(Inner {
            slowest: only,
            path: only,
        }),
        (None, None) => None,
    })
}

/// Baseline B: a platform's own clients of every simulated source, one
/// HTTP/2 connection per source (as the broker has).
#[derive(Debug)]
pub(crate) struct DirectClients {
    household: (String, Vec<i32>, Channel),
    others: Vec<(String, Vec<i32>, Channel)>,
}

impl DirectClients {
    /// Connects to each source of `endpoints` (source id → URL), which must
    /// hold every source of the catalog.
    pub(crate) async fn connect(
        endpoints: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let catalog = Catalog::dachuan();
        let mut household = None;
        let mut others = Vec::new();
        for spec in catalog.iter() {
            let url = endpoints
                .get(&spec.id)
                .with_context(|| format!("the agencies serve no {:?}", spec.id))?;
            let channel = channels(url, 1).await?.remove(0);
            let kinds: Vec<i32> = spec.fact_kinds.iter().map(|k| *k as i32).collect();
            if spec.id == HOUSEHOLD_SOURCE {
                household = Some((spec.id.clone(), kinds, channel));
            } else {
                others.push((spec.id.clone(), kinds, channel));
            }
        }
        Ok(Self {
            household: household.context("the catalog has no household source")?,
            others,
        })
    }

    /// How many sources a fan-out asks after the household source.
    pub(crate) fn fan_out_width(&self) -> usize {
        self.others.len()
    }
}

fn lookup_request(
    source_id: &str,
    kinds: &[i32],
    persons: Vec<String>,
    i: usize,
) -> tonic::Request<LookupRequest> {
    let mut request = tonic::Request::new(LookupRequest {
        request_id: format!("bench-{i}"),
        source_id: source_id.to_owned(),
        person_ids: persons,
        fact_kinds: kinds.to_vec(),
        purpose: Purpose::DibaoApplication as i32,
        consent_reference: format!("SQ-BENCH-{i}"),
    });
    request.set_timeout(REQUEST_DEADLINE);
    request
}

/// Baseline B: resolves the applicant's household at `public-security`,
/// then asks the 27 other sources about its active members, all at once.
/// Gives the slowest of the 28 calls and the critical path (the household
/// lookup plus the slowest of the 27 after it).
pub(crate) async fn direct_fan_out(
    clients: Arc<DirectClients>,
    applicant: &str,
    i: usize,
) -> Outcome {
    let (id, kinds, channel) = &clients.household;
    let household_started = std::time::Instant::now();
    let answer = AdapterServiceClient::new(channel.clone())
        .lookup(lookup_request(id, kinds, vec![applicant.to_owned()], i))
        .await
        .with_context(|| id.clone())?
        .into_inner();
    let household = household_started.elapsed();
    let registration = answer
        .answers
        .iter()
        .find(|a| a.person_id == applicant)
        .and_then(|a| {
            a.facts.iter().find_map(|f| match &f.value {
                Some(fact::Value::HouseholdRegistration(r)) => Some(r),
                _ => None,
            })
        })
        .with_context(|| format!("{id}: no household registration of {applicant}"))?;
    let members: Vec<String> = registration
        .members
        .iter()
        .filter(|m| m.status() == RegistrationStatus::Active)
        .map(|m| m.person_id.clone())
        .collect();
    if members.is_empty() {
        bail!("{id}: household of {applicant} has no active member");
    }
    // The answers' facts are not read (a status is all the fan-out
    // checks): decoded as `()`, as the broker's reports are read only for
    // their sources (`view`).
    let calls = clients.others.iter().map(|(id, kinds, channel)| {
        let request = lookup_request(id, kinds, members.clone(), i);
        let channel = channel.clone();
        async move {
            let started = std::time::Instant::now();
            unary_as::<_, ()>(channel, "/hedui.v1.AdapterService/Lookup", request)
                .await
                .with_context(|| id.clone())?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    });
    let mut slowest = Duration::ZERO;
    for r in futures::future::join_all(calls).await {
        slowest = slowest.max(r?);
    }
    Ok(Some(Inner {
        slowest: slowest.max(household),
        path: household + slowest,
    }))
}

/// The agencies' control service.
pub(crate) async fn control(url: &str) -> anyhow::Result<AgencyControlServiceClient<Channel>> {
    AgencyControlServiceClient::connect(url.to_owned())
        .await
        .with_context(|| format!("cannot reach the agencies' control service at {url}"))
}

/// S3's latency of a source: public security p50 5 ms p99 20 ms, a bank
/// p50 80 ms p99 400 ms, any other department p50 20 ms p99 100 ms.
pub(crate) fn realistic_latency(source_id: &str) -> Latency {
    let (p50_ms, p99_ms) = if source_id == HOUSEHOLD_SOURCE {
        (5, 20)
    } else if source_id.contains("bank") {
        (80, 400)
    } else {
        (20, 100)
    };
    Latency { p50_ms, p99_ms }
}

/// No added latency.
pub(crate) fn zero_latency(_source_id: &str) -> Latency {
    Latency {
        p50_ms: 0,
        p99_ms: 0,
    }
}

/// Every source back to zero latency and no fault.
pub(crate) async fn reset_all(
    control_url: &str,
    sources: impl IntoIterator<Item = &String>,
) -> anyhow::Result<()> {
    set_all(control_url, sources, zero_latency, |_| None).await
}

/// Sets the latency of every source to `latency(id)` and their faults to
/// `faults(id)` (`None`: no fault).
pub(crate) async fn set_all(
    control_url: &str,
    sources: impl IntoIterator<Item = &String>,
    latency: impl Fn(&str) -> Latency,
    faults: impl Fn(&str) -> Option<Faults>,
) -> anyhow::Result<()> {
    let mut c = control(control_url).await?;
    for id in sources {
        c.set_faults(SetFaultsRequest {
            source_id: id.clone(),
            faults: faults(id),
            latency: Some(latency(id)),
        })
        .await
        .with_context(|| format!("SetFaults {id}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{Member, Report, SourceResult};
    use prost::Message;

    use super::*;

    fn source(id: &str, status: SourceStatus, ms: u64, detail: &str) -> SourceResult {
        SourceResult {
            source_id: id.into(),
            source_name: format!("{id} (name)"),
            status: status as i32,
            latency: prost_types::Duration::try_from(Duration::from_millis(ms)).ok(),
            fact_count: 3,
            detail: detail.into(),
            from_cache: true,
            ..Default::default()
        }
    }

    /// The view reads the real messages' fields under their tags, and
    /// skips the rest.
    #[test]
    fn the_view_reads_a_real_report() {
        let report = Report {
            report_id: "r-1".into(),
            household_number: "510703-000001".into(),
            members: vec![Member::default(); 3],
            sources: vec![
                source(HOUSEHOLD_SOURCE, SourceStatus::Ok, 5, ""),
                source("land-bank", SourceStatus::Timeout, 80, "no answer in 2 s"),
            ],
            verdict_reason: "because".into(),
            ..Default::default()
        };
        let bytes = hedui_proto::v1::VerifyResponse::new(report.clone()).encode_to_vec();
        let read = view::VerifyResponse::decode(bytes.as_slice()).unwrap();
        let sources = read.report.unwrap().sources;
        assert_eq!(sources.len(), 2);
        for (seen, sent) in sources.iter().zip(&report.sources) {
            assert_eq!(seen.source_id, sent.source_id);
            assert_eq!(seen.status, sent.status);
            assert_eq!(seen.latency, sent.latency);
            assert_eq!(seen.detail, sent.detail);
        }
    }

    #[test]
    fn a_report_with_a_source_that_did_not_answer_is_a_failure() {
        let good = view::Report {
            sources: vec![
                view::SourceResult {
                    source_id: HOUSEHOLD_SOURCE.into(),
                    status: SourceStatus::Ok as i32,
                    latency: prost_types::Duration::try_from(Duration::from_millis(5)).ok(),
                    detail: String::new(),
                },
                view::SourceResult {
                    source_id: "tax".into(),
                    status: SourceStatus::NoRecord as i32,
                    latency: prost_types::Duration::try_from(Duration::from_millis(30)).ok(),
                    detail: String::new(),
                },
            ],
        };
        let inner = inner_of(&good, false).unwrap().unwrap();
        assert_eq!(inner.slowest, Duration::from_millis(30));
        assert_eq!(inner.path, Duration::from_millis(35));
        let inner = inner_of(&good, true).unwrap().unwrap();
        assert_eq!(inner.path, Duration::from_millis(30));

        let mut bad = good.clone();
        bad.sources[1].status = SourceStatus::Timeout as i32;
        bad.sources[1].detail = "late".into();
        let e = inner_of(&bad, false).unwrap_err().to_string();
        assert!(e.contains("1 source(s) did not answer, e.g. tax"), "{e}");
        assert!(e.contains("late"), "{e}");
        assert!(inner_of(&view::Report::default(), false).is_err());
    }
}
