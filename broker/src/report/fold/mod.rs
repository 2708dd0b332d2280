//! Folding every source's answer into one report, exactly as
//! `docs/policy.md` describes: the members, monthly income by category and
//! per capita, assets by category, indicators R1–R9 and the verdict.
//!
//! Only facts from sources that answered `OK`, about active members, of a
//! kind the source serves, are read. Every indicator takes its input sources
//! from fact kinds (a source serving one of the indicator's kinds is an input,
//! whatever its id), so a source added by configuration takes part without
//! code. A source that did not answer is never read as zero: an indicator
//! that depends on it is `INCONCLUSIVE` and names it.
//!
//! A fact kind withheld for the request's purpose (listed on a source's
//! result, see [`crate::report::disclosure`]) is treated the same way: an
//! indicator that needs it is `INCONCLUSIVE` and says so, never "none
//! found". Kinds the purpose sees as totals are folded into one item per
//! member, source and account type, without account identifiers.

mod assets;
mod income;
mod indicators;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::SystemTime;

use chrono::NaiveDate;
use hedui_proto::v1::{
    AccountOutflow, CivilDate, Dwelling, FactKind, FinancialAccount, HukouType, MarketEntity,
    OperatingLicence, Provenance, Report, SourceStatus, Vehicle, VerificationRequest, fact,
};

use super::household::{Household, Resolution, SourceOutcome, status_words};
use super::policy::{Policy, PurposeParams};

/// Everything a report is folded from.
#[derive(Debug, Clone)]
pub struct FoldInput<'a> {
    /// The report's id.
    pub report_id: String,
    /// The request as received.
    pub request: &'a VerificationRequest,
    /// When the request was received.
    pub requested_at: SystemTime,
    /// When the report is closed.
    pub completed_at: SystemTime,
    /// The verification date (China time), against which licence validity and
    /// recent acquisitions are judged.
    pub today: NaiveDate,
    /// The policy applied.
    pub policy: &'a Policy,
    /// The household as resolved.
    pub household: &'a Household,
    /// Every source of the verification, in catalog order, the household
    /// source included, whatever its status.
    pub outcomes: &'a [SourceOutcome],
}

/// Folds a verification's outcomes into its report, filling every field.
pub fn fold(input: FoldInput<'_>) -> Report {
    let ctx = Context::new(&input);
    let income = income::fold_income(&ctx);
    let assets = assets::fold_assets(&ctx);
    let indicators = indicators::evaluate(&ctx, &income, &assets);
    let (verdict, mut verdict_reason) = indicators::verdict(&indicators, input.policy);
    if verdict == hedui_proto::v1::Outcome::Inconclusive
        && !ctx.withheld.is_empty()
        && !verdict_reason.contains("withheld")
    {
        verdict_reason.push_str(&format!(
            "; fact kinds withheld for the purpose: {}",
            crate::report::disclosure::kind_names(&ctx.withheld)
        ));
    }
    let household = input.household;
    Report {
        report_id: input.report_id.clone(),
        request: Some(input.request.clone()),
        requested_at: Some(input.requested_at.into()),
        completed_at: Some(input.completed_at.into()),
        policy_id: input.policy.id(),
        household_number: household.household_number.clone(),
        hukou_type: household.hukou_type as i32,
        members: household.members.clone(),
        active_member_count: u32::try_from(ctx.n).unwrap_or(u32::MAX),
        standard_monthly_fen: ctx.standard.unwrap_or(0),
        income: Some(income),
        assets: Some(assets),
        sources: input.outcomes.iter().map(|o| o.result.clone()).collect(),
        indicators,
        verdict: verdict as i32,
        verdict_reason,
        // Set by the verification path when sources are still awaited.
        pending: false,
        pending_until: None,
        revision: 0,
        withheld_fact_kinds: ctx.withheld.iter().map(|k| *k as i32).collect(),
        aggregated_fact_kinds: ctx.aggregated.iter().map(|k| *k as i32).collect(),
    }
}

/// One fact the report may read: from a source that answered `OK`, about an
/// active member, of a kind the source serves.
#[derive(Debug, Clone, Copy)]
struct Found<'a> {
    source_id: &'a str,
    person_id: &'a str,
    record_id: &'a str,
    as_of: Option<&'a prost_types::Timestamp>,
    value: &'a fact::Value,
}

impl Found<'_> {
    fn provenance(&self) -> Provenance {
        Provenance {
            source_id: self.source_id.to_owned(),
            person_id: self.person_id.to_owned(),
            record_id: self.record_id.to_owned(),
            as_of: self.as_of.copied(),
        }
    }
}

/// The facts of one kind, with where each comes from, e.g.
/// `facts!(ctx, Vehicle)` yields `(Found, &Vehicle)`.
macro_rules! facts {
    ($ctx:expr, $kind:ident) => {
        $ctx.facts.iter().filter_map(|f| match f.value {
            ::hedui_proto::v1::fact::Value::$kind(x) => Some((*f, x)),
            _ => None,
        })
    };
}
use facts;

/// What every part of the fold reads.
#[derive(Debug)]
struct Context<'a> {
    input: &'a FoldInput<'a>,
    policy: &'a Policy,
    household: &'a Household,
    /// The readable facts, by source (catalog order), then member (register
    /// order), then the source's order.
    facts: Vec<Found<'a>>,
    /// Number of active members, the divisor of per-capita figures.
    n: usize,
    /// The standard per person per month, when the household's hukou type is
    /// known.
    standard: Option<i64>,
    /// The purpose's thresholds.
    params: PurposeParams,
    /// Financial accounts, each `(institution, account_ref)` once.
    accounts: Vec<(Found<'a>, &'a FinancialAccount)>,
    /// Buildings, each `certificate_number` once.
    dwellings: Vec<(Found<'a>, &'a Dwelling)>,
    /// Vehicles, each plate once.
    vehicles: Vec<(Found<'a>, &'a Vehicle)>,
    /// Operating licences, each licence number once.
    licences: Vec<(Found<'a>, &'a OperatingLicence)>,
    /// Market entities, each `(person, credit_code)` once.
    entities: Vec<(Found<'a>, &'a MarketEntity)>,
    /// Account outflows, each `(person, institution)` once.
    outflows: Vec<(Found<'a>, &'a AccountOutflow)>,
    /// Fact kinds withheld for the purpose (by any source), in `FactKind`
    /// order: what needs them cannot be concluded.
    withheld: Vec<FactKind>,
    /// Fact kinds the purpose sees only as totals, in `FactKind` order.
    aggregated: Vec<FactKind>,
}

impl<'a> Context<'a> {
    fn new(input: &'a FoldInput<'a>) -> Self {
        let household = input.household;
        let mut facts = Vec::new();
        for outcome in input.outcomes {
            if outcome.status() != SourceStatus::Ok {
                continue;
            }
            let fallback_as_of = outcome.result.as_of.as_ref();
            // Answers about persons other than the active members are not
            // read, nor facts of kinds the source does not serve (the
            // transport refuses both; this is defence in depth).
            let strays = outcome
                .answers
                .iter()
                .filter(|a| !household.is_active(&a.person_id))
                .count();
            if strays > 0 {
                tracing::warn!(
                    source = %outcome.spec.id,
                    answers = strays,
                    "ignored answers about persons who are not active members"
                );
            }
            for person_id in &household.active_ids {
                for answer in outcome.answers.iter().filter(|a| &a.person_id == person_id) {
                    for f in &answer.facts {
                        let Some(value) = &f.value else { continue };
                        let kind = value.kind();
                        if !outcome.spec.fact_kinds.contains(&kind) {
                            tracing::warn!(
                                source = %outcome.spec.id,
                                kind = kind.as_str_name(),
                                "ignored a fact of a kind the source does not serve"
                            );
                            continue;
                        }
                        if kind == FactKind::HouseholdRegistration {
                            // Read by household resolution, not here.
                            continue;
                        }
                        facts.push(Found {
                            source_id: &outcome.spec.id,
                            person_id: &answer.person_id,
                            record_id: &f.record_id,
                            as_of: f.as_of.as_ref().or(fallback_as_of),
                            value,
                        });
                    }
                }
            }
        }
        let standard = match household.resolution {
            Resolution::Registered => input.policy.standard(household.hukou_type),
            Resolution::NotRegistered | Resolution::Failed => None,
        };
        let mut ctx = Context {
            input,
            policy: input.policy,
            household,
            facts,
            n: household.active_count(),
            standard,
            params: input.policy.purpose(input.request.purpose()),
            accounts: Vec::new(),
            dwellings: Vec::new(),
            vehicles: Vec::new(),
            licences: Vec::new(),
            entities: Vec::new(),
            outflows: Vec::new(),
            withheld: listed(input.outcomes, |o| &o.result.withheld_fact_kinds),
            aggregated: listed(input.outcomes, |o| &o.result.aggregated_fact_kinds),
        };
        // The same account reported by two sources (a bank and the finance
        // office), the same building owned in shares by two members, and the
        // like, are taken once: the first in catalog and register order.
        ctx.accounts = once(facts!(ctx, FinancialAccount), |_, a| {
            (!a.account_ref.is_empty()).then(|| format!("{}\u{1f}{}", a.institution, a.account_ref))
        });
        ctx.dwellings = once(facts!(ctx, Dwelling), |_, d| {
            (!d.certificate_number.is_empty()).then(|| d.certificate_number.clone())
        });
        ctx.vehicles = once(facts!(ctx, Vehicle), |_, v| {
            (!v.plate.is_empty()).then(|| v.plate.clone())
        });
        ctx.licences = once(facts!(ctx, OperatingLicence), |_, l| {
            (!l.licence_number.is_empty()).then(|| l.licence_number.clone())
        });
        ctx.entities = once(facts!(ctx, MarketEntity), |f, e| {
            (!e.credit_code.is_empty()).then(|| format!("{}\u{1f}{}", f.person_id, e.credit_code))
        });
        ctx.outflows = once(facts!(ctx, AccountOutflow), |f, o| {
            Some(format!("{}\u{1f}{}", f.person_id, o.institution))
        });
        ctx
    }

    /// Which of these kinds are withheld for the purpose.
    fn withheld_of(&self, kinds: &[FactKind]) -> Vec<FactKind> {
        kinds
            .iter()
            .copied()
            .filter(|k| self.withheld.contains(k))
            .collect()
    }

    /// Whether the purpose sees `kind` only as totals.
    fn aggregates(&self, kind: FactKind) -> bool {
        self.aggregated.contains(&kind)
    }

    /// The financial accounts as the purpose may see them: each account,
    /// or, when accounts are seen as totals, one total per member, source
    /// and account type (after accounts reported twice were taken once).
    fn account_views(&self) -> Vec<AccountView<'a>> {
        let whole = !self.aggregates(FactKind::FinancialAccount);
        let mut views: Vec<AccountView<'a>> = Vec::new();
        for (f, a) in &self.accounts {
            let account_type = a.account_type();
            if !whole
                && let Some(v) = views.iter_mut().find(|v| {
                    v.found.source_id == f.source_id
                        && v.found.person_id == f.person_id
                        && v.account_type == account_type
                })
            {
                v.count += 1;
                v.balance_fen = v.balance_fen.saturating_add(amount(a.balance_fen));
                v.income_12m_fen = v.income_12m_fen.saturating_add(amount(a.income_12m_fen));
                // The total is as old as its oldest account.
                if earlier(f.as_of, v.found.as_of) {
                    v.found.as_of = f.as_of;
                }
                continue;
            }
            views.push(AccountView {
                found: *f,
                account: whole.then_some(*a),
                account_type,
                count: 1,
                balance_fen: amount(a.balance_fen),
                income_12m_fen: amount(a.income_12m_fen),
            });
        }
        views
    }

    /// The ids of the sources serving any of these kinds, in catalog order.
    fn sources_serving(&self, kinds: &[FactKind]) -> Vec<String> {
        self.input
            .outcomes
            .iter()
            .filter(|o| o.serves_any(kinds))
            .map(|o| o.spec.id.clone())
            .collect()
    }

    /// The sources serving any of these kinds that gave no usable answer,
    /// in catalog order.
    fn missing_serving(&self, kinds: &[FactKind]) -> Vec<&'a SourceOutcome> {
        self.input
            .outcomes
            .iter()
            .filter(|o| o.serves_any(kinds) && self.is_missing(o))
            .collect()
    }

    /// Whether a source gave no usable answer: it did not answer (timeout,
    /// unavailable, error, not queried, no status), or it is a
    /// household-registration source whose answer could not be used to
    /// resolve the household.
    fn is_missing(&self, outcome: &SourceOutcome) -> bool {
        !outcome.answered()
            || (self.household.resolution == Resolution::Failed
                && outcome
                    .spec
                    .fact_kinds
                    .contains(&FactKind::HouseholdRegistration))
    }

    /// A missing source in words, e.g. `"traffic-police (timeout)"`.
    fn missing_words(&self, outcome: &SourceOutcome) -> String {
        let status = outcome.status();
        if matches!(status, SourceStatus::Ok | SourceStatus::NoRecord) {
            let id = &outcome.spec.id;
            let detail = &self.household.detail;
            let why = detail.strip_prefix(&format!("{id}: ")).unwrap_or(detail);
            format!("{id} (answer unusable: {why})")
        } else {
            format!("{} ({})", outcome.spec.id, status_words(status))
        }
    }

    /// Words for the standard applied, e.g. `"urban standard 520.00 yuan"`.
    fn standard_words(&self, standard: i64) -> String {
        let which = match self.household.hukou_type {
            HukouType::Urban => "urban",
            HukouType::Rural => "rural",
            HukouType::Unspecified => "unspecified",
        };
        format!("{which} standard {} yuan", yuan(standard))
    }
}

/// One financial account, or the total of a member's accounts of one type
/// at one source when the purpose sees accounts only as totals.
#[derive(Debug, Clone, Copy)]
struct AccountView<'a> {
    /// Where it comes from; for a total, the first account's source and
    /// member, and the oldest as-of time.
    found: Found<'a>,
    /// The account; `None` for a total.
    account: Option<&'a FinancialAccount>,
    account_type: hedui_proto::v1::AccountType,
    /// Accounts in it.
    count: usize,
    balance_fen: i64,
    income_12m_fen: i64,
}

impl AccountView<'_> {
    /// Where the figure comes from: for a total, no record id (it would
    /// name one account).
    fn provenance(&self) -> Provenance {
        let mut p = self.found.provenance();
        if self.account.is_none() {
            p.record_id = String::new();
        }
        p
    }

    /// The account in words, e.g. `deposit at X bank (6230****1)`, or the
    /// total, e.g. `deposit, total of 2 accounts`.
    fn words(&self) -> String {
        let kind = enum_words(self.account_type.as_str_name(), "ACCOUNT_TYPE_");
        match self.account {
            Some(a) => format!("{kind} at {} ({})", a.institution, a.account_ref),
            None => format!(
                "{kind}, total of {} account{}",
                self.count,
                if self.count == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Whether as-of time `a` is before `b` (an unknown time counts as oldest).
fn earlier(a: Option<&prost_types::Timestamp>, b: Option<&prost_types::Timestamp>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => (a.seconds, a.nanos) < (b.seconds, b.nanos),
        _ => false,
    }
}

/// The fact kinds some outcome lists, in `FactKind` order.
fn listed(outcomes: &[SourceOutcome], of: impl Fn(&SourceOutcome) -> &Vec<i32>) -> Vec<FactKind> {
    let mut kinds: Vec<FactKind> = outcomes
        .iter()
        .flat_map(|o| of(o).iter().filter_map(|k| FactKind::try_from(*k).ok()))
        .filter(|k| *k != FactKind::Unspecified)
        .collect();
    kinds.sort_unstable_by_key(|k| *k as i32);
    kinds.dedup();
    kinds
}

/// The items whose key was not seen before, in order; an item without a key
/// is always kept.
fn once<'a, T: 'a>(
    items: impl Iterator<Item = (Found<'a>, &'a T)>,
    key: impl Fn(&Found<'a>, &T) -> Option<String>,
) -> Vec<(Found<'a>, &'a T)> {
    let mut seen = BTreeSet::new();
    items
        .filter(|(f, x)| key(f, x).is_none_or(|k| seen.insert(k)))
        .collect()
}

/// A non-negative amount: a negative amount from a source (amounts are never
/// negative by contract) is taken as zero rather than lowering a total.
fn amount(fen: i64) -> i64 {
    fen.max(0)
}

/// Divides, rounding down; zero when dividing by zero.
fn div(total: i64, by: i64) -> i64 {
    if by <= 0 { 0 } else { total / by }
}

/// A civil date as a calendar date, when it is one.
fn civil(date: Option<&CivilDate>) -> Option<NaiveDate> {
    let d = date?;
    NaiveDate::from_ymd_opt(
        d.year,
        u32::try_from(d.month).ok()?,
        u32::try_from(d.day).ok()?,
    )
}

/// Fen as yuan with two decimals.
fn yuan(fen: i64) -> String {
    hedui_proto::yuan(fen)
}

/// Hundredths of a square metre as square metres with two decimals.
fn m2(centi_m2: i64) -> String {
    hedui_proto::square_metres(centi_m2)
}

/// A proto enum name in words: prefix dropped, lower case, spaces, e.g.
/// `VEHICLE_CLASS_FARM_MACHINERY` as `"farm machinery"`.
fn enum_words(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// Joins words, or says `none`.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Distinct values in first-seen order.
fn distinct<'s>(values: impl IntoIterator<Item = &'s str>) -> Vec<&'s str> {
    let mut seen = BTreeSet::new();
    values.into_iter().filter(|v| seen.insert(*v)).collect()
}
