//! Security (issue 5), with the broker as its own process serving mTLS:
//! - the TLS negative matrix: no client certificate, a certificate of
//!   another CA, an expired one, a revoked one, one whose identity has no
//!   role, a TLS 1.1 ClientHello: each refused, no source asked, each
//!   refusal in the audit log;
//! - roles: a platform calling the `AuditService`, an auditor calling
//!   `Verify`, an admin calling `Verify`, a platform verifying for a
//!   purpose it is not given, platform A reading platform B's report: each
//!   refused (the last as `NOT_FOUND`, word for word as a missing report);
//! - quotas: a client over its rate gets `RESOURCE_EXHAUSTED` with a
//!   retry-after hint while another client's verifications all succeed.

use std::{path::Path, time::Duration};

use hedui::security::certs::{DevCa, Issued, Usage};
use hedui_mock_agencies::{
    population::{Population, PopulationConfig},
    truth::TruthPolicy,
};
use hedui_proto::v1::{
    AuditFilter, AuditRecordKind, GetReportRequest, Purpose, QueryRecordsRequest,
    VerificationRequest, VerifyRequest, audit_service_client::AuditServiceClient,
    verification_service_client::VerificationServiceClient,
};
use hedui_tests::{BrokerProcess, SEED, china_today, total_lookups};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

const HOUSEHOLDS: usize = 40;
const PLATFORM_A: &str = "spiffe://hedui.test/platform/a";
const PLATFORM_B: &str = "spiffe://hedui.test/platform/b";
const PLATFORM_Q: &str = "spiffe://hedui.test/platform/quota";
const AUDITOR: &str = "spiffe://hedui.test/auditor";
const ADMIN: &str = "spiffe://hedui.test/admin";

/// A broker serving mTLS with certificates of one CA, and the clients the
/// tests present.
struct Fixture {
    broker: BrokerProcess,
    ca: DevCa,
    dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

impl Fixture {
    /// The broker, with `revoked` certificates of its CA in its CRL.
    async fn start(ca: DevCa, revoked: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ca
            .issue(&["localhost", "127.0.0.1"], Usage::Server)
            .unwrap();
        let cert = write(dir.path(), "broker.pem", &server.cert_pem);
        let key = write(dir.path(), "broker-key.pem", &server.key_pem);
        let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
        let crl = write(dir.path(), "crl.pem", &ca.crl(revoked).unwrap());
        let config = format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = [{ca_file:?}]\ncrl = [{crl:?}]\n\n\
             [clients.\"{PLATFORM_A}\"]\nrole = \"platform\"\npurposes = [\"dibao_application\", \"dibao_review\"]\n\n\
             [clients.\"{PLATFORM_B}\"]\nrole = \"platform\"\n\n\
             [clients.\"{PLATFORM_Q}\"]\nrole = \"platform\"\nrate_per_s = 0.5\nburst = 2\n\n\
             [clients.\"{AUDITOR}\"]\nrole = \"auditor\"\n\n\
             [clients.\"{ADMIN}\"]\nrole = \"admin\"\n\n\
             [simulation]\nhouseholds = {HOUSEHOLDS}\nlatency_p50_ms = 0\nlatency_p99_ms = 0\n"
        );
        let broker = BrokerProcess::start(&config, &["--simulation-control", "127.0.0.1:0"])
            .await
            .unwrap();
        assert!(broker.url.starts_with("https://"), "{}", broker.url);
        Self { broker, ca, dir }
    }

    fn control(&self) -> &str {
        self.broker.simulation_control.as_deref().unwrap()
    }

    /// A channel presenting `client` (or no certificate), trusting the
    /// broker's CA.
    async fn channel(&self, client: Option<&Issued>) -> Result<Channel, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.cert_pem()));
        if let Some(c) = client {
            tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        Channel::from_shared(self.broker.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    fn client(&self, identity: &str) -> Issued {
        self.ca.issue(&[identity], Usage::Client).unwrap()
    }

    async fn verifier(&self, identity: &str) -> VerificationServiceClient<Channel> {
        VerificationServiceClient::new(self.channel(Some(&self.client(identity))).await.unwrap())
    }

    async fn auditor(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel(Some(&self.client(AUDITOR))).await.unwrap())
    }

    /// Denied records with `outcome`, waiting up to 10 s for `at_least`.
    async fn denied(&self, outcome: &str, at_least: usize) -> usize {
        let mut auditor = self.auditor().await;
        let mut seen = 0;
        for _ in 0..100 {
            seen = auditor
                .query_records(QueryRecordsRequest {
                    auditor_id: "inspector-1".into(),
                    filter: Some(AuditFilter {
                        outcome: outcome.into(),
                        kind: AuditRecordKind::Denied as i32,
                        ..Default::default()
                    }),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .records
                .len();
            if seen >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    }
}

fn applicant() -> String {
    Population::generate(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: china_today().parse().unwrap(),
    })
    .truth(&TruthPolicy::default())[0]
        .applicant_id
        .clone()
}

fn verify(purpose: Purpose) -> VerifyRequest {
    VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: applicant(),
            consent_reference: "SQ-2026-000123".into(),
            purpose: purpose as i32,
            operator_id: "case-worker-07".into(),
            ..Default::default()
        }),
    }
}

/// Calls `Verify` as `client` over a fresh connection; the error status,
/// or `None` when it succeeded.
async fn try_verify(f: &Fixture, client: Option<&Issued>) -> Option<String> {
    let channel = match f.channel(client).await {
        Ok(c) => c,
        Err(e) => return Some(format!("connect: {e:?}")),
    };
    match VerificationServiceClient::new(channel)
        .verify(verify(Purpose::DibaoApplication))
        .await
    {
        Ok(_) => None,
        Err(s) => Some(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A TLS 1.1 ClientHello (no supported_versions extension), as an old
/// client would send.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]);
    body.push(0); // no session id
    body.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0, 0, u8::try_from(body.len()).unwrap()];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0, u8::try_from(handshake.len()).unwrap()];
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_negative_matrix_is_refused_and_audited_with_no_source_asked() {
    let ca = DevCa::new("hedui test CA").unwrap();
    let revoked = ca.issue(&[PLATFORM_A], Usage::Client).unwrap();
    let f = Fixture::start(ca, &[revoked.serial]).await;
    let today = chrono::Utc::now().date_naive();
    let expired =
        f.ca.issue_between(
            &[PLATFORM_A],
            Usage::Client,
            today - chrono::TimeDelta::days(400),
            today - chrono::TimeDelta::days(2),
        )
        .unwrap();
    let foreign = DevCa::new("another CA")
        .unwrap()
        .issue(&[PLATFORM_A], Usage::Client)
        .unwrap();
    let stranger = f.client("spiffe://hedui.test/platform/stranger");

    // The good certificate works: the fixture is not refusing everything.
    assert_eq!(try_verify(&f, Some(&f.client(PLATFORM_A))).await, None);
    hedui_tests::reset_stats(f.control()).await.unwrap();

    for (what, client) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
        ("a revoked certificate", Some(&revoked)),
    ] {
        let refused = try_verify(&f, client).await;
        assert!(refused.is_some(), "{what}: accepted");
    }
    let refused = try_verify(&f, Some(&stranger))
        .await
        .expect("wrong name accepted");
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    assert!(refused.contains("stranger"), "{refused}");

    // TLS 1.1: the broker answers with an alert (or closes), never a
    // ServerHello.
    let addr = f.broker.url.trim_start_matches("https://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    assert!(
        n == 0 || answer[0] == 0x15,
        "not an alert: {:?}",
        &answer[..n]
    );

    assert_eq!(
        total_lookups(f.control()).await.unwrap(),
        0,
        "a source was asked"
    );
    // Four refused handshakes and the TLS 1.1 attempt, then the identity
    // without a role (the connection got as far as a request).
    let tls_refused = f.denied("tls_refused", 5).await;
    assert!(
        tls_refused >= 5,
        "{tls_refused} refused handshakes recorded"
    );
    assert!(f.denied("unauthenticated", 1).await >= 1);
    f.broker.stop().await;
    drop(f.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_may_not_read_the_audit_log() {
    let f = Fixture::start(DevCa::new("t").unwrap(), &[]).await;
    let mut as_platform =
        AuditServiceClient::new(f.channel(Some(&f.client(PLATFORM_A))).await.unwrap());
    let e = as_platform
        .query_records(QueryRecordsRequest {
            auditor_id: "inspector-1".into(),
            filter: Some(AuditFilter::default()),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("auditor"), "{}", e.message());
    assert_eq!(f.denied("permission_denied", 1).await, 1);
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_or_an_admin_may_not_verify() {
    let f = Fixture::start(DevCa::new("t").unwrap(), &[]).await;
    hedui_tests::reset_stats(f.control()).await.unwrap();
    for who in [AUDITOR, ADMIN] {
        let e = f
            .verifier(who)
            .await
            .verify(verify(Purpose::DibaoApplication))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert!(e.message().contains("platform"), "{}", e.message());
    }
    assert_eq!(total_lookups(f.control()).await.unwrap(), 0);
    assert_eq!(f.denied("permission_denied", 2).await, 2);
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_verifies_only_for_its_purposes() {
    let f = Fixture::start(DevCa::new("t").unwrap(), &[]).await;
    hedui_tests::reset_stats(f.control()).await.unwrap();
    let e = f
        .verifier(PLATFORM_A)
        .await
        .verify(verify(Purpose::MedicalAssistance))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().starts_with("purpose:"), "{}", e.message());
    assert_eq!(total_lookups(f.control()).await.unwrap(), 0);
    assert_eq!(f.denied("permission_denied", 1).await, 1);
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_cannot_read_another_platforms_report() {
    let f = Fixture::start(DevCa::new("t").unwrap(), &[]).await;
    let mut a = f.verifier(PLATFORM_A).await;
    let report = a
        .verify(verify(Purpose::DibaoApplication))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let get = |id: &str| GetReportRequest {
        report_id: id.to_owned(),
    };
    // Its owner reads it again.
    assert!(a.get_report(get(&report.report_id)).await.is_ok());
    let mut b = f.verifier(PLATFORM_B).await;
    let theirs = b.get_report(get(&report.report_id)).await.unwrap_err();
    let missing_id = "00000000-0000-4000-8000-000000000000";
    let missing = b.get_report(get(missing_id)).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    // Word for word the answer for a report that does not exist.
    assert_eq!(
        theirs.message().replace(&report.report_id, "ID"),
        missing.message().replace(missing_id, "ID")
    );
    assert_eq!(f.denied("not_owner", 1).await, 1);
    f.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_quota_is_refused_while_another_is_served() {
    let f = Fixture::start(DevCa::new("t").unwrap(), &[]).await;
    let mut q = f.verifier(PLATFORM_Q).await;
    let mut b = f.verifier(PLATFORM_B).await;
    let (mut refused, mut hinted, mut served_b) = (0, 0, 0);
    for _ in 0..6 {
        // Q, at 0.5/s with a burst of 2, runs out; B has no quota.
        match q.verify(verify(Purpose::DibaoApplication)).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                refused += 1;
                if e.metadata().get("retry-after-ms").is_some() {
                    hinted += 1;
                }
            }
        }
        b.verify(verify(Purpose::DibaoApplication)).await.unwrap();
        served_b += 1;
    }
    assert!(refused >= 3, "only {refused} of Q's 6 calls refused");
    assert_eq!(hinted, refused, "every refusal says when to retry");
    assert_eq!(served_b, 6);
    f.broker.stop().await;
}
