//! The CLI's client commands: `hedui verify` and `hedui report` call a
//! running broker over gRPC and print the report as text.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use hedui_proto::v1::{
    GetReportRequest, Purpose, StreamVerifyRequest, VerificationRequest, VerifyRequest,
    WatchReportRequest, stream_verify_response::Event,
    verification_service_client::VerificationServiceClient,
};
use tonic::transport::Channel;

use crate::render;

/// Purposes as the CLI writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PurposeArg {
    /// First Dibao application.
    DibaoApplication,
    /// Periodic Dibao review.
    DibaoReview,
    /// Extreme-poverty support.
    ExtremePoverty,
    /// Low-income determination.
    LowIncome,
    /// Temporary assistance.
    TemporaryAssistance,
    /// Medical assistance.
    MedicalAssistance,
    /// Education assistance.
    EducationAssistance,
}

impl From<PurposeArg> for Purpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::DibaoApplication => Purpose::DibaoApplication,
            PurposeArg::DibaoReview => Purpose::DibaoReview,
            PurposeArg::ExtremePoverty => Purpose::ExtremePoverty,
            PurposeArg::LowIncome => Purpose::LowIncome,
            PurposeArg::TemporaryAssistance => Purpose::TemporaryAssistance,
            PurposeArg::MedicalAssistance => Purpose::MedicalAssistance,
            PurposeArg::EducationAssistance => Purpose::EducationAssistance,
        }
    }
}

/// What `hedui verify` asks.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The applicant's 18-digit resident identity number.
    pub applicant_id: String,
    /// Reference of the signed authorization letter (授权书).
    #[arg(long)]
    pub consent: String,
    /// Why the household is verified.
    #[arg(long, value_enum, default_value = "dibao-application")]
    pub purpose: PurposeArg,
    /// The acting case worker's id.
    #[arg(long)]
    pub operator: String,
    /// How long sources may take, in milliseconds (default: the broker's).
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// A member the household declares (repeat for each).
    #[arg(long = "member")]
    pub members: Vec<String>,
    /// Print each source's answer as it lands, then the report.
    #[arg(long)]
    pub stream: bool,
    /// How to reach the broker.
    #[command(flatten)]
    pub connect: Connect,
}

impl VerifyArgs {
    /// The request these arguments describe.
    pub fn request(&self) -> VerificationRequest {
        VerificationRequest {
            applicant_id: self.applicant_id.clone(),
            consent_reference: self.consent.clone(),
            purpose: Purpose::from(self.purpose) as i32,
            operator_id: self.operator.clone(),
            deadline: self
                .deadline_ms
                .and_then(|ms| prost_types::Duration::try_from(Duration::from_millis(ms)).ok()),
            max_age: None,
            declared_member_ids: self.members.clone(),
        }
    }
}

/// How the CLI reaches a running broker: its address and, over TLS, the
/// CA to trust and the client certificate to present (from `--certs DIR`
/// as `hedui certs dev` writes it, or `--ca`, `--cert`, `--key`).
#[derive(Debug, Clone, clap::Args)]
pub struct Connect {
    /// The broker's address: `https://` for mTLS, `http://` for a broker
    /// in the plaintext development mode.
    #[arg(long, default_value = "https://127.0.0.1:50051", env = "HEDUI_SERVER")]
    pub server: String,
    /// A directory written by `hedui certs dev`; the client certificate
    /// used is the one named by `--as`.
    #[arg(long, env = "HEDUI_CERTS", default_value = "hedui-dev-certs")]
    pub certs: PathBuf,
    /// Which client of `--certs` to be: platform, platform-b, auditor,
    /// admin (default: the one the command is for).
    #[arg(long = "as")]
    pub as_client: Option<String>,
    /// The CA certificate (PEM) the broker's certificate chains to
    /// (instead of `--certs`).
    #[arg(long, env = "HEDUI_CA", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM).
    #[arg(long, env = "HEDUI_CERT", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "HEDUI_KEY", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
}

impl Connect {
    /// A plaintext connection to `server` (tests, the plaintext mode).
    pub fn plaintext(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            certs: PathBuf::from("hedui-dev-certs"),
            as_client: None,
            ca: None,
            cert: None,
            key: None,
        }
    }

    /// The (CA, certificate, key) files to use.
    fn files(&self, default_as: &str) -> (PathBuf, PathBuf, PathBuf) {
        let who = self.as_client.as_deref().unwrap_or(default_as);
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
            _ => (
                self.certs.join("ca.pem"),
                self.certs.join(format!("{who}.pem")),
                self.certs.join(format!("{who}-key.pem")),
            ),
        }
    }

    /// A channel to the broker, as the platform client unless `--as`
    /// says otherwise.
    ///
    /// # Errors
    /// As [`Connect::channel_as`].
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        self.channel_as("platform").await
    }

    /// A channel to the broker, as the `--certs` client `default_as`
    /// unless `--as` says otherwise.
    ///
    /// # Errors
    /// When the address is not a URL, a certificate file cannot be read
    /// (naming the flag and the file), or the broker cannot be reached.
    pub async fn channel_as(&self, default_as: &str) -> anyhow::Result<Channel> {
        let server = &self.server;
        let mut endpoint = Channel::from_shared(server.clone())
            .with_context(|| format!("--server {server:?} is not a valid URL"))?;
        if server.starts_with("https://") {
            let (ca, cert, key) = self.files(default_as);
            let read = |flag: &str, path: &PathBuf| {
                std::fs::read(path).with_context(|| {
                    format!(
                        "{flag}: cannot read {} (mint development certificates with `hedui certs dev`)",
                        path.display()
                    )
                })
            };
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read("--ca", &ca)?))
                .identity(tonic::transport::Identity::from_pem(
                    read("--cert", &cert)?,
                    read("--key", &key)?,
                ));
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("TLS settings for {server}"))?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the broker at {server}"))
    }
}

async fn connect(connect: &Connect) -> anyhow::Result<VerificationServiceClient<Channel>> {
    let channel = connect.channel().await?;
    Ok(VerificationServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// `hedui verify`: verifies and prints the report.
///
/// # Errors
/// When the broker cannot be reached or refuses the request.
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.connect).await?;
    if args.stream {
        let mut stream = client
            .stream_verify(StreamVerifyRequest {
                request: Some(args.request()),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(event) = stream.message().await.map_err(status_error)? {
            match event.event {
                Some(Event::HouseholdResolved(h)) => println!(
                    "report {}: {} member(s), asking {} sources",
                    h.report_id,
                    h.members.len(),
                    h.source_ids.len()
                ),
                Some(Event::SourceResult(s)) => println!(
                    "  {:<24} {}",
                    s.source_id,
                    hedui_proto::v1::SourceStatus::try_from(s.status)
                        .map(|s| s
                            .as_str_name()
                            .trim_start_matches("SOURCE_STATUS_")
                            .to_owned())
                        .unwrap_or_default()
                ),
                Some(Event::Report(r)) => print!("\n{}", render::text(&r)),
                None => {}
            }
        }
        return Ok(());
    }
    let report = client
        .verify(VerifyRequest {
            request: Some(args.request()),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .report
        .context("the broker answered without a report")?;
    print!("{}", render::text(&report));
    Ok(())
}

/// `hedui report`: prints a stored report; with `watch`, then its
/// completion when it waits for late answers.
///
/// # Errors
/// When the broker cannot be reached or has no such report.
pub async fn report(server: &Connect, report_id: &str, watch: bool) -> anyhow::Result<()> {
    let mut client = connect(server).await?;
    if !watch {
        let report = client
            .get_report(GetReportRequest {
                report_id: report_id.to_owned(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .report
            .context("the broker answered without a report")?;
        print!("{}", render::text(&report));
        return Ok(());
    }
    let mut stream = client
        .watch_report(WatchReportRequest {
            report_id: report_id.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status_error)? {
        let report = message
            .report
            .context("the broker answered without a report")?;
        print!("{}", render::text(&report));
    }
    Ok(())
}

/// `hedui review`: re-verifies every household the caller has enrolled
/// (resuming an unfinished review), with a progress bar.
///
/// # Errors
/// When the broker cannot be reached or refuses the review.
pub async fn review(server: &Connect, concurrency: u32) -> anyhow::Result<()> {
    use hedui_proto::v1::{ReviewRequest, watch_service_client::WatchServiceClient};
    let channel = server.channel().await?;
    let mut client = WatchServiceClient::new(channel);
    let mut stream = client
        .review(ReviewRequest { concurrency })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} households · {msg}",
        )
        .expect("a valid template"),
    );
    let mut last = None;
    while let Some(p) = stream.message().await.map_err(status_error)? {
        if last.is_none() && p.resumed {
            bar.println(format!(
                "resuming review {} ({} of {} done)",
                p.review_id, p.done, p.total
            ));
        }
        bar.set_length(u64::from(p.total));
        bar.set_position(u64::from(p.done));
        bar.set_message(format!(
            "{} alerts, {} failed, cache {}/{}",
            p.alerts, p.failed, p.cache_hits, p.source_answers
        ));
        last = Some(p);
    }
    bar.finish();
    let p = last.context("the broker sent no progress")?;
    println!(
        "review {}: {} of {} households done, {} alerts raised, {} failed{}",
        p.review_id,
        p.done,
        p.total,
        p.alerts,
        p.failed,
        if p.finished {
            ""
        } else {
            "; run hedui review again to resume"
        }
    );
    if p.finished {
        Ok(())
    } else {
        anyhow::bail!("the review is not finished")
    }
}
