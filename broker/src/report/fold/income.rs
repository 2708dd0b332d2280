//! The household's monthly income: one item per finding, totals per category,
//! the employment-cost deduction, counted income and its per-capita figure.

use hedui_proto::v1::{
    EmploymentStatus, Income, IncomeCategory, IncomeItem, IncomeTotal, PensionKind, Provenance,
};

use super::{Context, Found, amount, div, enum_words, facts, indicators, yuan};
use crate::report::policy::IncomeKind;

/// The categories of the report's totals, in order, the excluded one last.
const CATEGORIES: [IncomeCategory; 5] = [
    IncomeCategory::Wages,
    IncomeCategory::Business,
    IncomeCategory::Property,
    IncomeCategory::Transfers,
    IncomeCategory::Excluded,
];

/// Folds the income of the active members.
pub(super) fn fold_income(ctx: &Context<'_>) -> Income {
    let mut items: Vec<IncomeItem> = Vec::new();

    for person in &ctx.household.active_ids {
        if let Some(item) = wage_item(ctx, person) {
            items.push(item);
        }
    }
    for (f, b) in facts!(ctx, IndividualBusiness).filter(|(_, b)| b.active) {
        let what = format!("{} ({})", b.name, b.registration_number);
        push(
            ctx,
            &mut items,
            IncomeKind::Business,
            amount(b.monthly_net_income_fen),
            &what,
            f,
        );
    }
    for (f, d) in &ctx.dwellings {
        let what = format!("building {}", d.certificate_number);
        push(
            ctx,
            &mut items,
            IncomeKind::Rent,
            amount(d.monthly_rent_fen),
            &what,
            *f,
        );
    }
    for a in ctx.account_views() {
        let what = format!(
            "{}, {} yuan over 12 months",
            a.words(),
            yuan(a.income_12m_fen)
        );
        push_from(
            ctx,
            &mut items,
            IncomeKind::Interest,
            a.income_12m_fen / 12,
            &what,
            a.provenance(),
        );
    }
    for (f, s) in facts!(ctx, SocialInsurance) {
        let kind = match s.pension_kind() {
            PensionKind::Employee => IncomeKind::EmployeePension,
            PensionKind::Resident => IncomeKind::ResidentPension,
            // No pension is paid.
            PensionKind::Unspecified => continue,
        };
        push(ctx, &mut items, kind, amount(s.monthly_pension_fen), "", f);
    }
    for (f, e) in facts!(ctx, Employment) {
        let what = enum_words(e.status().as_str_name(), "EMPLOYMENT_STATUS_");
        let monthly = amount(e.unemployment_benefit_fen);
        push(
            ctx,
            &mut items,
            IncomeKind::UnemploymentBenefit,
            monthly,
            &what,
            f,
        );
    }
    for (f, l) in facts!(ctx, LandContract) {
        let what = format!(
            "land contract {}, {} yuan over 12 months",
            l.contract_number,
            yuan(amount(l.subsidies_12m_fen))
        );
        let monthly = amount(l.subsidies_12m_fen) / 12;
        push(
            ctx,
            &mut items,
            IncomeKind::AgriculturalSubsidy,
            monthly,
            &what,
            f,
        );
    }
    for (f, r) in facts!(ctx, ForestRight) {
        let what = format!(
            "forest right {}, {} yuan over 12 months",
            r.certificate_number,
            yuan(amount(r.grants_12m_fen))
        );
        let monthly = amount(r.grants_12m_fen) / 12;
        push(
            ctx,
            &mut items,
            IncomeKind::ForestryGrant,
            monthly,
            &what,
            f,
        );
    }
    for (f, s) in facts!(ctx, SocialAssistance) {
        let what = enum_words(s.assistance_type().as_str_name(), "ASSISTANCE_TYPE_");
        push(
            ctx,
            &mut items,
            IncomeKind::SocialAssistance,
            amount(s.monthly_fen),
            &what,
            f,
        );
    }
    for (f, d) in facts!(ctx, Disability) {
        let what = format!("{}, grade {}", d.category, d.grade);
        let monthly = amount(d.monthly_allowance_fen);
        push(
            ctx,
            &mut items,
            IncomeKind::DisabilityAllowance,
            monthly,
            &what,
            f,
        );
    }
    for (f, s) in facts!(ctx, SchoolEnrolment) {
        let what = format!(
            "{}, {}, {} yuan over 12 months",
            s.level,
            s.school,
            yuan(amount(s.study_assistance_12m_fen))
        );
        let monthly = amount(s.study_assistance_12m_fen) / 12;
        push(
            ctx,
            &mut items,
            IncomeKind::StudyAssistance,
            monthly,
            &what,
            f,
        );
    }
    for (f, a) in facts!(ctx, AssistanceReceived) {
        let what = format!(
            "{}, {} yuan over 12 months",
            a.programme,
            yuan(amount(a.amount_12m_fen))
        );
        let monthly = amount(a.amount_12m_fen) / 12;
        push(
            ctx,
            &mut items,
            IncomeKind::ProgrammeAssistance,
            monthly,
            &what,
            f,
        );
    }

    let total = |category: IncomeCategory| -> i64 {
        items
            .iter()
            .filter(|i| i.category() == category)
            .fold(0i64, |sum, i| sum.saturating_add(i.monthly_fen))
    };
    let totals: Vec<IncomeTotal> = CATEGORIES
        .iter()
        .map(|c| IncomeTotal {
            category: *c as i32,
            monthly_fen: total(*c),
        })
        .collect();
    let wages = total(IncomeCategory::Wages);
    let deduction = wages.saturating_mul(ctx.policy.income.employment_cost_pct) / 100;
    let counted = [
        IncomeCategory::Wages,
        IncomeCategory::Business,
        IncomeCategory::Property,
        IncomeCategory::Transfers,
    ]
    .iter()
    .fold(0i64, |sum, c| sum.saturating_add(total(*c)))
        - deduction;
    let input_kinds = indicators::income_input_kinds(ctx.policy);
    let missing: Vec<String> = ctx
        .missing_serving(&input_kinds)
        .iter()
        .map(|o| o.spec.id.clone())
        .collect();
    // Income that needs a withheld kind is not complete either.
    let withheld = ctx.withheld_of(&input_kinds);

    Income {
        items,
        totals,
        employment_cost_deduction_fen: deduction,
        counted_monthly_fen: counted,
        per_capita_monthly_fen: div(counted, ctx.n as i64),
        complete: missing.is_empty() && withheld.is_empty(),
        missing_sources: missing,
    }
}

/// Adds an item of a non-wage kind when its monthly amount is not zero; the
/// kind is counted in its category or listed as excluded with the reason.
fn push(
    ctx: &Context<'_>,
    items: &mut Vec<IncomeItem>,
    kind: IncomeKind,
    monthly_fen: i64,
    what: &str,
    found: Found<'_>,
) {
    push_from(ctx, items, kind, monthly_fen, what, found.provenance());
}

/// [`push`] with its provenance given.
fn push_from(
    ctx: &Context<'_>,
    items: &mut Vec<IncomeItem>,
    kind: IncomeKind,
    monthly_fen: i64,
    what: &str,
    provenance: Provenance,
) {
    if monthly_fen == 0 {
        return;
    }
    let description = if what.is_empty() {
        kind.label().to_owned()
    } else {
        format!("{} ({what})", kind.label())
    };
    items.push(item(ctx, kind, monthly_fen, description, provenance));
}

fn item(
    ctx: &Context<'_>,
    kind: IncomeKind,
    monthly_fen: i64,
    description: String,
    provenance: Provenance,
) -> IncomeItem {
    let (category, excluded_reason) = if ctx.policy.counts(kind) {
        (kind.category(), String::new())
    } else {
        (
            IncomeCategory::Excluded,
            format!(
                "{} is not counted as income under policy {} (income.excluded)",
                kind.label(),
                ctx.policy.id()
            ),
        )
    };
    IncomeItem {
        category: category as i32,
        description,
        monthly_fen,
        excluded_reason,
        provenance: Some(provenance),
    }
}

/// One source of evidence of a person's wages.
#[derive(Debug)]
struct Evidence<'a> {
    /// What it is, e.g. `"employment"`, `"income tax 2023"`.
    label: String,
    /// Monthly wages it shows, in fen.
    monthly_fen: i64,
    /// The facts it sums.
    found: Vec<Found<'a>>,
    /// Employers named, if any.
    employers: Vec<String>,
}

/// Employment statuses whose registered wage is evidence of wages.
const WORKING: [EmploymentStatus; 3] = [
    EmploymentStatus::Employed,
    EmploymentStatus::PublicWelfareJob,
    EmploymentStatus::Flexible,
];

/// The evidence of a person's wages, in the order that breaks ties:
/// employment, public payroll, income tax. Absent kinds are left out.
fn wage_evidence<'a>(ctx: &Context<'a>, person: &str) -> Vec<Evidence<'a>> {
    let mut evidence = Vec::new();

    let employment: Vec<_> = facts!(ctx, Employment)
        .filter(|(f, e)| f.person_id == person && WORKING.contains(&e.status()))
        .collect();
    if !employment.is_empty() {
        evidence.push(Evidence {
            label: "employment".to_owned(),
            monthly_fen: employment.iter().fold(0i64, |s, (_, e)| {
                s.saturating_add(amount(e.monthly_wage_fen))
            }),
            found: employment.iter().map(|(f, _)| *f).collect(),
            employers: employment.iter().map(|(_, e)| e.employer.clone()).collect(),
        });
    }

    let payroll: Vec<_> = facts!(ctx, PublicPayroll)
        .filter(|(f, _)| f.person_id == person)
        .collect();
    if !payroll.is_empty() {
        evidence.push(Evidence {
            label: "public payroll".to_owned(),
            monthly_fen: payroll.iter().fold(0i64, |s, (_, p)| {
                s.saturating_add(amount(p.monthly_salary_fen))
            }),
            found: payroll.iter().map(|(f, _)| *f).collect(),
            employers: payroll.iter().map(|(_, p)| p.employer.clone()).collect(),
        });
    }

    let taxes: Vec<_> = facts!(ctx, IncomeTax)
        .filter(|(f, _)| f.person_id == person)
        .collect();
    if let Some(latest) = taxes.iter().map(|(_, t)| t.year).max() {
        // One fact per year is expected; should a source give two for the
        // latest year, the larger figure is taken (the first of equals).
        let monthly = |t: &hedui_proto::v1::IncomeTax| {
            amount(t.annual_wages_fen).saturating_add(amount(t.annual_labour_fen)) / 12
        };
        let mut best: Option<(Found<'a>, i64)> = None;
        for (f, t) in taxes.iter().filter(|(_, t)| t.year == latest) {
            let m = monthly(t);
            if best.is_none_or(|(_, b)| m > b) {
                best = Some((*f, m));
            }
        }
        if let Some((f, m)) = best {
            evidence.push(Evidence {
                label: format!("income tax {latest}"),
                monthly_fen: m,
                found: vec![f],
                employers: Vec::new(),
            });
        }
    }
    evidence
}

/// The person's wage item: the largest evidence (ties to the earlier in
/// employment, public payroll, income tax order), the others named as
/// corroborating. `None` when there is no evidence.
fn wage_item(ctx: &Context<'_>, person: &str) -> Option<IncomeItem> {
    let evidence = wage_evidence(ctx, person);
    let mut best = 0;
    for (i, e) in evidence.iter().enumerate() {
        if e.monthly_fen > evidence[best].monthly_fen {
            best = i;
        }
    }
    let chosen = evidence.get(best)?;

    let employers: Vec<&str> = super::distinct(
        chosen
            .employers
            .iter()
            .map(String::as_str)
            .filter(|e| !e.is_empty()),
    );
    let mut description = format!("wages from {}", chosen.label);
    if !employers.is_empty() {
        description.push_str(&format!(" ({})", employers.join(", ")));
    }
    let others: Vec<String> = evidence
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != best)
        .map(|(_, e)| format!("{} {} yuan/month", e.label, yuan(e.monthly_fen)))
        .collect();
    if !others.is_empty() {
        description.push_str(&format!("; corroborating: {}", others.join(", ")));
    }

    // The figure may sum several records (two employers): the provenance
    // names every one of them, and the oldest as-of time.
    let sources = super::distinct(chosen.found.iter().map(|f| f.source_id));
    let records: Vec<&str> = chosen.found.iter().map(|f| f.record_id).collect();
    let as_of = chosen
        .found
        .iter()
        .filter_map(|f| f.as_of)
        .min_by_key(|t| (t.seconds, t.nanos))
        .copied();
    let provenance = Provenance {
        source_id: sources.join(", "),
        person_id: person.to_owned(),
        record_id: records.join(", "),
        as_of,
    };
    Some(item(
        ctx,
        IncomeKind::Wages,
        chosen.monthly_fen,
        description,
        provenance,
    ))
}
