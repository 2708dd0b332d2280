//! The `mock-agencies` command as a child process: `serve` announces its
//! endpoints, answers over gRPC, obeys the control service and stops when
//! its standard input closes; `truth` writes the library's ground truth.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use chrono::NaiveDate;
use hedui_mock_agencies::{
    Population, PopulationConfig, TruthPolicy,
    control::proto::{GetStatsRequest, agency_control_service_client::AgencyControlServiceClient},
};
use hedui_proto::v1::{LookupRequest, adapter_service_client::AdapterServiceClient};

const BIN: &str = env!("CARGO_BIN_EXE_mock-agencies");

fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "mock-agencies-{}-{nanos}-{name}",
        std::process::id()
    ))
}

/// Kills the child when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_announces_answers_and_stops_with_stdin() {
    let sources_out = scratch("sources.toml");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--households",
            "80",
            "--seed",
            "9",
            "--today",
            "2026-11-23",
            "--profile",
            "zero",
            "--fault",
            "rural-commercial-bank=outage",
            "--sources-out",
        ])
        .arg(&sources_out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let sources = ready["sources"].as_object().unwrap();
    assert_eq!(sources.len(), 28);

    let written = std::fs::read_to_string(&sources_out).unwrap();
    let table: toml::Table = toml::from_str(&written).unwrap();
    let entries = table["sources"].as_array().unwrap();
    assert_eq!(entries.len(), 28);
    for e in entries {
        let id = e["id"].as_str().unwrap();
        assert_eq!(
            e["transport"]["endpoint"].as_str(),
            sources[id].as_str(),
            "{id}"
        );
    }
    let _ = std::fs::remove_file(&sources_out);

    let population = Population::generate(&PopulationConfig {
        seed: 9,
        households: 80,
        today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    });
    let applicant = population
        .household_at(5)
        .unwrap()
        .applicant()
        .id()
        .to_owned();
    let endpoint = sources["public-security"].as_str().unwrap().to_owned();
    let mut client = AdapterServiceClient::connect(endpoint).await.unwrap();
    let resp = client
        .lookup(LookupRequest {
            source_id: "public-security".into(),
            person_ids: vec![applicant.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.answers[0].facts.len(), 1);

    let bank = sources["rural-commercial-bank"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = AdapterServiceClient::connect(bank)
        .await
        .unwrap()
        .lookup(LookupRequest {
            source_id: "rural-commercial-bank".into(),
            person_ids: vec![applicant],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let control = ready["control"].as_str().unwrap().to_owned();
    let stats = AgencyControlServiceClient::connect(control)
        .await
        .unwrap()
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let of = |id: &str| stats.sources.iter().find(|s| s.source_id == id).unwrap();
    assert_eq!(of("public-security").lookups, 1);
    assert_eq!(of("rural-commercial-bank").failures, 1);

    // Closing standard input stops the process.
    drop(guard.0.stdin.take());
    let started = Instant::now();
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn truth_writes_the_library_truth() {
    let out = Command::new(BIN)
        .args([
            "truth",
            "--households",
            "40",
            "--seed",
            "12",
            "--today",
            "2026-11-23",
            "--purpose",
            "low-income",
            "--out",
            "-",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 40);
    let population = Population::generate(&PopulationConfig {
        seed: 12,
        households: 40,
        today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    });
    let policy = TruthPolicy::for_purpose(hedui_proto::v1::Purpose::LowIncome);
    for (line, hh) in lines.iter().zip(population.households()) {
        assert_eq!(*line, hh.truth(&policy).to_json_line());
    }
}

#[test]
fn bad_flags_are_named() {
    for (args, flag) in [
        (vec!["serve", "--fault", "nobody=hang"], "--fault"),
        (vec!["serve", "--households", "lots"], "--households"),
        (vec!["serve", "--host", "not-an-ip"], "--host"),
        (vec!["truth", "--out", "-", "--purpose", "x"], "--purpose"),
        (
            vec!["truth", "--out", "-", "--today", "tomorrow"],
            "--today",
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let out = Command::new(BIN)
        .args([
            "truth",
            "--households",
            "3",
            "--out",
            "/nonexistent-dir/x.jsonl",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
}

/// `sql load` writes the registers into views a reader may select from
/// (and nothing else), with the broker's configuration; `sql remove`
/// removes them. Needs the MariaDB at 127.0.0.1:3306 (or
/// `HEDUI_TEST_MARIADB_URL`), and fails without it.
#[tokio::test]
async fn sql_load_makes_views_a_reader_may_only_select() {
    use sqlx::Connection;

    let admin = std::env::var("HEDUI_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let name = format!("cli_{}", std::process::id());
    let out = scratch("sql-sources.toml");
    let status = Command::new(BIN)
        .args([
            "sql",
            "load",
            "--server",
            "mariadb",
            "--admin-url",
            &admin,
            "--name",
            &name,
        ])
        .args(["--households", "60", "--seed", "4", "--today", "2026-11-23"])
        .args(["--source", "traffic-police", "--sources-out"])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "MariaDB at {admin} is required for this test"
    );
    let written = std::fs::read_to_string(&out).unwrap();
    let table: toml::Table = toml::from_str(&written).unwrap();
    let entry = &table["sources"].as_array().unwrap()[0];
    assert_eq!(entry["id"].as_str(), Some("traffic-police"));
    let reader = entry["transport"]["url"].as_str().unwrap().to_owned();
    let mut c = sqlx::MySqlConnection::connect(&reader).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM v_vehicle_by_owner")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(n > 0, "the view holds the population's vehicles");
    let denied = sqlx::query("SELECT COUNT(*) FROM motor_vehicles")
        .fetch_one(&mut c)
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("denied"), "{denied}");
    let denied = sqlx::query("DELETE FROM v_vehicle_by_owner")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("denied"), "{denied}");
    c.close().await.unwrap();
    let _ = std::fs::remove_file(&out);

    let status = Command::new(BIN)
        .args([
            "sql",
            "remove",
            "--server",
            "mariadb",
            "--admin-url",
            &admin,
            "--name",
            &name,
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        sqlx::MySqlConnection::connect(&reader).await.is_err(),
        "the reader is gone"
    );
}
