//! `hedui consent register|show|revoke`: authorization letters on a running
//! broker, over gRPC.

use anyhow::Context;
use chrono::{Datelike, NaiveDate};
use hedui_proto::v1::{
    CivilDate, Consent, GetConsentRequest, Purpose, RegisterConsentRequest, RevokeConsentRequest,
    consent_service_client::ConsentServiceClient,
};
use tonic::transport::Channel;

use crate::{client::PurposeArg, verify::purpose_name};

/// `hedui consent ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ConsentCommand {
    /// Register an authorization letter (授权书) the household signed.
    Register(RegisterArgs),
    /// Print a registered letter.
    Show {
        /// The letter's reference.
        reference: String,
        /// The platform the letter belongs to (an admin must name it;
        /// default: the caller's own).
        #[arg(long)]
        platform: Option<String>,
        /// The broker's address.
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "HEDUI_SERVER")]
        server: String,
    },
    /// Revoke a letter: verifications naming it are refused from now on.
    Revoke {
        /// The letter's reference.
        reference: String,
        /// The platform the letter belongs to (an admin must name it;
        /// default: the caller's own).
        #[arg(long)]
        platform: Option<String>,
        /// Who records the revocation.
        #[arg(long)]
        operator: Option<String>,
        /// The broker's address.
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "HEDUI_SERVER")]
        server: String,
    },
}

/// What `hedui consent register` sends.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// The letter's reference, as verifications will name it (`--consent`).
    #[arg(long)]
    pub reference: String,
    /// A person the letter covers: an 18-character resident identity
    /// number (repeat for each).
    #[arg(long = "person", required = true)]
    pub persons: Vec<String>,
    /// A purpose the letter allows (repeat for each).
    #[arg(long = "purpose", value_enum, required = true)]
    pub purposes: Vec<PurposeArg>,
    /// First day the letter is valid, YYYY-MM-DD (China date).
    #[arg(long)]
    pub from: NaiveDate,
    /// Last day the letter is valid, YYYY-MM-DD (China date), included.
    #[arg(long)]
    pub until: NaiveDate,
    /// The case worker who took the letter.
    #[arg(long)]
    pub operator: String,
    /// The platform that may use the letter (an admin registering on its
    /// behalf; default: the caller's own).
    #[arg(long)]
    pub platform: Option<String>,
    /// The broker's address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "HEDUI_SERVER")]
    pub server: String,
}

fn civil(d: NaiveDate) -> CivilDate {
    CivilDate::ymd(
        d.year(),
        i32::try_from(d.month()).unwrap_or_default(),
        i32::try_from(d.day()).unwrap_or_default(),
    )
}

impl RegisterArgs {
    /// The letter these arguments describe.
    pub fn consent(&self) -> Consent {
        Consent {
            reference: self.reference.clone(),
            person_ids: self.persons.clone(),
            purposes: self
                .purposes
                .iter()
                .map(|p| Purpose::from(*p) as i32)
                .collect(),
            valid_from: Some(civil(self.from)),
            valid_until: Some(civil(self.until)),
            operator_id: self.operator.clone(),
            platform: self.platform.clone().unwrap_or_default(),
            registered_at: None,
            revoked_at: None,
        }
    }
}

async fn connect(server: &str) -> anyhow::Result<ConsentServiceClient<Channel>> {
    let channel = Channel::from_shared(server.to_owned())
        .with_context(|| format!("--server {server:?} is not a valid URL"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {server}"))?;
    Ok(ConsentServiceClient::new(channel))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map_or_else(
            || "-".to_owned(),
            |d| {
                d.with_timezone(&crate::time::china())
                    .format("%Y-%m-%d %H:%M:%S %:z")
                    .to_string()
            },
        )
}

/// A letter as text: one field a line. Identity numbers are printed in
/// full: the caller registered them.
pub fn render(c: &Consent) -> String {
    let purposes: Vec<String> = c.purposes.iter().map(|p| purpose_name(*p)).collect();
    let mut out = format!(
        "letter      {}\nplatform    {}\nvalid       {} to {}\npurposes    {}\noperator    {}\nregistered  {}\n",
        c.reference,
        c.platform,
        c.valid_from.unwrap_or_default(),
        c.valid_until.unwrap_or_default(),
        purposes.join(", "),
        c.operator_id,
        time(c.registered_at.as_ref()),
    );
    if c.revoked_at.is_some() {
        out.push_str(&format!("revoked     {}\n", time(c.revoked_at.as_ref())));
    }
    out.push_str(&format!("persons     {}\n", c.person_ids.len()));
    for p in &c.person_ids {
        out.push_str(&format!("  {p}\n"));
    }
    out
}

/// Runs a `hedui consent` command and prints the letter.
///
/// # Errors
/// When the broker cannot be reached or refuses the request.
pub async fn run(command: ConsentCommand) -> anyhow::Result<()> {
    let consent = match command {
        ConsentCommand::Register(args) => {
            let mut client = connect(&args.server).await?;
            client
                .register_consent(RegisterConsentRequest {
                    consent: Some(args.consent()),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .consent
        }
        ConsentCommand::Show {
            reference,
            platform,
            server,
        } => {
            let mut client = connect(&server).await?;
            client
                .get_consent(GetConsentRequest {
                    reference,
                    platform: platform.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .consent
        }
        ConsentCommand::Revoke {
            reference,
            platform,
            operator,
            server,
        } => {
            let mut client = connect(&server).await?;
            client
                .revoke_consent(RevokeConsentRequest {
                    reference,
                    platform: platform.unwrap_or_default(),
                    operator_id: operator.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .consent
        }
    };
    let consent = consent.context("the broker answered without the letter")?;
    print!("{}", render(&consent));
    Ok(())
}
