//! Ground truth: what the broker's report should say about each household
//! when every source answers, computed from the population's own model by
//! an independent implementation of `docs/policy.md` (integer fen, every
//! division rounded down, annual figures divided by 12 item by item, wages
//! as the largest of three evidences, accounts and dwellings taken once).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Months, NaiveDate};
use hedui_proto::v1::{
    AccountType, EmploymentStatus, HukouType, Outcome, PensionKind, Purpose, VehicleClass,
    VehicleStatus,
};
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::{
    agency::Agency,
    population::{Holding, Household, Population, Scenario},
};

/// The ids of the indicators, in report order.
pub const INDICATOR_IDS: [&str; 9] = ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"];

/// A kind of income, as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncomeKind {
    /// Wages: the largest of employment, public payroll and income tax.
    Wages,
    /// Net income of active individual businesses.
    Business,
    /// Registered rent of dwellings.
    Rent,
    /// Interest and dividends of financial accounts.
    Interest,
    /// Basic pension of urban employees.
    EmployeePension,
    /// Unemployment benefit.
    UnemploymentBenefit,
    /// Planting, breeding and machinery subsidies.
    AgriculturalSubsidy,
    /// Forestry grants.
    ForestryGrant,
    /// Basic pension of urban and rural residents.
    ResidentPension,
    /// Social assistance paid by civil affairs.
    SocialAssistance,
    /// Disability allowance.
    DisabilityAllowance,
    /// Study assistance.
    StudyAssistance,
    /// Assistance received from programmes.
    ProgrammeAssistance,
}

impl IncomeKind {
    /// Every kind, in the policy's order.
    pub const ALL: [IncomeKind; 13] = [
        IncomeKind::Wages,
        IncomeKind::Business,
        IncomeKind::Rent,
        IncomeKind::Interest,
        IncomeKind::EmployeePension,
        IncomeKind::UnemploymentBenefit,
        IncomeKind::AgriculturalSubsidy,
        IncomeKind::ForestryGrant,
        IncomeKind::ResidentPension,
        IncomeKind::SocialAssistance,
        IncomeKind::DisabilityAllowance,
        IncomeKind::StudyAssistance,
        IncomeKind::ProgrammeAssistance,
    ];

    /// The kinds the default policy does not count.
    pub const EXCLUDED_BY_DEFAULT: [IncomeKind; 5] = [
        IncomeKind::ResidentPension,
        IncomeKind::SocialAssistance,
        IncomeKind::DisabilityAllowance,
        IncomeKind::StudyAssistance,
        IncomeKind::ProgrammeAssistance,
    ];

    /// The name the policy file uses, e.g. `"employee_pension"`.
    pub fn policy_name(self) -> &'static str {
        match self {
            IncomeKind::Wages => "wages",
            IncomeKind::Business => "business",
            IncomeKind::Rent => "rent",
            IncomeKind::Interest => "interest",
            IncomeKind::EmployeePension => "employee_pension",
            IncomeKind::UnemploymentBenefit => "unemployment_benefit",
            IncomeKind::AgriculturalSubsidy => "agricultural_subsidy",
            IncomeKind::ForestryGrant => "forestry_grant",
            IncomeKind::ResidentPension => "resident_pension",
            IncomeKind::SocialAssistance => "social_assistance",
            IncomeKind::DisabilityAllowance => "disability_allowance",
            IncomeKind::StudyAssistance => "study_assistance",
            IncomeKind::ProgrammeAssistance => "programme_assistance",
        }
    }

    /// The kind with this policy name.
    pub fn from_policy_name(name: &str) -> Option<IncomeKind> {
        IncomeKind::ALL
            .into_iter()
            .find(|k| k.policy_name() == name)
    }
}

/// The purpose with this kebab-case name, e.g. `"dibao-application"` or
/// `"low-income"`.
pub fn purpose_from_name(name: &str) -> Option<Purpose> {
    let proto_name = format!("PURPOSE_{}", name.replace('-', "_").to_ascii_uppercase());
    Purpose::from_str_name(&proto_name).filter(|p| *p != Purpose::Unspecified)
}

/// The parameters of the policy that the truth applies (docs/policy.md).
/// [`TruthPolicy::dachuan_2018`] gives Dachuan's defaults for a Dibao
/// application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthPolicy {
    /// Urban standard `S`, fen per person per month.
    pub urban_standard_fen: i64,
    /// Rural standard `S`, fen per person per month.
    pub rural_standard_fen: i64,
    /// Share of wages deducted as the cost of employment, in percent.
    pub employment_cost_pct: i64,
    /// R1 passes below `S × income_multiple_pct / 100` per capita.
    pub income_multiple_pct: i64,
    /// R2 passes at or below `S × asset_months` per capita.
    pub asset_months: i64,
    /// Income kinds not counted.
    pub excluded_income: Vec<IncomeKind>,
    /// Account types whose balances are money assets.
    pub money_account_types: Vec<AccountType>,
    /// Registered vehicle classes that fail R3.
    pub vehicle_fail_classes: Vec<VehicleClass>,
    /// Registered vehicle classes that need review under R3.
    pub vehicle_review_classes: Vec<VehicleClass>,
    /// Most residential dwellings a household may own.
    pub housing_max_dwellings: usize,
    /// Largest residential area per capita with `housing_max_dwellings`
    /// dwellings, in hundredths of a square metre.
    pub housing_avg_area_per_capita_centi_m2: i64,
    /// A dwelling acquired within this many years before the verification
    /// date needs review.
    pub housing_review_years: u32,
    /// Largest total subscribed capital of active market entities, in fen.
    pub business_capital_limit_fen: i64,
    /// R9 reviews total outflows per capita above `S × outflow_months`.
    pub outflow_months: i64,
    /// The date of the verification; `None` means the population's today.
    pub verification_date: Option<NaiveDate>,
}

impl TruthPolicy {
    /// Dachuan District from 2018-01-01, for a Dibao application: urban
    /// 520 yuan and rural 330 yuan per person per month.
    pub fn dachuan_2018() -> Self {
        TruthPolicy {
            urban_standard_fen: 52_000,
            rural_standard_fen: 33_000,
            employment_cost_pct: 10,
            income_multiple_pct: 100,
            asset_months: 24,
            excluded_income: IncomeKind::EXCLUDED_BY_DEFAULT.to_vec(),
            money_account_types: vec![
                AccountType::Deposit,
                AccountType::Securities,
                AccountType::Fund,
                AccountType::Insurance,
                AccountType::WealthManagement,
            ],
            vehicle_fail_classes: vec![VehicleClass::Car, VehicleClass::Truck, VehicleClass::Ship],
            vehicle_review_classes: vec![VehicleClass::Tricycle, VehicleClass::FarmMachinery],
            housing_max_dwellings: 2,
            housing_avg_area_per_capita_centi_m2: 4_000,
            housing_review_years: 3,
            business_capital_limit_fen: 10_000_000,
            outflow_months: 12,
            verification_date: None,
        }
    }

    /// Dachuan's defaults with the purpose's parameters.
    pub fn for_purpose(purpose: Purpose) -> Self {
        TruthPolicy::dachuan_2018().with_purpose(purpose)
    }

    /// The same policy with the income multiple and asset months of
    /// `purpose`: Dibao application and review 100 % and 24 months, extreme
    /// poverty 100 % and 36, low income 150 % and 36, temporary, medical
    /// and education assistance 150 % and 24.
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        let (pct, months) = match purpose {
            Purpose::DibaoApplication | Purpose::DibaoReview | Purpose::Unspecified => (100, 24),
            Purpose::ExtremePoverty => (100, 36),
            Purpose::LowIncome => (150, 36),
            Purpose::TemporaryAssistance
            | Purpose::MedicalAssistance
            | Purpose::EducationAssistance => (150, 24),
        };
        self.income_multiple_pct = pct;
        self.asset_months = months;
        self
    }

    /// The standard for a hukou type.
    pub fn standard_fen(&self, hukou: HukouType) -> i64 {
        match hukou {
            HukouType::Urban => self.urban_standard_fen,
            HukouType::Rural | HukouType::Unspecified => self.rural_standard_fen,
        }
    }

    fn counts(&self, kind: IncomeKind) -> bool {
        !self.excluded_income.contains(&kind)
    }
}

impl Default for TruthPolicy {
    fn default() -> Self {
        TruthPolicy::dachuan_2018()
    }
}

/// What the report on a household should say when every source answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroundTruth {
    /// Household register number.
    pub household_number: String,
    /// The applicant's resident identity number.
    pub applicant_id: String,
    /// Active members, the head first.
    pub member_ids: Vec<String>,
    /// Deceased and moved-out persons still in the register.
    pub inactive_member_ids: Vec<String>,
    /// Urban or rural registration.
    #[serde(serialize_with = "ser_hukou")]
    pub hukou_type: HukouType,
    /// The standard `S` applied, fen per person per month.
    pub standard_fen: i64,
    /// Household wages per month (sum of each member's largest evidence).
    pub wages_fen: i64,
    /// Employment-cost deduction per month.
    pub employment_cost_deduction_fen: i64,
    /// Counted monthly income, after the deduction.
    pub counted_income_fen: i64,
    /// Counted monthly income per active member, rounded down.
    pub per_capita_income_fen: i64,
    /// Monthly income of kinds the policy does not count.
    pub excluded_income_fen: i64,
    /// Monthly amount of each kind of income found (counted or not), by
    /// policy name; kinds with nothing are left out.
    pub income_by_kind: BTreeMap<String, i64>,
    /// Money assets.
    pub money_assets_fen: i64,
    /// Money assets per active member, rounded down.
    pub money_assets_per_capita_fen: i64,
    /// Residential dwellings (each certificate once).
    pub residential_dwellings: u32,
    /// Their total area in hundredths of a square metre.
    pub residential_area_centi_m2: i64,
    /// Non-residential buildings (each certificate once).
    pub non_residential_buildings: u32,
    /// Registered vehicles of the fail classes (cars, trucks, ships).
    pub fail_class_vehicles: u32,
    /// Subscribed capital in active market entities.
    pub active_capital_fen: i64,
    /// Total outflows from accounts.
    pub outflows_fen: i64,
    /// Accounts held at the Rural Commercial Bank.
    pub rural_bank_accounts: u32,
    /// Number of facts each source other than `public-security` holds
    /// about the active members (sources with none left out).
    pub facts_by_source: BTreeMap<String, u32>,
    /// Outcomes of R1 to R9, in order.
    #[serde(serialize_with = "ser_indicators")]
    pub indicators: [Outcome; 9],
    /// The verdict.
    #[serde(serialize_with = "ser_outcome")]
    pub verdict: Outcome,
    /// What the household was generated to show.
    pub scenario: Scenario,
}

impl GroundTruth {
    /// The outcome of indicator `id` (`"R1"` to `"R9"`).
    pub fn indicator(&self, id: &str) -> Option<Outcome> {
        INDICATOR_IDS
            .iter()
            .position(|i| *i == id)
            .map(|i| self.indicators[i])
    }

    /// Ids of the indicators with this outcome.
    pub fn with_outcome(&self, outcome: Outcome) -> Vec<&'static str> {
        INDICATOR_IDS
            .iter()
            .zip(self.indicators)
            .filter(|(_, o)| *o == outcome)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The truth as one line of JSON (outcomes and hukou types as names,
    /// e.g. `"PASS"`, `"URBAN"`).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("ground truth serializes")
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    o.as_str_name().trim_start_matches("OUTCOME_")
}

fn ser_outcome<S: Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(outcome_name(*o))
}

fn ser_hukou<S: Serializer>(h: &HukouType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str_name().trim_start_matches("HUKOU_TYPE_"))
}

fn ser_indicators<S: Serializer>(o: &[Outcome; 9], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(9))?;
    for (id, outcome) in INDICATOR_IDS.iter().zip(o) {
        map.serialize_entry(id, outcome_name(*outcome))?;
    }
    map.end()
}

/// The households the broker's demo shows, with their truth.
#[derive(Debug, Clone)]
pub struct DemoPicks {
    /// A household of several members that passes every indicator.
    pub pass: GroundTruth,
    /// A household whose only failing indicator is R1 (income), every
    /// other one passing.
    pub income_fail: GroundTruth,
    /// A household with a registered car (R3 fails), every other indicator
    /// passing.
    pub car_fail: GroundTruth,
    /// A household that passes everything and keeps an account at the
    /// Rural Commercial Bank: with the bank down, its income and money
    /// assets are inconclusive.
    pub bank_outage: GroundTruth,
}

// === impl Population ===

impl Population {
    /// The ground truth of every household, in order.
    pub fn truth(&self, policy: &TruthPolicy) -> Vec<GroundTruth> {
        self.households().map(|h| truth_of(h, policy)).collect()
    }

    /// The ground truth of the household with this register number.
    pub fn household_truth(&self, number: &str, policy: &TruthPolicy) -> Option<GroundTruth> {
        self.household(number).map(|h| truth_of(h, policy))
    }

    /// The ground truth of the household of the person with this id.
    pub fn truth_for_person(&self, person_id: &str, policy: &TruthPolicy) -> Option<GroundTruth> {
        self.household_of(person_id).map(|h| truth_of(h, policy))
    }

    /// The first household (in order) whose truth satisfies `pred`.
    pub fn find(
        &self,
        policy: &TruthPolicy,
        mut pred: impl FnMut(&Household<'_>, &GroundTruth) -> bool,
    ) -> Option<GroundTruth> {
        self.households().find_map(|h| {
            let t = truth_of(h, policy);
            pred(&h, &t).then_some(t)
        })
    }

    /// The households the broker's demo shows; `None` when the population
    /// is too small to hold one of each.
    pub fn demo_picks(&self, policy: &TruthPolicy) -> Option<DemoPicks> {
        let others_pass = |t: &GroundTruth, except: &str| {
            INDICATOR_IDS
                .iter()
                .zip(t.indicators)
                .all(|(id, o)| *id == except || o == Outcome::Pass)
        };
        let pass = self.find(policy, |_, t| {
            t.verdict == Outcome::Pass
                && t.member_ids.len() >= 2
                && t.counted_income_fen > 0
                && t.rural_bank_accounts == 0
        })?;
        let income_fail = self.find(policy, |_, t| {
            t.indicators[0] == Outcome::Fail && others_pass(t, "R1")
        })?;
        let car_fail = self.find(policy, |h, t| {
            t.indicators[2] == Outcome::Fail && others_pass(t, "R3") && has_registered_car(h)
        })?;
        let bank_outage = self.find(policy, |_, t| {
            t.verdict == Outcome::Pass
                && t.rural_bank_accounts > 0
                && t.household_number != pass.household_number
        })?;
        Some(DemoPicks {
            pass,
            income_fail,
            car_fail,
            bank_outage,
        })
    }
}

impl Household<'_> {
    /// The household's ground truth under `policy`.
    pub fn truth(&self, policy: &TruthPolicy) -> GroundTruth {
        truth_of(*self, policy)
    }
}

fn has_registered_car(h: &Household<'_>) -> bool {
    let pop = h.population();
    h.active_members().any(|p| {
        pop.holdings_of(p.record_index()).iter().any(|x| {
            matches!(
                *x,
                Holding::Vehicle { class, status, .. }
                    if i32::from(class) == VehicleClass::Car as i32
                        && i32::from(status) == VehicleStatus::Registered as i32
            )
        })
    })
}

fn is(v: u8, e: i32) -> bool {
    i32::from(v) == e
}

/// One dwelling, taken once per certificate.
#[derive(Debug, Clone, Copy)]
struct DwellingTruth {
    residential: bool,
    area_centi_m2: i64,
    acquired: NaiveDate,
    rent_fen: i64,
}

/// Computes the truth of one household from the model, following
/// docs/policy.md.
fn truth_of(hh: Household<'_>, policy: &TruthPolicy) -> GroundTruth {
    let pop = hh.population();
    let date = policy.verification_date.unwrap_or_else(|| pop.today());
    let active: Vec<_> = hh.active_members().collect();
    let n = active.len().max(1) as i64;
    let hukou = hh.hukou_type();
    let s = policy.standard_fen(hukou);

    let mut income: BTreeMap<IncomeKind, i64> = BTreeMap::new();
    let mut add = |kind: IncomeKind, fen: i64| {
        if fen != 0 {
            *income.entry(kind).or_default() += fen;
        }
    };
    let mut accounts_seen: BTreeSet<(u8, usize)> = BTreeSet::new();
    let mut dwellings: BTreeMap<u32, DwellingTruth> = BTreeMap::new();
    let mut facts_by_source: BTreeMap<String, u32> = BTreeMap::new();
    let mut money = 0i64;
    let mut rural_bank_accounts = 0u32;
    let (mut vehicle_fail, mut vehicle_review, mut fail_class_vehicles) = (false, false, 0u32);
    let (mut capital, mut any_entity, mut any_business) = (0i64, false, false);
    let (mut payroll, mut related) = (false, false);
    let mut outflows = 0i64;

    for p in &active {
        let idx = p.record_index();
        let rec = pop.person_rec(idx);
        let first = rec.first_holding as usize;
        // The three evidences of wages.
        let mut employment_wages = 0i64;
        let mut payroll_salary = 0i64;
        let mut latest_tax: Option<(u16, i64)> = None;
        for (k, h) in pop.holdings_of(idx).iter().enumerate() {
            *facts_by_source
                .entry(h.agency().id().to_owned())
                .or_default() += 1;
            match *h {
                Holding::Employment {
                    status,
                    wage_fen,
                    benefit_fen,
                    ..
                } => {
                    let wage_status = is(status, EmploymentStatus::Employed as i32)
                        || is(status, EmploymentStatus::PublicWelfareJob as i32)
                        || is(status, EmploymentStatus::Flexible as i32);
                    if wage_status {
                        employment_wages += i64::from(wage_fen);
                    }
                    add(IncomeKind::UnemploymentBenefit, i64::from(benefit_fen));
                }
                Holding::PublicPayroll { salary_fen, .. } => {
                    payroll = true;
                    payroll_salary += i64::from(salary_fen);
                }
                Holding::IncomeTax {
                    year,
                    wages_fen,
                    labour_fen,
                    ..
                } => {
                    let monthly = (i64::from(wages_fen) + i64::from(labour_fen)) / 12;
                    if latest_tax.is_none_or(|(y, _)| year > y) {
                        latest_tax = Some((year, monthly));
                    }
                }
                Holding::IndividualBusiness {
                    net_fen, active, ..
                } => {
                    if active {
                        any_business = true;
                        add(IncomeKind::Business, i64::from(net_fen));
                    }
                }
                Holding::MarketEntity {
                    capital_fen,
                    active,
                    ..
                } => {
                    if active {
                        any_entity = true;
                        capital += i64::from(capital_fen);
                    }
                }
                Holding::Dwelling {
                    cert,
                    residential,
                    area_centi_m2,
                    acquired,
                    rent_yuan,
                    ..
                } => {
                    dwellings.entry(cert).or_insert(DwellingTruth {
                        residential,
                        area_centi_m2: i64::from(area_centi_m2),
                        acquired,
                        rent_fen: i64::from(rent_yuan) * 100,
                    });
                }
                Holding::Account {
                    institution,
                    kind,
                    balance_fen,
                    income_12m_fen,
                } => {
                    // An account is its institution and its reference (made
                    // from the record's position).
                    if accounts_seen.insert((institution, first + k)) {
                        add(IncomeKind::Interest, i64::from(income_12m_fen) / 12);
                        let money_type = policy
                            .money_account_types
                            .iter()
                            .any(|t| is(kind, *t as i32));
                        if money_type {
                            money += i64::from(balance_fen);
                        }
                        if h.agency() == Agency::RuralCommercialBank {
                            rural_bank_accounts += 1;
                        }
                    }
                }
                Holding::Outflow { total_fen, .. } => outflows += i64::from(total_fen),
                Holding::SocialInsurance {
                    pension_kind,
                    pension_fen,
                    ..
                } => {
                    if is(pension_kind, PensionKind::Employee as i32) {
                        add(IncomeKind::EmployeePension, i64::from(pension_fen));
                    } else if is(pension_kind, PensionKind::Resident as i32) {
                        add(IncomeKind::ResidentPension, i64::from(pension_fen));
                    }
                }
                Holding::LandContract { subsidies_fen, .. } => {
                    add(
                        IncomeKind::AgriculturalSubsidy,
                        i64::from(subsidies_fen) / 12,
                    );
                }
                Holding::ForestRight { grants_fen, .. } => {
                    add(IncomeKind::ForestryGrant, i64::from(grants_fen) / 12);
                }
                Holding::SocialAssistance { monthly_fen, .. } => {
                    add(IncomeKind::SocialAssistance, i64::from(monthly_fen));
                }
                Holding::Disability { allowance_fen, .. } => {
                    add(IncomeKind::DisabilityAllowance, i64::from(allowance_fen));
                }
                Holding::School { assistance_fen, .. } => {
                    add(IncomeKind::StudyAssistance, i64::from(assistance_fen) / 12);
                }
                Holding::Assistance { amount_fen, .. } => {
                    add(IncomeKind::ProgrammeAssistance, i64::from(amount_fen) / 12);
                }
                Holding::Vehicle { class, status, .. } => {
                    if is(status, VehicleStatus::Registered as i32) {
                        if policy
                            .vehicle_fail_classes
                            .iter()
                            .any(|c| is(class, *c as i32))
                        {
                            vehicle_fail = true;
                            fail_class_vehicles += 1;
                        }
                        if policy
                            .vehicle_review_classes
                            .iter()
                            .any(|c| is(class, *c as i32))
                        {
                            vehicle_review = true;
                        }
                    }
                }
                Holding::Licence { valid_to, .. } => {
                    if valid_to >= date {
                        vehicle_fail = true;
                    }
                }
                Holding::RelatedParty { .. } => related = true,
                Holding::ProvidentFund { .. } | Holding::TaxRegistration { .. } => {}
            }
        }
        // Medical insurance and marriage are kept on the person.
        *facts_by_source
            .entry(Agency::MedicalInsurance.id().to_owned())
            .or_default() += 1;
        let person_facts = p.facts(Agency::CivilAffairs, prost_types::Timestamp::default());
        let marriage = person_facts
            .iter()
            .filter(|f| matches!(f.value, Some(hedui_proto::v1::fact::Value::Marriage(_))))
            .count() as u32;
        if marriage > 0 {
            *facts_by_source
                .entry(Agency::CivilAffairs.id().to_owned())
                .or_default() += marriage;
        }
        let wages = employment_wages
            .max(payroll_salary)
            .max(latest_tax.map_or(0, |(_, m)| m));
        add(IncomeKind::Wages, wages);
    }
    for d in dwellings.values() {
        add(IncomeKind::Rent, d.rent_fen);
    }

    // Income.
    let amount = |k: IncomeKind| income.get(&k).copied().unwrap_or(0);
    let wages = amount(IncomeKind::Wages);
    let deduction = if policy.counts(IncomeKind::Wages) {
        wages * policy.employment_cost_pct / 100
    } else {
        0
    };
    let counted_gross: i64 = income
        .iter()
        .filter(|(k, _)| policy.counts(**k))
        .map(|(_, v)| v)
        .sum();
    let excluded: i64 = income
        .iter()
        .filter(|(k, _)| !policy.counts(**k))
        .map(|(_, v)| v)
        .sum();
    let counted = counted_gross - deduction;
    let per_capita = counted / n;
    let money_per_capita = money / n;

    // Housing.
    let residential: Vec<&DwellingTruth> = dwellings.values().filter(|d| d.residential).collect();
    let non_residential = dwellings.len() - residential.len();
    let residential_area: i64 = residential.iter().map(|d| d.area_centi_m2).sum();
    let cutoff = date
        .checked_sub_months(Months::new(policy.housing_review_years * 12))
        .unwrap_or(NaiveDate::MIN);
    let recently_acquired = dwellings
        .values()
        .any(|d| d.acquired >= cutoff && d.acquired <= date);

    let pass_fail = |pass: bool| if pass { Outcome::Pass } else { Outcome::Fail };
    let review_or_pass = |review: bool| {
        if review {
            Outcome::Review
        } else {
            Outcome::Pass
        }
    };

    let r1 = pass_fail(per_capita < s * policy.income_multiple_pct / 100);
    let r2 = pass_fail(money_per_capita <= s * policy.asset_months);
    let r3 = if vehicle_fail {
        Outcome::Fail
    } else {
        review_or_pass(vehicle_review)
    };
    let max = policy.housing_max_dwellings;
    let housing_fail = residential.len() > max
        || (residential.len() == max
            && residential_area / n > policy.housing_avg_area_per_capita_centi_m2)
        || (non_residential > 0 && !residential.is_empty());
    let r4 = if housing_fail {
        Outcome::Fail
    } else {
        review_or_pass((non_residential > 0 && residential.is_empty()) || recently_acquired)
    };
    let r5 = if capital > policy.business_capital_limit_fen {
        Outcome::Fail
    } else {
        review_or_pass(any_entity || any_business)
    };
    let r6 = review_or_pass(payroll);
    let r7 = review_or_pass(related);
    let r8 = review_or_pass(hh.members().any(|p| !p.is_active()));
    let r9 = review_or_pass(outflows / n > s * policy.outflow_months);
    let indicators = [r1, r2, r3, r4, r5, r6, r7, r8, r9];
    let verdict = if indicators.contains(&Outcome::Fail) {
        Outcome::Fail
    } else if indicators.contains(&Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else if indicators.contains(&Outcome::Review) {
        Outcome::Review
    } else {
        Outcome::Pass
    };

    GroundTruth {
        household_number: hh.number(),
        applicant_id: hh.applicant().id().to_owned(),
        member_ids: active.iter().map(|p| p.id().to_owned()).collect(),
        inactive_member_ids: hh
            .members()
            .filter(|p| !p.is_active())
            .map(|p| p.id().to_owned())
            .collect(),
        hukou_type: hukou,
        standard_fen: s,
        wages_fen: wages,
        employment_cost_deduction_fen: deduction,
        counted_income_fen: counted,
        per_capita_income_fen: per_capita,
        excluded_income_fen: excluded,
        income_by_kind: income
            .iter()
            .map(|(k, v)| (k.policy_name().to_owned(), *v))
            .collect(),
        money_assets_fen: money,
        money_assets_per_capita_fen: money_per_capita,
        residential_dwellings: residential.len() as u32,
        residential_area_centi_m2: residential_area,
        non_residential_buildings: non_residential as u32,
        fail_class_vehicles,
        active_capital_fen: capital,
        outflows_fen: outflows,
        rural_bank_accounts,
        facts_by_source,
        indicators,
        verdict,
        scenario: hh.scenario(),
    }
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{Fact, fact::Value};

    use super::*;
    use crate::population::PopulationConfig;

    fn pop(households: usize) -> Population {
        Population::generate(&PopulationConfig {
            seed: 2018,
            households,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        })
    }

    /// The figures of a household recomputed from the facts its sources
    /// report, by a second, fact-based reading of the policy: what the
    /// broker does.
    fn from_facts(pop: &Population, t: &GroundTruth) -> (i64, i64, i64) {
        let as_of = prost_types::Timestamp::default();
        let mut wages = 0;
        let mut other = 0;
        let mut money = 0;
        let mut certs = BTreeSet::new();
        for id in &t.member_ids {
            let facts: Vec<Fact> = Agency::ALL[1..]
                .iter()
                .flat_map(|a| pop.facts_for(a.id(), id, as_of))
                .collect();
            let (mut emp, mut pay, mut tax) = (0, 0, (0, 0));
            for f in &facts {
                match f.value.as_ref().unwrap() {
                    Value::Employment(e) => {
                        if [1, 3, 4].contains(&e.status) {
                            emp += e.monthly_wage_fen;
                        }
                        other += e.unemployment_benefit_fen;
                    }
                    Value::PublicPayroll(p) => pay += p.monthly_salary_fen,
                    Value::IncomeTax(x) if x.year > tax.0 => {
                        tax = (x.year, (x.annual_wages_fen + x.annual_labour_fen) / 12)
                    }
                    Value::IndividualBusiness(b) if b.active => other += b.monthly_net_income_fen,
                    Value::Dwelling(d) if certs.insert(d.certificate_number.clone()) => {
                        other += d.monthly_rent_fen
                    }
                    Value::FinancialAccount(a) => {
                        other += a.income_12m_fen / 12;
                        money += a.balance_fen;
                    }
                    Value::SocialInsurance(s) if s.pension_kind == 1 => {
                        other += s.monthly_pension_fen
                    }
                    Value::LandContract(l) => other += l.subsidies_12m_fen / 12,
                    Value::ForestRight(r) => other += r.grants_12m_fen / 12,
                    _ => {}
                }
            }
            wages += emp.max(pay).max(tax.1);
        }
        let counted = wages + other - wages * 10 / 100;
        (wages, counted, money)
    }

    #[test]
    fn truth_agrees_with_the_facts_the_sources_report() {
        let pop = pop(600);
        let policy = TruthPolicy::dachuan_2018();
        for t in pop.truth(&policy) {
            let (wages, counted, money) = from_facts(&pop, &t);
            assert_eq!(t.wages_fen, wages, "{}", t.household_number);
            assert_eq!(t.counted_income_fen, counted, "{}", t.household_number);
            assert_eq!(t.money_assets_fen, money, "{}", t.household_number);
            let n = t.member_ids.len() as i64;
            assert_eq!(t.per_capita_income_fen, counted / n);
        }
    }

    #[test]
    fn a_hand_built_household_gives_the_expected_figures() {
        // Find a rural household and recompute its figures by hand from its
        // records, item by item.
        let pop = pop(400);
        let policy = TruthPolicy::dachuan_2018();
        let t = pop
            .find(&policy, |h, t| {
                h.hukou_type() == HukouType::Rural
                    && t.income_by_kind.contains_key("agricultural_subsidy")
                    && t.income_by_kind.contains_key("wages")
            })
            .expect("a rural household with wages and subsidies");
        let by = |k: &str| t.income_by_kind.get(k).copied().unwrap_or(0);
        let counted_kinds: i64 = [
            "wages",
            "business",
            "rent",
            "interest",
            "employee_pension",
            "unemployment_benefit",
            "agricultural_subsidy",
            "forestry_grant",
        ]
        .iter()
        .map(|k| by(k))
        .sum();
        assert_eq!(t.employment_cost_deduction_fen, by("wages") / 10);
        assert_eq!(
            t.counted_income_fen,
            counted_kinds - t.employment_cost_deduction_fen
        );
        assert_eq!(t.standard_fen, 33_000);
        let n = t.member_ids.len() as i64;
        assert_eq!(
            t.indicator("R1"),
            Some(if t.counted_income_fen / n < 33_000 {
                Outcome::Pass
            } else {
                Outcome::Fail
            })
        );
    }

    #[test]
    fn purposes_have_names() {
        assert_eq!(
            purpose_from_name("dibao-application"),
            Some(Purpose::DibaoApplication)
        );
        assert_eq!(
            purpose_from_name("education-assistance"),
            Some(Purpose::EducationAssistance)
        );
        assert_eq!(purpose_from_name("unspecified"), None);
        assert_eq!(purpose_from_name("free-money"), None);
    }

    #[test]
    fn purposes_change_thresholds() {
        let p = TruthPolicy::for_purpose(Purpose::LowIncome);
        assert_eq!((p.income_multiple_pct, p.asset_months), (150, 36));
        let p = TruthPolicy::for_purpose(Purpose::MedicalAssistance);
        assert_eq!((p.income_multiple_pct, p.asset_months), (150, 24));
        let pop = pop(800);
        let strict = pop.truth(&TruthPolicy::dachuan_2018());
        let loose = pop.truth(&TruthPolicy::for_purpose(Purpose::LowIncome));
        let fails = |v: &[GroundTruth]| {
            v.iter()
                .filter(|t| t.indicators[0] == Outcome::Fail)
                .count()
        };
        assert!(fails(&loose) < fails(&strict));
    }

    #[test]
    fn the_mix_of_verdicts_is_useful() {
        let pop = pop(3_000);
        let truth = pop.truth(&TruthPolicy::dachuan_2018());
        let share = |o: Outcome| {
            truth.iter().filter(|t| t.verdict == o).count() as f64 / truth.len() as f64
        };
        let (pass, fail, review) = (
            share(Outcome::Pass),
            share(Outcome::Fail),
            share(Outcome::Review),
        );
        assert!((0.28..=0.42).contains(&pass), "pass {pass}");
        assert!((0.28..=0.42).contains(&fail), "fail {fail}");
        assert!((0.15..=0.27).contains(&review), "review {review}");
        assert_eq!(share(Outcome::Inconclusive), 0.0);
        // Every indicator fails or needs review somewhere.
        for (i, id) in INDICATOR_IDS.iter().enumerate() {
            let hits = truth
                .iter()
                .filter(|t| t.indicators[i] != Outcome::Pass)
                .count();
            assert!(hits >= 20, "{id} only {hits}");
        }
        for (i, id) in INDICATOR_IDS.iter().enumerate().take(5) {
            let fails = truth
                .iter()
                .filter(|t| t.indicators[i] == Outcome::Fail)
                .count();
            assert!(fails >= 20, "{id} fails only {fails}");
        }
    }

    #[test]
    fn demo_picks_exist_and_are_what_they_say() {
        let pop = pop(3_000);
        let policy = TruthPolicy::dachuan_2018();
        let picks = pop.demo_picks(&policy).expect("picks");
        assert_eq!(picks.pass.verdict, Outcome::Pass);
        assert_eq!(picks.income_fail.with_outcome(Outcome::Fail), vec!["R1"]);
        assert_eq!(picks.income_fail.with_outcome(Outcome::Pass).len(), 8);
        assert_eq!(picks.car_fail.with_outcome(Outcome::Fail), vec!["R3"]);
        assert!(picks.car_fail.fail_class_vehicles >= 1);
        assert_eq!(picks.bank_outage.verdict, Outcome::Pass);
        assert!(picks.bank_outage.rural_bank_accounts >= 1);
        assert_ne!(
            picks.pass.household_number,
            picks.bank_outage.household_number
        );
        let again = pop.demo_picks(&policy).unwrap();
        assert_eq!(again.pass, picks.pass);
    }

    #[test]
    fn json_lines_name_outcomes() {
        let pop = pop(20);
        let t = pop.household_at(0).unwrap().truth(&TruthPolicy::default());
        let line = t.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(matches!(
            v["verdict"].as_str(),
            Some("PASS" | "FAIL" | "REVIEW")
        ));
        assert!(v["indicators"]["R9"].is_string());
        assert!(matches!(v["hukou_type"].as_str(), Some("URBAN" | "RURAL")));
        assert_eq!(v["household_number"], t.household_number);
    }
}
