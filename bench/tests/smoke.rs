//! Smoke test of the benchmark: each scenario runs for a fraction of a
//! second and produces figures. Timings are never asserted, only that
//! operations were counted. Needs the workspace's `hedui` and
//! `mock-agencies` binaries of the same profile (`cargo test --workspace`
//! builds them).

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hedui-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("hedui-bench runs");
    assert!(
        out.status.success(),
        "hedui-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON")
}

fn ok_of(results: &serde_json::Value, id: &str) -> u64 {
    results["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row {id}"))["ok"]
        .as_u64()
        .expect("ok count")
}

#[test]
fn every_scenario_produces_figures() {
    let results = run(&[
        "--seconds",
        "0.3",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--households",
        "50",
        "--warm-households",
        "5",
        "--memory-levels",
        "1,4",
        "--only",
        "a,b,s1,s2,s3,s4,s5",
    ]);
    for id in ["A", "B", "S1", "A1", "S2", "B2", "S3", "S4", "B4"] {
        assert!(ok_of(&results, id) > 0, "{id} counted nothing: {results}");
    }
    let levels = results["s5"]["levels"].as_array().expect("S5 levels");
    assert_eq!(levels.len(), 2, "{results}");
    assert!(levels.iter().all(|l| l["in_flight"].as_u64() > Some(0)));
    assert!(!results["ratios"].as_array().expect("ratios").is_empty());
}

#[test]
fn the_soak_samples_memory_through_the_run() {
    let results = run(&[
        "--households",
        "50",
        "--only",
        "soak",
        "--soak-in-flight",
        "8",
        "--soak-seconds",
        "3",
        "--soak-sample-seconds",
        "0.2",
    ]);
    let soak = &results["soak"];
    assert!(soak["verifications"].as_u64() > Some(0), "{results}");
    let samples = soak["samples"].as_array().expect("samples");
    assert!(samples.len() >= 9, "{results}");
    assert!(samples.iter().all(|s| s[1].as_u64() > Some(0)), "{results}");
    assert!(soak["growth"].is_number(), "{results}");
}

#[test]
fn the_overload_measures_the_peak_on_both_sides_of_it() {
    let results = run(&[
        "--seconds",
        "0.5",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--households",
        "50",
        "--only",
        "overload",
    ]);
    let o = &results["overload"];
    for field in ["peak_per_s", "offered_per_s", "peak_after_per_s"] {
        assert!(o[field].as_f64() > Some(0.0), "{field}: {results}");
    }
    let (peak, after, goodput) = (
        o["peak_per_s"].as_f64().unwrap(),
        o["peak_after_per_s"].as_f64().unwrap(),
        o["goodput_per_s"].as_f64().unwrap(),
    );
    let ratio = o["goodput_ratio"].as_f64().unwrap();
    assert!(
        (ratio - goodput / f64::midpoint(peak, after)).abs() < 1e-9,
        "{o}"
    );
    assert!((o["goodput_ratio_first"].as_f64().unwrap() - goodput / peak).abs() < 1e-9);
}
