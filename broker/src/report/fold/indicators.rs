//! Indicators R1–R9 against the policy, and the verdict.
//!
//! Each indicator names its input fact kinds; its input sources are the
//! sources serving one of them (household registration included where the
//! rule uses `n`, `S` or the register). When one of them gave no usable
//! answer the indicator is `INCONCLUSIVE` and names it, whatever the answers
//! that did arrive say.

use std::collections::BTreeSet;

use chrono::Months;
use hedui_proto::v1::{
    Assets, DwellingUse, FactKind, Income, Indicator, Outcome, RegistrationStatus, VehicleClass,
    VehicleStatus,
};

use super::{Context, amount, civil, div, enum_words, facts, list, m2, yuan};
use crate::report::household::Resolution;
use crate::report::policy::{IncomeKind, Policy};

/// The fact kinds R1 (and the income's completeness) depend on: those of the
/// income kinds the policy counts, and household registration.
pub(super) fn income_input_kinds(policy: &Policy) -> Vec<FactKind> {
    let mut kinds: Vec<FactKind> = Vec::new();
    for kind in IncomeKind::ALL.into_iter().filter(|k| policy.counts(*k)) {
        for fact_kind in kind.fact_kinds() {
            if !kinds.contains(fact_kind) {
                kinds.push(*fact_kind);
            }
        }
    }
    kinds.push(FactKind::HouseholdRegistration);
    kinds
}

/// The fact kinds the assets' completeness depends on: every kind listed as
/// an asset, and household registration.
pub(super) fn asset_input_kinds() -> Vec<FactKind> {
    vec![
        FactKind::FinancialAccount,
        FactKind::Dwelling,
        FactKind::Vehicle,
        FactKind::ProvidentFund,
        FactKind::MarketEntity,
        FactKind::LandContract,
        FactKind::ForestRight,
        FactKind::HouseholdRegistration,
    ]
}

/// What a rule found, before the check of its input sources.
#[derive(Debug)]
struct Finding {
    outcome: Outcome,
    value: String,
    threshold: String,
    reason: String,
}

impl Finding {
    fn new(outcome: Outcome, value: String, threshold: String, reason: String) -> Self {
        Finding {
            outcome,
            value,
            threshold,
            reason,
        }
    }
}

/// Evaluates R1–R9.
pub(super) fn evaluate(ctx: &Context<'_>, income: &Income, assets: &Assets) -> Vec<Indicator> {
    use FactKind as K;
    let hr = K::HouseholdRegistration;
    vec![
        indicator(
            ctx,
            "R1",
            "income",
            &income_input_kinds(ctx.policy),
            r1_income(ctx, income),
        ),
        indicator(
            ctx,
            "R2",
            "money assets",
            &[K::FinancialAccount, hr],
            r2_money(ctx, assets),
        ),
        indicator(
            ctx,
            "R3",
            "vehicles",
            &[K::Vehicle, K::OperatingLicence],
            r3_vehicles(ctx),
        ),
        indicator(ctx, "R4", "housing", &[K::Dwelling, hr], r4_housing(ctx)),
        indicator(
            ctx,
            "R5",
            "business",
            &[K::MarketEntity, K::IndividualBusiness],
            r5_business(ctx),
        ),
        indicator(
            ctx,
            "R6",
            "public payroll",
            &[K::PublicPayroll],
            r6_payroll(ctx),
        ),
        indicator(
            ctx,
            "R7",
            "related party",
            &[K::RelatedParty],
            r7_related(ctx),
        ),
        indicator(ctx, "R8", "household registration", &[hr], r8_register(ctx)),
        indicator(
            ctx,
            "R9",
            "bank outflows",
            &[K::AccountOutflow, hr],
            r9_outflows(ctx),
        ),
    ]
}

/// Builds an indicator from a rule's finding; `INCONCLUSIVE` when an input
/// source gave no usable answer.
fn indicator(
    ctx: &Context<'_>,
    id: &str,
    name: &str,
    kinds: &[FactKind],
    finding: Finding,
) -> Indicator {
    // Every rule reads facts about the household's members, and only the
    // household source says who they are: without its answer the other
    // sources were asked about the applicant alone, so no rule can be
    // decided (a spouse's car would go unseen).
    let mut kinds = kinds.to_vec();
    if !kinds.contains(&FactKind::HouseholdRegistration) {
        kinds.push(FactKind::HouseholdRegistration);
    }
    let input_sources = ctx.sources_serving(&kinds);
    let missing = ctx.missing_serving(&kinds);
    let missing_sources: Vec<String> = missing.iter().map(|o| o.spec.id.clone()).collect();
    // A kind withheld for the purpose is as unknown as a missing answer:
    // what needs it is never decided on what is left.
    let withheld = ctx.withheld_of(&kinds);
    let (outcome, value, reason) = if missing.is_empty() && withheld.is_empty() {
        (finding.outcome, finding.value, finding.reason)
    } else {
        let mut why: Vec<String> = Vec::new();
        if !missing.is_empty() {
            let words: Vec<String> = missing.iter().map(|o| ctx.missing_words(o)).collect();
            why.push(format!(
                "no usable answer from {}; a missing answer is not read as zero or no record",
                words.join(", ")
            ));
        }
        if !withheld.is_empty() {
            let purpose = crate::verify::purpose_name(ctx.input.request.purpose);
            why.push(format!(
                "fact kinds withheld for the purpose {purpose}: {} (purposes.{purpose}.fact_kinds); \
                 withheld data is not read as zero or no record",
                crate::report::disclosure::kind_names(&withheld)
            ));
        }
        (
            Outcome::Inconclusive,
            format!("so far: {}", finding.value),
            why.join("; "),
        )
    };
    Indicator {
        id: id.to_owned(),
        name: name.to_owned(),
        outcome: outcome as i32,
        value,
        threshold: finding.threshold,
        reason,
        input_sources,
        missing_sources,
    }
}

/// The standard, for rules that compare per-capita figures with it; a
/// finding that says why not otherwise.
fn needs_standard(ctx: &Context<'_>, value: &str, threshold: &str) -> Result<i64, Finding> {
    let inconclusive = |reason: String| {
        Finding::new(
            Outcome::Inconclusive,
            value.to_owned(),
            threshold.to_owned(),
            reason,
        )
    };
    match ctx.household.resolution {
        Resolution::Failed => {
            return Err(inconclusive(format!(
                "household could not be resolved: {}",
                ctx.household.detail
            )));
        }
        Resolution::NotRegistered => {
            return Err(inconclusive(
                "household not registered in this district; no standard applies".to_owned(),
            ));
        }
        Resolution::Registered => {}
    }
    let Some(standard) = ctx.standard else {
        return Err(inconclusive(
            "the household's hukou type is not stated; no standard applies".to_owned(),
        ));
    };
    needs_members(ctx, value, threshold)?;
    Ok(standard)
}

/// Checks that per-capita figures can be computed.
fn needs_members(ctx: &Context<'_>, value: &str, threshold: &str) -> Result<(), Finding> {
    if ctx.household.resolution == Resolution::Failed {
        return Err(Finding::new(
            Outcome::Inconclusive,
            value.to_owned(),
            threshold.to_owned(),
            format!("household could not be resolved: {}", ctx.household.detail),
        ));
    }
    if ctx.n == 0 {
        return Err(Finding::new(
            Outcome::Review,
            value.to_owned(),
            threshold.to_owned(),
            "the household register lists no active member; per-capita figures cannot be computed"
                .to_owned(),
        ));
    }
    Ok(())
}

fn r1_income(ctx: &Context<'_>, income: &Income) -> Finding {
    let value = format!(
        "per capita {} yuan/month (counted {} yuan/month, {} active members)",
        yuan(income.per_capita_monthly_fen),
        yuan(income.counted_monthly_fen),
        ctx.n
    );
    let pct = ctx.params.income_multiple_pct;
    let unknown = format!("< {pct}% of the standard, which is unknown");
    let standard = match needs_standard(ctx, &value, &unknown) {
        Ok(s) => s,
        Err(finding) => return finding,
    };
    let limit = standard.saturating_mul(pct) / 100;
    let threshold = format!(
        "< {} yuan/month ({pct}% of the {})",
        yuan(limit),
        ctx.standard_words(standard)
    );
    let per_capita = income.per_capita_monthly_fen;
    if per_capita < limit {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            format!(
                "per-capita income {} yuan/month is below {} yuan/month",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    } else {
        Finding::new(
            Outcome::Fail,
            value,
            threshold,
            format!(
                "per-capita income {} yuan/month is not below {} yuan/month",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    }
}

fn r2_money(ctx: &Context<'_>, assets: &Assets) -> Finding {
    let value = format!(
        "per capita {} yuan (money assets {} yuan, {} active members)",
        yuan(assets.money_assets_per_capita_fen),
        yuan(assets.money_assets_fen),
        ctx.n
    );
    let months = ctx.params.asset_months;
    let unknown = format!("<= {months} months of the standard, which is unknown");
    let standard = match needs_standard(ctx, &value, &unknown) {
        Ok(s) => s,
        Err(finding) => return finding,
    };
    let limit = standard.saturating_mul(months);
    let threshold = format!(
        "<= {} yuan ({months} months of the {})",
        yuan(limit),
        ctx.standard_words(standard)
    );
    let per_capita = assets.money_assets_per_capita_fen;
    if per_capita <= limit {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            format!(
                "per-capita money assets {} yuan are within {} yuan",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    } else {
        Finding::new(
            Outcome::Fail,
            value,
            threshold,
            format!(
                "per-capita money assets {} yuan exceed {} yuan",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    }
}

fn class_words(class: VehicleClass) -> String {
    enum_words(class.as_str_name(), "VEHICLE_CLASS_")
}

fn r3_vehicles(ctx: &Context<'_>) -> Finding {
    let rules = &ctx.policy.vehicles;
    let today = ctx.input.today;
    let mut failing: Vec<String> = Vec::new();
    let mut reviewing: Vec<String> = Vec::new();
    let mut registered: Vec<String> = Vec::new();
    for (_, v) in ctx
        .vehicles
        .iter()
        .filter(|(_, v)| v.status() == VehicleStatus::Registered)
    {
        let class = v.vehicle_class();
        let words = format!("{} {}", class_words(class), v.plate);
        registered.push(words.clone());
        if rules.fail_classes.contains(&class) {
            failing.push(format!("registered {words}"));
        } else if rules.review_classes.contains(&class) {
            reviewing.push(format!("registered {words}"));
        } else if class == VehicleClass::Unspecified {
            // A vehicle whose class is not stated cannot be exempted.
            reviewing.push(format!("registered vehicle {} of unstated class", v.plate));
        }
    }
    let mut valid: Vec<String> = Vec::new();
    for (_, l) in &ctx.licences {
        let kind = enum_words(l.licence_type().as_str_name(), "LICENCE_TYPE_");
        match civil(l.valid_to.as_ref()) {
            Some(to) if to >= today => {
                let words = format!("{kind} licence {} valid to {to}", l.licence_number);
                valid.push(words.clone());
                failing.push(format!("operating {words}"));
            }
            Some(_) => {}
            // A licence without an end date cannot be taken as expired.
            None => reviewing.push(format!(
                "operating {kind} licence {} without a valid end date",
                l.licence_number
            )),
        }
    }

    let value = format!(
        "registered vehicles: {}; operating licences valid on {today}: {}",
        list(&registered),
        list(&valid)
    );
    let fail_words: Vec<String> = rules.fail_classes.iter().map(|c| class_words(*c)).collect();
    let review_words: Vec<String> = rules
        .review_classes
        .iter()
        .map(|c| class_words(*c))
        .collect();
    let threshold = format!(
        "no registered vehicle of class {} and no valid operating licence; class {} needs review",
        list(&fail_words),
        list(&review_words)
    );
    if !failing.is_empty() {
        Finding::new(Outcome::Fail, value, threshold, failing.join("; "))
    } else if !reviewing.is_empty() {
        Finding::new(Outcome::Review, value, threshold, reviewing.join("; "))
    } else {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            "no registered vehicle that counts and no valid operating licence".to_owned(),
        )
    }
}

fn r4_housing(ctx: &Context<'_>) -> Finding {
    let rules = ctx.policy.housing;
    let residential: Vec<_> = ctx
        .dwellings
        .iter()
        .filter(|(_, d)| d.r#use() != DwellingUse::NonResidential)
        .collect();
    let non_residential = ctx.dwellings.len() - residential.len();
    let area = residential
        .iter()
        .fold(0i64, |s, (_, d)| s.saturating_add(amount(d.area_centi_m2)));
    let per_capita = div(area, ctx.n as i64);
    let count = residential.len() as i64;
    let cutoff = ctx
        .input
        .today
        .checked_sub_months(Months::new(12 * rules.review_years))
        .unwrap_or(chrono::NaiveDate::MIN);

    let value = format!(
        "{count} residential ({} m², {} m² per capita), {non_residential} non-residential",
        m2(area),
        m2(per_capita)
    );
    let threshold = format!(
        "at most {max} residential; with {max}, at most {avg} m² per capita; no non-residential \
         building besides a dwelling; review if acquired on or after {cutoff}",
        max = rules.max_dwellings,
        avg = m2(rules.avg_area_per_capita_centi_m2)
    );
    if let Err(finding) = needs_members(ctx, &value, &threshold) {
        return finding;
    }

    let mut failing: Vec<String> = Vec::new();
    if count > rules.max_dwellings {
        failing.push(format!(
            "{count} residential dwellings, more than {}",
            rules.max_dwellings
        ));
    }
    if count == rules.max_dwellings && per_capita > rules.avg_area_per_capita_centi_m2 {
        failing.push(format!(
            "{count} residential dwellings with {} m² per capita, more than {} m²",
            m2(per_capita),
            m2(rules.avg_area_per_capita_centi_m2)
        ));
    }
    if non_residential > 0 && count > 0 {
        failing.push("a non-residential building besides a dwelling".to_owned());
    }
    if !failing.is_empty() {
        return Finding::new(Outcome::Fail, value, threshold, failing.join("; "));
    }

    let mut reviewing: Vec<String> = Vec::new();
    if non_residential > 0 && count == 0 {
        reviewing.push("a non-residential building is the only building".to_owned());
    }
    for (_, d) in &ctx.dwellings {
        if let Some(acquired) = civil(d.acquired_date.as_ref()).filter(|a| *a >= cutoff) {
            reviewing.push(format!(
                "building {} acquired {acquired}, within {} years",
                d.certificate_number, rules.review_years
            ));
        }
    }
    if !reviewing.is_empty() {
        return Finding::new(Outcome::Review, value, threshold, reviewing.join("; "));
    }
    Finding::new(
        Outcome::Pass,
        value,
        threshold,
        "housing within the limits".to_owned(),
    )
}

fn r5_business(ctx: &Context<'_>) -> Finding {
    let limit = ctx.policy.business.capital_limit_fen;
    let entities: Vec<_> = ctx.entities.iter().filter(|(_, e)| e.active).collect();
    let capital = entities.iter().fold(0i64, |s, (_, e)| {
        s.saturating_add(amount(e.subscribed_capital_fen))
    });
    let businesses: Vec<String> = facts!(ctx, IndividualBusiness)
        .filter(|(_, b)| b.active)
        .map(|(_, b)| b.name.clone())
        .collect();
    let names: Vec<String> = entities.iter().map(|(_, e)| e.name.clone()).collect();

    let value = format!(
        "active market entities: {} (subscribed capital {} yuan); active individual businesses: {}",
        list(&names),
        yuan(capital),
        list(&businesses)
    );
    let threshold = format!(
        "subscribed capital <= {} yuan; any active business needs review",
        yuan(limit)
    );
    if capital > limit {
        Finding::new(
            Outcome::Fail,
            value,
            threshold,
            format!(
                "subscribed capital {} yuan exceeds {} yuan",
                yuan(capital),
                yuan(limit)
            ),
        )
    } else if !names.is_empty() || !businesses.is_empty() {
        Finding::new(
            Outcome::Review,
            value,
            threshold,
            "a member runs an active business".to_owned(),
        )
    } else {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            "no active business".to_owned(),
        )
    }
}

fn r6_payroll(ctx: &Context<'_>) -> Finding {
    let on_payroll: Vec<String> = facts!(ctx, PublicPayroll)
        .map(|(f, p)| format!("{} at {}", f.person_id, p.employer))
        .collect();
    let value = format!("members on public payroll: {}", list(&on_payroll));
    let threshold = "no member on public payroll".to_owned();
    if on_payroll.is_empty() {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            "no member is on public payroll".to_owned(),
        )
    } else {
        Finding::new(
            Outcome::Review,
            value,
            threshold,
            "a member is paid from public finance; record and review".to_owned(),
        )
    }
}

fn r7_related(ctx: &Context<'_>) -> Finding {
    let related: Vec<String> = facts!(ctx, RelatedParty)
        .map(|(f, r)| format!("{} is {} of a {}", f.person_id, r.kinship, r.staff_role))
        .collect();
    let value = format!("kin of deciding staff: {}", list(&related));
    let threshold = "no member is kin of staff who decide on assistance".to_owned();
    if related.is_empty() {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            "no member is kin of deciding staff".to_owned(),
        )
    } else {
        Finding::new(
            Outcome::Review,
            value,
            threshold,
            "a member is kin of deciding staff; record and visit the home".to_owned(),
        )
    }
}

fn r8_register(ctx: &Context<'_>) -> Finding {
    let household = ctx.household;
    let request = ctx.input.request;
    let threshold = "the applicant is registered, no member is deceased or moved out, and \
                     the declared members are the active members"
        .to_owned();
    match household.resolution {
        Resolution::Failed => {
            return Finding::new(
                Outcome::Inconclusive,
                "household registration unknown".to_owned(),
                threshold,
                format!("household could not be resolved: {}", household.detail),
            );
        }
        Resolution::NotRegistered => {
            return Finding::new(
                Outcome::Review,
                "no household registration of the applicant".to_owned(),
                threshold,
                "the applicant has no household registration in this district".to_owned(),
            );
        }
        Resolution::Registered => {}
    }

    let with_status = |status: RegistrationStatus| -> Vec<String> {
        household
            .members
            .iter()
            .filter(|m| m.status() == status)
            .map(|m| m.person_id.clone())
            .collect()
    };
    let deceased = with_status(RegistrationStatus::Deceased);
    let moved_out = with_status(RegistrationStatus::MovedOut);
    let unstated = with_status(RegistrationStatus::Unspecified);

    let mut value = format!(
        "household {}: {} registered, {} active, {} deceased, {} moved out",
        household.household_number,
        household.members.len(),
        ctx.n,
        deceased.len(),
        moved_out.len()
    );
    let mut reviewing: Vec<String> = Vec::new();
    if !deceased.is_empty() {
        reviewing.push(format!("deceased: {}", deceased.join(", ")));
    }
    if !moved_out.is_empty() {
        reviewing.push(format!("moved out: {}", moved_out.join(", ")));
    }
    if !unstated.is_empty() {
        reviewing.push(format!(
            "registration status not stated: {}",
            unstated.join(", ")
        ));
    }
    if !request.declared_member_ids.is_empty() {
        let declared: BTreeSet<&str> = request
            .declared_member_ids
            .iter()
            .map(String::as_str)
            .collect();
        let active: BTreeSet<&str> = household.active_ids.iter().map(String::as_str).collect();
        let not_registered: Vec<String> = declared
            .difference(&active)
            .map(|s| (*s).to_owned())
            .collect();
        let not_declared: Vec<String> = active
            .difference(&declared)
            .map(|s| (*s).to_owned())
            .collect();
        if not_registered.is_empty() && not_declared.is_empty() {
            value.push_str("; declared members match");
        } else {
            value.push_str("; declared members differ");
            if !not_registered.is_empty() {
                reviewing.push(format!(
                    "declared but not active in the register: {}",
                    not_registered.join(", ")
                ));
            }
            if !not_declared.is_empty() {
                reviewing.push(format!(
                    "active in the register but not declared: {}",
                    not_declared.join(", ")
                ));
            }
        }
    }
    if reviewing.is_empty() {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            "the register is consistent with the application".to_owned(),
        )
    } else {
        Finding::new(Outcome::Review, value, threshold, reviewing.join("; "))
    }
}

fn r9_outflows(ctx: &Context<'_>) -> Finding {
    let total = ctx
        .outflows
        .iter()
        .fold(0i64, |s, (_, o)| s.saturating_add(amount(o.total_fen)));
    let per_capita = div(total, ctx.n as i64);
    let value = format!(
        "per capita {} yuan (household total {} yuan, {} active members)",
        yuan(per_capita),
        yuan(total),
        ctx.n
    );
    let months = ctx.policy.outflow.months;
    let unknown = format!("<= {months} months of the standard, which is unknown");
    let standard = match needs_standard(ctx, &value, &unknown) {
        Ok(s) => s,
        Err(finding) => return finding,
    };
    let limit = standard.saturating_mul(months);
    let threshold = format!(
        "<= {} yuan ({months} months of the {})",
        yuan(limit),
        ctx.standard_words(standard)
    );
    if per_capita > limit {
        Finding::new(
            Outcome::Review,
            value,
            threshold,
            format!(
                "per-capita outflows {} yuan exceed {} yuan",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    } else {
        Finding::new(
            Outcome::Pass,
            value,
            threshold,
            format!(
                "per-capita outflows {} yuan are within {} yuan",
                yuan(per_capita),
                yuan(limit)
            ),
        )
    }
}

/// The verdict: FAIL if any indicator fails; else INCONCLUSIVE if any is
/// inconclusive; else REVIEW if any needs review; else PASS; and why.
pub(super) fn verdict(indicators: &[Indicator], policy: &Policy) -> (Outcome, String) {
    let with = |outcome: Outcome| -> Vec<&Indicator> {
        indicators
            .iter()
            .filter(|i| i.outcome() == outcome)
            .collect()
    };
    let names = |list: &[&Indicator]| -> String {
        list.iter()
            .map(|i| format!("{} ({})", i.id, i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let failing = with(Outcome::Fail);
    if !failing.is_empty() {
        return (
            Outcome::Fail,
            format!("fails {} under policy {}", names(&failing), policy.id()),
        );
    }
    let inconclusive = with(Outcome::Inconclusive);
    if !inconclusive.is_empty() {
        let mut missing: Vec<&str> = Vec::new();
        for i in &inconclusive {
            for s in &i.missing_sources {
                if !missing.contains(&s.as_str()) {
                    missing.push(s);
                }
            }
        }
        let why = if missing.is_empty() {
            let reasons = super::distinct(inconclusive.iter().map(|i| i.reason.as_str()));
            reasons.join("; ")
        } else {
            format!("no usable answer from {}", missing.join(", "))
        };
        return (
            Outcome::Inconclusive,
            format!("cannot conclude {}: {why}", names(&inconclusive)),
        );
    }
    let reviewing = with(Outcome::Review);
    if !reviewing.is_empty() {
        return (
            Outcome::Review,
            format!("needs review of {}", names(&reviewing)),
        );
    }
    (
        Outcome::Pass,
        format!(
            "passes all {} indicators under policy {}",
            indicators.len(),
            policy.id()
        ),
    )
}
