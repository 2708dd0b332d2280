//! Authentication toward sources (issue 5, item 6) end to end: the
//! simulated agencies serve over TLS, require a client certificate from the
//! test CA and a bearer token; the broker reaches them with per-source `tls`
//! and `auth` blocks, over the gRPC, peer and HTTP/JSON transports.
//!
//! The sources configured right answer; those with a wrong token, no token,
//! no client certificate or a CA that does not match fail, each with a
//! non-OK status that names the authentication or TLS problem, while the
//! report still comes back with every other source. No token is ever in
//! the broker's log or in the report.

use std::{collections::BTreeMap, path::Path, time::Duration};

use hedui_adapters::catalog::Catalog;
use hedui_mock_agencies::population::{Population, PopulationConfig};
use hedui_proto::v1::{Purpose, Report, SourceStatus, VerificationRequest, VerifyRequest};
use hedui_tests::{AgencyProcess, BrokerProcess, SEED, china_today, unique_name};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

const HOUSEHOLDS: usize = 40;

/// The test's certificates and secrets, as files in a directory.
struct Pki {
    dir: tempfile::TempDir,
    /// The token the agencies require.
    token: String,
    /// Another token.
    wrong_token: String,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Mints a CA, a server certificate for 127.0.0.1 and localhost and a
    /// client certificate signed by it, and another CA with nothing to do
    /// with them; writes the tokens.
    fn mint() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let ca_of = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let ca = ca_of("hedui test departments CA");
        write("ca.pem", &ca.pem());
        let other = ca_of("some other CA");
        write("other-ca.pem", &other.pem());

        let mut server =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "dachuan agencies");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        write(
            "server.pem",
            &server.signed_by(&server_key, &ca).unwrap().pem(),
        );
        write("server-key.pem", &server_key.serialize_pem());

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "hedui broker dachuan");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        write(
            "client.pem",
            &client.signed_by(&client_key, &ca).unwrap().pem(),
        );
        write("client-key.pem", &client_key.serialize_pem());

        let token = unique_name("tok3n-right");
        let wrong_token = unique_name("tok3n-wrong");
        write("token", &format!("{token}\n"));
        write("wrong-token", &wrong_token);
        // The provident fund's REST API has its own token (shipped
        // configuration), read here from a file too.
        write("pf-token", hedui_mock_agencies::http::PF_TOKEN);
        Pki {
            dir,
            token,
            wrong_token,
        }
    }

    /// A `tls` block: the CA at `ca`, with the client certificate or not.
    fn tls(&self, ca: &str, client_cert: bool) -> String {
        if client_cert {
            format!(
                "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
                self.path(ca),
                self.path("client.pem"),
                self.path("client-key.pem")
            )
        } else {
            format!("tls = {{ ca = {:?} }}", self.path(ca))
        }
    }

    fn auth(&self, token_file: &str) -> String {
        format!(
            "auth = {{ bearer_token_file = {:?} }}",
            self.path(token_file)
        )
    }
}

fn grpc_entry(id: &str, endpoint: &str, tls: &str, auth: &str) -> String {
    format!(
        "[[sources]]\nid = \"{id}\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"{endpoint}\"\n{tls}\n{auth}\n"
    )
}

/// The shipped HTTP/JSON entry of `id`, its inline header token replaced by
/// `auth` and `tls` added.
fn http_entry(agencies: &AgencyProcess, id: &str, tls: &str, auth: &str) -> String {
    let entry = agencies.http_entry(id).unwrap();
    assert!(entry.contains("url = \"https://"), "{entry}");
    let lines: Vec<String> = entry
        .lines()
        .filter(|l| !l.starts_with("auth = "))
        .map(|l| {
            if l == "[sources.transport]" {
                format!("{l}\n{tls}\n{auth}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

fn request(applicant_id: &str) -> VerifyRequest {
    VerifyRequest {
        request: Some(VerificationRequest {
            applicant_id: applicant_id.to_owned(),
            consent_reference: "SQ-2026-000777".into(),
            purpose: Purpose::DibaoApplication as i32,
            operator_id: "case-worker-07".into(),
            deadline: Duration::from_secs(10).try_into().ok(),
            max_age: None,
            declared_member_ids: Vec::new(),
        }),
    }
}

fn status_of(r: &Report, id: &str) -> (SourceStatus, String) {
    let s = r
        .sources
        .iter()
        .find(|s| s.source_id == id)
        .unwrap_or_else(|| panic!("{id} is not in the report"));
    (s.status(), s.detail.clone())
}

fn assert_no_secret(what: &str, text: &str, pki: &Pki) {
    for secret in [&pki.token, &pki.wrong_token] {
        assert!(!text.contains(secret.as_str()), "a token is in {what}");
    }
    assert!(
        !text.contains(hedui_mock_agencies::http::PF_TOKEN),
        "the provident fund's token is in {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_behind_tls_and_tokens_answer_and_wrong_credentials_are_named() {
    let today = china_today();
    let pki = Pki::mint();
    let agencies = AgencyProcess::start(
        HOUSEHOLDS,
        &today,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server-key.pem"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
            "--bearer-token-file",
            &pki.path("token"),
        ],
    )
    .await
    .unwrap();
    for (id, url) in agencies.grpc.iter().chain(agencies.http.iter()) {
        assert!(url.starts_with("https://127.0.0.1:"), "{id}: {url}");
    }

    let good_tls = pki.tls("ca.pem", true);
    let good_auth = pki.auth("token");
    let mut replace: BTreeMap<String, String> = BTreeMap::new();
    // Every source over gRPC with the right credentials ...
    for spec in Catalog::dachuan().iter() {
        let endpoint = &agencies.grpc[&spec.id];
        replace.insert(
            spec.id.clone(),
            grpc_entry(&spec.id, endpoint, &good_tls, &good_auth),
        );
    }
    // ... but these, each wrong in one way: a wrong token, no token, no
    // client certificate, a CA that does not match.
    let e = |id: &str| agencies.grpc[id].clone();
    replace.insert(
        "traffic-police".into(),
        grpc_entry(
            "traffic-police",
            &e("traffic-police"),
            &good_tls,
            &pki.auth("wrong-token"),
        ),
    );
    replace.insert(
        "forestry".into(),
        grpc_entry("forestry", &e("forestry"), &good_tls, ""),
    );
    replace.insert(
        "housing-management".into(),
        grpc_entry(
            "housing-management",
            &e("housing-management"),
            &pki.tls("ca.pem", false),
            &good_auth,
        ),
    );
    replace.insert(
        "agriculture".into(),
        grpc_entry(
            "agriculture",
            &e("agriculture"),
            &pki.tls("other-ca.pem", true),
            &good_auth,
        ),
    );
    // The peer transport, with the right credentials, toward the civil
    // affairs source (an AdapterService like a peer broker's).
    replace.insert(
        "civil-affairs".into(),
        format!(
            "[[sources]]\nid = \"civil-affairs\"\n[sources.transport]\ntype = \"peer\"\nendpoint = \"{}\"\nsources = [\"civil-affairs\"]\n{good_tls}\n{good_auth}\n",
            e("civil-affairs")
        ),
    );
    // HTTP/JSON: the provident fund with the right CA, client certificate
    // and its token from a file; employment with a CA that does not match.
    replace.insert(
        "provident-fund".into(),
        http_entry(
            &agencies,
            "provident-fund",
            &good_tls,
            &pki.auth("pf-token"),
        ),
    );
    replace.insert(
        "employment".into(),
        http_entry(
            &agencies,
            "employment",
            &pki.tls("other-ca.pem", true),
            "auth = { type = \"header\", name = \"X-Api-Key\", value = \"employment-test-key\" }",
        ),
    );
    let config = agencies.sources(&replace, &[]);
    assert_no_secret("the broker's configuration", &config, &pki);

    let log_path = pki.dir.path().join("broker.log");
    let broker = BrokerProcess::start_logged(&config, &[], &log_path)
        .await
        .unwrap();

    let pop = Population::shared(&PopulationConfig {
        seed: SEED,
        households: HOUSEHOLDS,
        today: today.parse().unwrap(),
    });
    let applicant = pop.household_at(0).unwrap().applicant().id().to_owned();
    let report = broker
        .client()
        .await
        .unwrap()
        .verify(request(&applicant))
        .await
        .expect("the verification returns a report")
        .into_inner()
        .report
        .expect("report");

    let failing = [
        (
            "traffic-police",
            ["authentication", "wrong bearer token"].as_slice(),
        ),
        ("forestry", ["authentication", "no bearer token"].as_slice()),
        // TLS 1.3 refuses a missing client certificate after the client's
        // handshake: the alert (CertificateRequired) or a broken pipe,
        // whichever comes first; the adapter says it was TLS without one.
        (
            "housing-management",
            ["over TLS (no client certificate configured)"].as_slice(),
        ),
        ("agriculture", ["certificate", "UnknownIssuer"].as_slice()),
        (
            "employment",
            ["tls handshake failed", "UnknownIssuer"].as_slice(),
        ),
    ];
    for (id, words) in failing {
        let (status, detail) = status_of(&report, id);
        eprintln!("{id}: {status:?}: {detail}");
        assert!(
            !matches!(status, SourceStatus::Ok | SourceStatus::NoRecord),
            "{id} answered ({status:?}) with wrong credentials"
        );
        for w in words {
            assert!(
                detail.to_lowercase().contains(&w.to_lowercase()),
                "{id}: {status:?} {detail:?} does not say {w:?}"
            );
        }
    }
    for spec in Catalog::dachuan().iter() {
        if failing.iter().any(|(id, _)| *id == spec.id) {
            continue;
        }
        let (status, detail) = status_of(&report, &spec.id);
        assert!(
            matches!(status, SourceStatus::Ok | SourceStatus::NoRecord),
            "{}: {status:?} {detail}",
            spec.id
        );
    }
    assert_eq!(status_of(&report, "public-security").0, SourceStatus::Ok);

    // No token anywhere: not in the report, not in the broker's log.
    assert_no_secret("the report", &format!("{report:?}"), &pki);
    broker.stop().await;
    agencies.stop().await;
    let log = read_log(&log_path);
    assert!(!log.is_empty(), "the broker logged nothing");
    assert_no_secret("the broker's log", &log, &pki);
}

/// A broker that cannot build a source names the source, the parameter and
/// the path, and never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_bad_credentials_is_not_built_and_says_why() {
    let pki = Pki::mint();
    let entry = |tls: &str, auth: &str| {
        format!(
            "[[sources]]\nid = \"traffic-police\"\n[sources.transport]\ntype = \"grpc\"\nendpoint = \"https://127.0.0.1:9\"\n{tls}\n{auth}\n"
        )
    };
    let cases = [
        (
            entry(
                &pki.tls("ca.pem", true),
                &format!("auth = {{ bearer_token = {:?} }}", pki.token),
            ),
            vec![
                "traffic-police",
                "auth.bearer_token",
                "files or the environment",
            ],
        ),
        (
            entry(&pki.tls("ca.pem", true), &pki.auth("no-such-token")),
            vec!["traffic-police", "auth.bearer_token_file", "no-such-token"],
        ),
        (
            entry(&pki.tls("missing-ca.pem", true), &pki.auth("token")),
            vec!["traffic-police", "tls.ca", "missing-ca.pem"],
        ),
        (
            entry("", &pki.auth("token")),
            vec!["traffic-police", "tls: required"],
        ),
    ];
    for (entry, words) in cases {
        // The household register is required; it is fine.
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \":memory:\"\n\n\
             [[sources]]\nid = \"public-security\"\n[sources.transport]\ntype = \"grpc\"\n\
             endpoint = \"http://127.0.0.1:9\"\n\n{entry}"
        );
        assert_no_secret("the configuration", &entry.replace(&pki.token, ""), &pki);
        let error = match hedui::config::Config::parse(&text, "hedui.toml") {
            Err(e) => e.to_string(),
            Ok(config) => match hedui::app::build_as(&config, "hedui").await {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("a broker was built from\n{entry}"),
            },
        };
        for w in words {
            assert!(error.contains(w), "{entry}\n{error}\ndoes not say {w:?}");
        }
        assert_no_secret("the error", &error, &pki);
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
