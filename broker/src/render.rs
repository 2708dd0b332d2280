//! A report as readable text, for the CLI and the demo: members, income and
//! assets with their sources and as-of dates, every source's status, the
//! indicators with reasons, and the verdict.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use hedui_proto::{
    square_metres,
    v1::{
        AssetCategory, HukouType, IncomeCategory, Outcome, Provenance, Purpose, Relation, Report,
        SourceStatus,
    },
    yuan,
};

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| {
            t.with_timezone(&crate::time::china())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn label<E: std::fmt::Debug>(e: Result<E, prost::UnknownEnumValue>) -> String {
    e.map(|v| format!("{v:?}").to_lowercase())
        .unwrap_or_else(|_| "?".into())
}

fn outcome(o: i32) -> &'static str {
    match Outcome::try_from(o) {
        Ok(Outcome::Pass) => "PASS",
        Ok(Outcome::Fail) => "FAIL",
        Ok(Outcome::Review) => "REVIEW",
        Ok(Outcome::Inconclusive) => "INCONCLUSIVE",
        Ok(Outcome::Unspecified) | Err(_) => "-",
    }
}

fn source_status(s: i32) -> &'static str {
    match SourceStatus::try_from(s) {
        Ok(SourceStatus::Ok) => "OK",
        Ok(SourceStatus::NoRecord) => "NO_RECORD",
        Ok(SourceStatus::Timeout) => "TIMEOUT",
        Ok(SourceStatus::Unavailable) => "UNAVAILABLE",
        Ok(SourceStatus::Error) => "ERROR",
        Ok(SourceStatus::NotQueried) => "NOT_QUERIED",
        Ok(SourceStatus::RateLimited) => "RATE_LIMITED",
        Ok(SourceStatus::CircuitOpen) => "CIRCUIT_OPEN",
        Ok(SourceStatus::Pending) => "PENDING",
        Ok(SourceStatus::Unspecified) | Err(_) => "-",
    }
}

fn provenance(report: &Report, p: Option<&Provenance>) -> String {
    match p {
        Some(p) => {
            let who = report
                .members
                .iter()
                .find(|m| m.person_id == p.person_id)
                .map(|m| m.name.as_str())
                .unwrap_or("?");
            format!("{who} · {} (as of {})", p.source_id, when(p.as_of.as_ref()))
        }
        None => "-".into(),
    }
}

/// Fact kinds in words, e.g. `financial_account, account_outflow`.
fn kinds(kinds: &[i32]) -> String {
    kinds
        .iter()
        .map(|k| {
            hedui_proto::v1::FactKind::try_from(*k).map_or_else(
                |_| format!("unknown_{k}"),
                crate::report::disclosure::kind_name,
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a report as text.
pub fn text(report: &Report) -> String {
    let mut o = String::new();
    let req = report.request.clone().unwrap_or_default();
    let purpose = Purpose::try_from(req.purpose)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("PURPOSE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into());
    let _ = writeln!(
        o,
        "━━ household economic-status report {} ━━",
        report.report_id
    );
    let _ = writeln!(
        o,
        "purpose {purpose} · consent {} · operator {} · policy {}",
        req.consent_reference, req.operator_id, report.policy_id
    );
    let _ = writeln!(
        o,
        "requested {} · closed {}",
        when(report.requested_at.as_ref()),
        when(report.completed_at.as_ref())
    );
    if report.pending {
        let _ = writeln!(
            o,
            "PENDING: some sources have not answered; the broker waits for them until {} and then completes this report (hedui report --watch {})",
            when(report.pending_until.as_ref()),
            report.report_id
        );
    } else if report.revision > 0 {
        let _ = writeln!(
            o,
            "completed after late answers (revision {})",
            report.revision
        );
    }
    if !report.withheld_fact_kinds.is_empty() {
        let _ = writeln!(
            o,
            "withheld for purpose {purpose}: {} (not asked for, not shown; what needs them is inconclusive)",
            kinds(&report.withheld_fact_kinds)
        );
    }
    if !report.aggregated_fact_kinds.is_empty() {
        let _ = writeln!(
            o,
            "shown as totals only for purpose {purpose}: {}",
            kinds(&report.aggregated_fact_kinds)
        );
    }
    let hukou = match HukouType::try_from(report.hukou_type) {
        Ok(HukouType::Urban) => "urban",
        Ok(HukouType::Rural) => "rural",
        _ => "unknown",
    };
    let _ = writeln!(
        o,
        "\nhousehold {} ({hukou} hukou), {} active member(s), standard {} yuan/person/month",
        if report.household_number.is_empty() {
            "not resolved"
        } else {
            &report.household_number
        },
        report.active_member_count,
        if report.standard_monthly_fen > 0 {
            yuan(report.standard_monthly_fen)
        } else {
            "unknown".into()
        }
    );
    for m in &report.members {
        let relation = label(Relation::try_from(m.relation));
        let status = label(hedui_proto::v1::RegistrationStatus::try_from(m.status));
        let _ = writeln!(
            o,
            "  {}  {:<6} {:<12} born {}  {status}",
            m.person_id,
            m.name,
            relation,
            m.birth_date
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }

    if let Some(income) = &report.income {
        let _ = writeln!(o, "\nincome (yuan per month)");
        for item in &income.items {
            let cat = label(IncomeCategory::try_from(item.category));
            let _ = writeln!(
                o,
                "  {:<10} {:>12}  {} · {}{}",
                cat,
                yuan(item.monthly_fen),
                item.description,
                provenance(report, item.provenance.as_ref()),
                if item.excluded_reason.is_empty() {
                    String::new()
                } else {
                    format!(" · not counted: {}", item.excluded_reason)
                }
            );
        }
        let _ = writeln!(
            o,
            "  counted {} − employment cost {} = {} → per capita {}{}",
            yuan(income.counted_monthly_fen + income.employment_cost_deduction_fen),
            yuan(income.employment_cost_deduction_fen),
            yuan(income.counted_monthly_fen),
            yuan(income.per_capita_monthly_fen),
            if income.complete {
                String::new()
            } else {
                format!(
                    "  (INCOMPLETE: no answer from {})",
                    income.missing_sources.join(", ")
                )
            }
        );
    }
    if let Some(assets) = &report.assets {
        let _ = writeln!(o, "\nassets");
        for item in &assets.items {
            let cat = label(AssetCategory::try_from(item.category));
            let mut figures = Vec::new();
            if item.value_fen != 0 {
                figures.push(format!("{} yuan", yuan(item.value_fen)));
            }
            if item.area_centi_m2 != 0 {
                figures.push(format!("{} m²", square_metres(item.area_centi_m2)));
            }
            let _ = writeln!(
                o,
                "  {:<18} {:<22} {} · {}",
                cat,
                figures.join(", "),
                item.description,
                provenance(report, item.provenance.as_ref())
            );
        }
        let _ = writeln!(
            o,
            "  money assets {} yuan, per capita {}{}",
            yuan(assets.money_assets_fen),
            yuan(assets.money_assets_per_capita_fen),
            if assets.complete {
                String::new()
            } else {
                format!(
                    "  (INCOMPLETE: no answer from {})",
                    assets.missing_sources.join(", ")
                )
            }
        );
    }

    let _ = writeln!(o, "\nsources ({})", report.sources.len());
    for s in &report.sources {
        let ms = s
            .latency
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<24} {:<12} {:>6} ms  {:>3} facts  {}",
            s.source_id,
            source_status(s.status),
            ms,
            s.fact_count,
            if s.detail.is_empty() {
                format!(
                    "as of {}{}{}",
                    when(s.as_of.as_ref()),
                    if s.from_cache { " (cached)" } else { "" },
                    if s.withheld_fact_kinds.is_empty() {
                        String::new()
                    } else {
                        format!("; withheld: {}", kinds(&s.withheld_fact_kinds))
                    }
                )
            } else {
                s.detail.clone()
            }
        );
    }
    let _ = writeln!(o, "\nindicators");
    for i in &report.indicators {
        let _ = writeln!(
            o,
            "  {} {:<24} {:<12} {} | threshold {} | {}",
            i.id,
            i.name,
            outcome(i.outcome),
            i.value,
            i.threshold,
            i.reason
        );
    }
    let _ = writeln!(
        o,
        "\nverdict: {} — {}",
        outcome(report.verdict),
        report.verdict_reason
    );
    o
}
