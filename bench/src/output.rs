//! What a run found: the rows of the table, the ratios against the same
//! run's baselines, S3's latency comparison, S5's memory, h2load's figure;
//! printed as a table and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Percentiles;

/// One scenario's throughput, latency and CPU.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// `A`, `B`, `S1` ...
    pub(crate) id: String,
    pub(crate) name: String,
    /// What one operation is.
    pub(crate) op: String,
    /// How the load was offered.
    pub(crate) load: String,
    pub(crate) seconds: f64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    /// Open loop: requests not sent because too many were in flight.
    pub(crate) dropped: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) ops_per_s: f64,
    pub(crate) latency_ms: Percentiles,
    /// CPU milliseconds per operation of the server under test (the echo
    /// server for A, `hedui` for S1 to S4; none for B).
    pub(crate) server_cpu_ms_per_op: Option<f64>,
    /// Of the `mock-agencies` process (none when it is not involved).
    pub(crate) agencies_cpu_ms_per_op: Option<f64>,
    /// Of the benchmark itself (the load generator).
    pub(crate) client_cpu_ms_per_op: Option<f64>,
}

/// S3: the broker's latency against the slowest source of each report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyComparison {
    /// Offered rate, verifications per second (half of S2's).
    pub(crate) rate_per_s: f64,
    pub(crate) hedui_ms: Percentiles,
    /// The slowest `SourceResult.latency` of each report.
    pub(crate) slowest_source_ms: Percentiles,
    /// Per verification, hedui's latency minus its slowest source's.
    pub(crate) overhead_ms: Percentiles,
    /// The sources' critical path of each report: the household lookup
    /// plus the slowest source asked after it (with declared members, the
    /// slower of the two: the others are asked while the household is).
    pub(crate) critical_path_ms: Percentiles,
    /// Per verification, hedui's latency minus its critical path: what the
    /// broker itself adds (its work, its queues, the network to it).
    pub(crate) path_overhead_ms: Percentiles,
}

/// S5: one level of verifications held in flight.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryLevel {
    /// Verifications asked to be in flight.
    pub(crate) target: usize,
    /// Verifications that were in flight (household resolved, waiting on
    /// the sources) when the memory was read.
    pub(crate) in_flight: usize,
    pub(crate) hedui_rss_kib: u64,
    /// (RSS − idle RSS) ÷ in flight.
    pub(crate) kib_per_in_flight: f64,
    pub(crate) agencies_rss_kib: u64,
}

/// S5: resident memory of the broker with verifications held open.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    pub(crate) idle_rss_kib: u64,
    pub(crate) levels: Vec<MemoryLevel>,
    pub(crate) note: String,
}

/// The independent load generator's run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct H2load {
    /// Which scenario it drove.
    pub(crate) scenario: String,
    /// Whether it ran; when not, why.
    pub(crate) skipped: Option<String>,
    pub(crate) command: String,
    pub(crate) req_per_s: f64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    /// Bytes of response body per succeeded request (a gRPC error has
    /// none: h2load does not read gRPC statuses, this shows reports came).
    pub(crate) bytes_per_response: f64,
    /// The size of the same report through our own client, bytes.
    pub(crate) own_report_bytes: Option<usize>,
    /// Our own generator's figure for the same scenario.
    pub(crate) own_per_s: Option<f64>,
}

/// A figure compared with a baseline of the same run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) name: String,
    pub(crate) value: f64,
    /// The target, e.g. `>= 0.10`.
    pub(crate) target: Option<String>,
    pub(crate) met: Option<bool>,
}

impl Ratio {
    pub(crate) fn at_least(name: impl Into<String>, value: f64, min: f64) -> Self {
        Self {
            name: name.into(),
            value,
            target: Some(format!(">= {min}")),
            met: Some(value >= min),
        }
    }

    pub(crate) fn at_most(name: impl Into<String>, value: f64, max: f64) -> Self {
        Self {
            name: name.into(),
            value,
            target: Some(format!("<= {max}")),
            met: Some(value <= max),
        }
    }

    pub(crate) fn info(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
            target: None,
            met: None,
        }
    }
}

/// The conditions of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Meta {
    pub(crate) started_utc: String,
    pub(crate) cores: usize,
    pub(crate) load_average_before: String,
    pub(crate) seconds_per_scenario: f64,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) seed: u64,
    pub(crate) households: usize,
    pub(crate) today: String,
    /// Whether requests declare the household's members (`--undeclared`).
    pub(crate) declared_members: bool,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) meta: Meta,
    pub(crate) scenarios: Vec<Row>,
    pub(crate) s3: Option<LatencyComparison>,
    pub(crate) s5: Option<Memory>,
    pub(crate) h2load: Option<H2load>,
    pub(crate) overload: Option<crate::overload::Overload>,
    pub(crate) isolation: Option<crate::overload::Isolation>,
    pub(crate) soak: Option<crate::soak::Soak>,
    pub(crate) ratios: Vec<Ratio>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn p(p: &Percentiles) -> String {
    format!("{:.2} / {:.2} / {:.2}", p.p50_ms, p.p95_ms, p.p99_ms)
}

/// Percentiles and the mean.
fn pm(p: &Percentiles) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        p.p50_ms, p.p95_ms, p.p99_ms, p.mean_ms
    )
}

impl Results {
    /// The table, as printed at the end of a run.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.meta;
        let _ = writeln!(
            out,
            "\nhedui-bench {} UTC, {} cores, load average before {}; {} s per scenario, \
             closed loop {} concurrent over {} connections; population seed {}, {} households, today {}; members {}",
            m.started_utc,
            m.cores,
            m.load_average_before,
            m.seconds_per_scenario,
            m.concurrency,
            m.connections,
            m.seed,
            m.households,
            m.today,
            if m.declared_members {
                "declared"
            } else {
                "undeclared"
            }
        );
        let _ = writeln!(
            out,
            "\n{:<4} {:<44} {:>8} {:>6} {:>10} {:>26} {:>9} {:>9} {:>9}",
            "",
            "scenario",
            "ops",
            "errors",
            "ops/s",
            "p50 / p95 / p99 ms",
            "srv ms/op",
            "agc ms/op",
            "cli ms/op"
        );
        for r in &self.scenarios {
            let _ = writeln!(
                out,
                "{:<4} {:<44} {:>8} {:>6} {:>10.1} {:>26} {:>9} {:>9} {:>9}",
                r.id,
                r.name,
                r.ok,
                r.errors + r.dropped,
                r.ops_per_s,
                p(&r.latency_ms),
                opt(r.server_cpu_ms_per_op, 3),
                opt(r.agencies_cpu_ms_per_op, 3),
                opt(r.client_cpu_ms_per_op, 3)
            );
            if let Some(e) = &r.first_error {
                let _ = writeln!(out, "     first error: {e}");
            }
        }
        let _ = writeln!(
            out,
            "     (ms/op: CPU milliseconds per operation, user + system, of the server under test \
             (echo server or hedui), of mock-agencies, and of this load generator)"
        );
        if let Some(s3) = &self.s3 {
            let _ = writeln!(
                out,
                "\nS3 at {:.1} verifications/s (open loop): p50 / p95 / p99 / mean ms\n  \
                 hedui           {}\n  slowest source  {}\n  hedui − slowest {}\n  \
                 critical path   {}  (household lookup + slowest source after it; with declared members, the slower of the two)\n  \
                 hedui − path    {}",
                s3.rate_per_s,
                pm(&s3.hedui_ms),
                pm(&s3.slowest_source_ms),
                pm(&s3.overhead_ms),
                pm(&s3.critical_path_ms),
                pm(&s3.path_overhead_ms)
            );
        }
        if let Some(s5) = &self.s5 {
            let _ = writeln!(
                out,
                "\nS5 resident memory of hedui (idle {} KiB):",
                s5.idle_rss_kib
            );
            let _ = writeln!(
                out,
                "  {:>10} {:>10} {:>14} {:>18} {:>16}",
                "target", "in flight", "hedui RSS KiB", "KiB per in flight", "agencies RSS KiB"
            );
            for l in &s5.levels {
                let _ = writeln!(
                    out,
                    "  {:>10} {:>10} {:>14} {:>18.1} {:>16}",
                    l.target, l.in_flight, l.hedui_rss_kib, l.kib_per_in_flight, l.agencies_rss_kib
                );
            }
            let _ = writeln!(out, "  {}", s5.note);
        }
        if let Some(s) = &self.soak {
            let _ = writeln!(
                out,
                "\nS5 soak: {} verifications in flight for {:.0} s: {} verified ({:.1}/s, {} failed), \
                 p50 / p95 / p99 {} ms\n  hedui resident memory, KiB (idle {}), every sample:",
                s.in_flight,
                s.seconds,
                s.verifications,
                s.per_s,
                s.errors,
                p(&s.latency_ms),
                s.idle_rss_kib
            );
            for row in s.samples.chunks(10) {
                let line: Vec<String> = row.iter().map(|(_, k)| k.to_string()).collect();
                let _ = writeln!(out, "  {}", line.join(" "));
            }
            let _ = writeln!(
                out,
                "  median per third: {} / {} / {} KiB; last third over the middle: {:+.1} %\n  \
                 highest per third: {} / {} / {} KiB",
                s.thirds_median_kib[0],
                s.thirds_median_kib[1],
                s.thirds_median_kib[2],
                s.growth * 100.0,
                s.thirds_max_kib[0],
                s.thirds_max_kib[1],
                s.thirds_max_kib[2],
            );
            if let Some(e) = &s.first_error {
                let _ = writeln!(out, "  first failure: {e}");
            }
        }
        if let Some(h) = &self.h2load {
            match &h.skipped {
                Some(why) => {
                    let _ = writeln!(out, "\nh2load ({}): SKIPPED: {why}", h.scenario);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "\nh2load on {}: {:.1} req/s ({} succeeded, {} failed, {:.0} response bytes each; \
                         our client's report: {} bytes); our generator: {} verifications/s\n  {}",
                        h.scenario,
                        h.req_per_s,
                        h.succeeded,
                        h.failed,
                        h.bytes_per_response,
                        h.own_report_bytes
                            .map_or_else(|| "-".into(), |b| b.to_string()),
                        opt(h.own_per_s, 1),
                        h.command
                    );
                }
            }
        }
        if let Some(o) = &self.overload {
            let _ = writeln!(
                out,
                "\nO1 overload (server.max_in_flight {}; {}): p50 / p95 / p99 ms\n  \
                 peak      {:>9.1} reports/s  {}  (RSS {} KiB; CPU ms/report hedui {:.3}, generator {:.3})\n  \
                 offered   {:>9.1} calls/s\n  \
                 goodput   {:>9.1} reports/s  {}  (RSS {} KiB; CPU ms/report hedui {:.3}, generator {:.3})\n  \
                 peak again {:>8.1} reports/s; goodput {:.3} of the two peaks' mean, {:.3} of the first\n  \
                 shed      {:>9} calls      {}\n  \
                 other errors {}{}",
                o.max_in_flight,
                o.placement,
                o.peak_per_s,
                p(&o.peak_ms),
                o.peak_rss_kib,
                o.peak_server_cpu_ms,
                o.peak_client_cpu_ms,
                o.offered_per_s,
                o.goodput_per_s,
                p(&o.goodput_ms),
                o.overload_rss_kib,
                o.overload_server_cpu_ms,
                o.overload_client_cpu_ms,
                o.peak_after_per_s,
                o.goodput_ratio,
                o.goodput_ratio_first,
                o.shed,
                p(&o.shed_ms),
                o.other_errors,
                o.first_other_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(", first: {e}"))
            );
        }
        if let Some(o) = &self.isolation {
            let _ = writeln!(
                out,
                "\nO2 a saturated source (bank: {}), medical assistance at {:.0}/s: p50 / p95 / p99 ms\n  \
                 alone                                 {}  ({} errors)\n  \
                 beside Dibao at {:>3.0}/s, bank healthy    {}  ({} errors; flood: {} with the bank, {} without)\n  \
                 beside Dibao at {:>3.0}/s, bank saturated  {}  ({} errors; flood: {} with the bank, {} without)\n  \
                 p99 saturated − healthy {:.2} ms{}",
                o.bank,
                o.rate_per_s,
                p(&o.alone_ms),
                o.alone_errors,
                o.flood_per_s,
                p(&o.healthy_ms),
                o.healthy_errors,
                o.healthy_flood.0,
                o.healthy_flood.1,
                o.flood_per_s,
                p(&o.saturated_ms),
                o.saturated_errors,
                o.saturated_flood.0,
                o.saturated_flood.1,
                o.p99_difference_ms,
                o.first_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!("\n  first error: {e}"))
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<58} {:>10} {:>10} {:>5}",
                "ratio (same run)", "value", "target", "met"
            );
            for r in &self.ratios {
                let _ = writeln!(
                    out,
                    "{:<58} {:>10.3} {:>10} {:>5}",
                    r.name,
                    r.value,
                    r.target.as_deref().unwrap_or("-"),
                    match r.met {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "",
                    }
                );
            }
        }
        out
    }
}
