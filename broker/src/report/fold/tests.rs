//! Tests of the fold: every indicator's branches, rounding, the wage rule,
//! de-duplication, exclusions, the verdict and unresolved households.

use hedui_proto::v1::{
    AccountOutflow, AccountType, AssetCategory, AssistanceReceived, AssistanceType, CivilDate,
    Disability, Dwelling, DwellingUse, Employment, EmploymentStatus, EntityKind, FactKind,
    FinancialAccount, HukouType, IncomeCategory, IncomeTax, Indicator, IndividualBusiness,
    LandContract, LicenceType, MarketEntity, OperatingLicence, Outcome, PensionKind, ProvidentFund,
    PublicPayroll, Purpose, RegistrationStatus, RelatedParty, Report, SocialAssistance,
    SocialInsurance, SourceStatus, Vehicle, VehicleClass, VehicleStatus, fact::Value,
};

use crate::report::policy::IncomeKind;
use crate::report::testkit::*;

// === helpers ===

fn indicator<'r>(report: &'r Report, id: &str) -> &'r Indicator {
    report
        .indicators
        .iter()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("no indicator {id}"))
}

fn outcome(report: &Report, id: &str) -> Outcome {
    indicator(report, id).outcome()
}

fn outcomes(report: &Report) -> Vec<(String, Outcome)> {
    report
        .indicators
        .iter()
        .map(|i| (i.id.clone(), i.outcome()))
        .collect()
}

fn total(report: &Report, category: IncomeCategory) -> i64 {
    let income = report.income.as_ref().unwrap();
    income
        .totals
        .iter()
        .find(|t| t.category() == category)
        .map(|t| t.monthly_fen)
        .unwrap()
}

fn employed(wage_fen: i64) -> Value {
    Value::Employment(Employment {
        status: EmploymentStatus::Employed as i32,
        employer: "Dachuan Steel Works".to_owned(),
        monthly_wage_fen: wage_fen,
        unemployment_benefit_fen: 0,
    })
}

fn payroll(salary_fen: i64) -> Value {
    Value::PublicPayroll(PublicPayroll {
        employer: "District Education Bureau".to_owned(),
        monthly_salary_fen: salary_fen,
    })
}

fn income_tax(year: i32, wages_fen: i64, labour_fen: i64) -> Value {
    Value::IncomeTax(IncomeTax {
        year,
        annual_wages_fen: wages_fen,
        annual_labour_fen: labour_fen,
        tax_withheld_fen: 0,
    })
}

fn account(
    institution: &str,
    account_ref: &str,
    t: AccountType,
    balance: i64,
    income_12m: i64,
) -> Value {
    Value::FinancialAccount(FinancialAccount {
        institution: institution.to_owned(),
        account_ref: account_ref.to_owned(),
        account_type: t as i32,
        balance_fen: balance,
        income_12m_fen: income_12m,
    })
}

fn dwelling(
    certificate: &str,
    use_: DwellingUse,
    area: i64,
    acquired: CivilDate,
    rent: i64,
) -> Value {
    Value::Dwelling(Dwelling {
        certificate_number: certificate.to_owned(),
        r#use: use_ as i32,
        area_centi_m2: area,
        acquired_date: Some(acquired),
        share_bp: 10000,
        monthly_rent_fen: rent,
    })
}

fn vehicle(plate: &str, class: VehicleClass, status: VehicleStatus) -> Value {
    Value::Vehicle(Vehicle {
        plate: plate.to_owned(),
        vehicle_class: class as i32,
        registration_date: Some(CivilDate::ymd(2015, 6, 1)),
        purchase_price_fen: 8_000_000,
        status: status as i32,
    })
}

fn licence(number: &str, valid_to: Option<CivilDate>) -> Value {
    Value::OperatingLicence(OperatingLicence {
        licence_number: number.to_owned(),
        licence_type: LicenceType::Taxi as i32,
        vehicle_plate: "川S12345".to_owned(),
        valid_to,
    })
}

fn entity(code: &str, capital: i64, active: bool) -> Value {
    Value::MarketEntity(MarketEntity {
        credit_code: code.to_owned(),
        name: format!("company {code}"),
        kind: EntityKind::Enterprise as i32,
        role: 2,
        subscribed_capital_fen: capital,
        active,
    })
}

fn outflow(institution: &str, total_fen: i64) -> Value {
    Value::AccountOutflow(AccountOutflow {
        institution: institution.to_owned(),
        months: 6,
        total_fen,
    })
}

const OLD: CivilDate = CivilDate {
    year: 2005,
    month: 3,
    day: 1,
};

// === the report as a whole ===

#[test]
fn a_household_without_records_passes_and_every_field_is_filled() {
    let s = Scenario::couple();
    let r = s.fold();
    assert_eq!(r.report_id, "report-1");
    assert_eq!(r.request.as_ref(), Some(&s.request));
    assert!(r.requested_at.is_some() && r.completed_at.is_some());
    assert!(r.completed_at.unwrap().seconds >= r.requested_at.unwrap().seconds);
    assert_eq!(r.policy_id, "511703@2018-01-01");
    assert_eq!(r.household_number, "H0001");
    assert_eq!(r.hukou_type(), HukouType::Urban);
    assert_eq!(r.members.len(), 2);
    assert_eq!(r.active_member_count, 2);
    assert_eq!(r.standard_monthly_fen, 52000);
    assert_eq!(r.sources.len(), 28);
    assert_eq!(r.sources[0].source_id, "public-security");
    let ids: Vec<&str> = r.indicators.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"]);
    for i in &r.indicators {
        assert_eq!(i.outcome(), Outcome::Pass, "{i:?}");
        assert!(!i.value.is_empty() && !i.threshold.is_empty() && !i.reason.is_empty());
        assert!(i.missing_sources.is_empty());
    }
    assert_eq!(r.verdict(), Outcome::Pass);
    assert_eq!(
        r.verdict_reason,
        "passes all 9 indicators under policy 511703@2018-01-01"
    );
    let income = r.income.as_ref().unwrap();
    assert!(income.items.is_empty() && income.complete);
    let categories: Vec<_> = income.totals.iter().map(|t| t.category()).collect();
    assert_eq!(
        categories,
        [
            IncomeCategory::Wages,
            IncomeCategory::Business,
            IncomeCategory::Property,
            IncomeCategory::Transfers,
            IncomeCategory::Excluded
        ]
    );
    let assets = r.assets.as_ref().unwrap();
    assert!(assets.items.is_empty() && assets.totals.is_empty() && assets.complete);
    assert_eq!(
        indicator(&r, "R1").threshold,
        "< 520.00 yuan/month (100% of the urban standard 520.00 yuan)"
    );
    assert_eq!(
        indicator(&r, "R2").threshold,
        "<= 12480.00 yuan (24 months of the urban standard 520.00 yuan)"
    );
}

#[test]
fn input_sources_follow_fact_kinds() {
    let r = Scenario::couple().fold();
    let inputs = |id: &str| indicator(&r, id).input_sources.clone();
    assert_eq!(
        inputs("R1"),
        [
            "public-security",
            "finance-office",
            "housing-management",
            "employment",
            "social-insurance",
            "commerce",
            "financial-bureau",
            "forestry",
            "agriculture",
            "state-tax",
            "rural-commercial-bank"
        ]
    );
    assert_eq!(
        inputs("R2"),
        ["public-security", "finance-office", "rural-commercial-bank"]
    );
    // The household source is an input of every rule: it says whose facts
    // were asked for.
    assert_eq!(
        inputs("R3"),
        ["public-security", "traffic-police", "transport"]
    );
    assert_eq!(inputs("R4"), ["public-security", "housing-management"]);
    assert_eq!(
        inputs("R5"),
        ["public-security", "commerce", "market-supervision"]
    );
    assert_eq!(inputs("R6"), ["public-security", "financial-bureau"]);
    assert_eq!(inputs("R7"), ["public-security", "civil-affairs"]);
    assert_eq!(inputs("R8"), ["public-security"]);
    assert_eq!(
        inputs("R9"),
        ["public-security", "finance-office", "rural-commercial-bank"]
    );
}

// === R1 income ===

#[test]
fn r1_rounds_down_the_deduction_and_the_per_capita_figure() {
    // Wages 1155.56 yuan: deduction 115.556 → 115.55, counted 1040.01,
    // per capita 520.005 → 520.00, which is not below 520.00: FAIL.
    let mut s = Scenario::couple();
    s.add("employment", APPLICANT, employed(115_556));
    let r = s.fold();
    let income = r.income.as_ref().unwrap();
    assert_eq!(income.employment_cost_deduction_fen, 11_555);
    assert_eq!(income.counted_monthly_fen, 104_001);
    assert_eq!(income.per_capita_monthly_fen, 52_000);
    assert_eq!(outcome(&r, "R1"), Outcome::Fail);
    assert_eq!(
        indicator(&r, "R1").reason,
        "per-capita income 520.00 yuan/month is not below 520.00 yuan/month"
    );

    // Two fen less: deduction 115.55, counted 1039.99, per capita 519.99.
    let mut s = Scenario::couple();
    s.add("employment", APPLICANT, employed(115_554));
    let r = s.fold();
    assert_eq!(r.income.as_ref().unwrap().per_capita_monthly_fen, 51_999);
    assert_eq!(outcome(&r, "R1"), Outcome::Pass);
    assert_eq!(
        indicator(&r, "R1").value,
        "per capita 519.99 yuan/month (counted 1039.99 yuan/month, 2 active members)"
    );
}

#[test]
fn r1_annual_figures_become_monthly_each_on_its_own() {
    let mut s = Scenario::couple();
    // 11.99 yuan a year of interest on each of two accounts: 0.99 a month
    // each, not 23.98 / 12 = 1.99.
    s.add(
        "finance-office",
        APPLICANT,
        account("Bank A", "6222**01", AccountType::Deposit, 0, 1199),
    );
    s.add(
        "finance-office",
        SPOUSE,
        account("Bank A", "6222**02", AccountType::Deposit, 0, 1199),
    );
    s.add(
        "agriculture",
        APPLICANT,
        Value::LandContract(LandContract {
            contract_number: "L-1".into(),
            area_centi_m2: 66_700,
            subsidies_12m_fen: 120_011,
            large_machinery: false,
        }),
    );
    let r = s.fold();
    assert_eq!(total(&r, IncomeCategory::Property), 99 + 99);
    assert_eq!(total(&r, IncomeCategory::Transfers), 10_000);
    assert_eq!(r.income.as_ref().unwrap().counted_monthly_fen, 10_198);
}

#[test]
fn r1_purpose_multiple_changes_the_threshold() {
    let mut s = Scenario::registered(HukouType::Rural, &[(APPLICANT, RegistrationStatus::Active)]);
    s.add("employment", APPLICANT, employed(50_000)); // counted 450.00
    assert_eq!(outcome(&s.fold(), "R1"), Outcome::Fail); // < 330.00
    s.purpose(Purpose::LowIncome);
    let r = s.fold();
    assert_eq!(outcome(&r, "R1"), Outcome::Pass); // < 495.00
    assert_eq!(
        indicator(&r, "R1").threshold,
        "< 495.00 yuan/month (150% of the rural standard 330.00 yuan)"
    );
}

#[test]
fn wages_take_the_largest_evidence_with_ties_to_employment_then_payroll() {
    // Employment and public payroll tie: employment is named.
    let mut s = Scenario::couple();
    let rec = s.add("employment", APPLICANT, employed(300_000));
    s.add("financial-bureau", APPLICANT, payroll(300_000));
    // 36,000.11 yuan a year: 3,000.00 a month (rounded down), a tie too.
    s.add("state-tax", APPLICANT, income_tax(2023, 3_500_011, 100_000));
    // An older year is not evidence even when larger.
    s.add("state-tax", APPLICANT, income_tax(2022, 9_000_000, 0));
    let r = s.fold();
    let items = &r.income.as_ref().unwrap().items;
    assert_eq!(items.len(), 1);
    let wages = &items[0];
    assert_eq!(wages.category(), IncomeCategory::Wages);
    assert_eq!(wages.monthly_fen, 300_000);
    assert_eq!(
        wages.description,
        "wages from employment (Dachuan Steel Works); corroborating: public payroll 3000.00 \
         yuan/month, income tax 2023 3000.00 yuan/month"
    );
    let p = wages.provenance.as_ref().unwrap();
    assert_eq!(p.source_id, "employment");
    assert_eq!(p.person_id, APPLICANT);
    assert_eq!(p.record_id, rec);
    assert_eq!(p.as_of, Some(as_of()));

    // Payroll and income tax tie above employment: payroll is named.
    let mut s = Scenario::couple();
    s.add("employment", APPLICANT, employed(100_000));
    s.add("financial-bureau", APPLICANT, payroll(300_000));
    s.add("state-tax", APPLICANT, income_tax(2023, 3_600_000, 0));
    let r = s.fold();
    let wages = &r.income.as_ref().unwrap().items[0];
    assert_eq!(
        wages.provenance.as_ref().unwrap().source_id,
        "financial-bureau"
    );
    assert_eq!(wages.monthly_fen, 300_000);

    // One fen more from the income tax: it wins.
    let mut s = Scenario::couple();
    s.add("employment", APPLICANT, employed(300_000));
    s.add("state-tax", APPLICANT, income_tax(2023, 3_600_012, 0));
    let r = s.fold();
    let wages = &r.income.as_ref().unwrap().items[0];
    assert_eq!(wages.monthly_fen, 300_001);
    assert!(
        wages
            .description
            .starts_with("wages from income tax 2023; corroborating: employment 3000.00")
    );
    assert_eq!(
        r.income.as_ref().unwrap().employment_cost_deduction_fen,
        30_000
    );
}

#[test]
fn wages_sum_working_employment_and_ignore_other_statuses() {
    let mut s = Scenario::couple();
    let a = s.add("employment", APPLICANT, employed(100_000));
    let b = s.add(
        "employment",
        APPLICANT,
        Value::Employment(Employment {
            status: EmploymentStatus::Flexible as i32,
            employer: String::new(),
            monthly_wage_fen: 50_000,
            unemployment_benefit_fen: 0,
        }),
    );
    s.add(
        "employment",
        SPOUSE,
        Value::Employment(Employment {
            status: EmploymentStatus::Unemployed as i32,
            employer: String::new(),
            monthly_wage_fen: 80_000,
            unemployment_benefit_fen: 120_000,
        }),
    );
    let r = s.fold();
    let items = &r.income.as_ref().unwrap().items;
    let wages: Vec<_> = items
        .iter()
        .filter(|i| i.category() == IncomeCategory::Wages)
        .collect();
    assert_eq!(wages.len(), 1, "no wage item for the unemployed spouse");
    assert_eq!(wages[0].monthly_fen, 150_000);
    assert_eq!(
        wages[0].provenance.as_ref().unwrap().record_id,
        format!("{a}, {b}")
    );
    assert_eq!(total(&r, IncomeCategory::Transfers), 120_000);
    // 1500 + 1200 - 150 = 2550.00; per capita 1275.00.
    assert_eq!(r.income.as_ref().unwrap().counted_monthly_fen, 255_000);
    assert_eq!(r.income.as_ref().unwrap().per_capita_monthly_fen, 127_500);
}

#[test]
fn excluded_income_is_listed_but_not_counted() {
    let mut s = Scenario::couple();
    s.add(
        "social-insurance",
        APPLICANT,
        Value::SocialInsurance(SocialInsurance {
            contribution_base_fen: 0,
            employer: String::new(),
            pension_kind: PensionKind::Resident as i32,
            monthly_pension_fen: 15_000,
        }),
    );
    s.add(
        "social-insurance",
        SPOUSE,
        Value::SocialInsurance(SocialInsurance {
            contribution_base_fen: 0,
            employer: String::new(),
            pension_kind: PensionKind::Employee as i32,
            monthly_pension_fen: 200_000,
        }),
    );
    s.add(
        "civil-affairs",
        APPLICANT,
        Value::SocialAssistance(SocialAssistance {
            assistance_type: AssistanceType::Dibao as i32,
            monthly_fen: 30_000,
            since: Some(CivilDate::ymd(2020, 1, 1)),
        }),
    );
    s.add(
        "disabled-federation",
        SPOUSE,
        Value::Disability(Disability {
            category: "physical".into(),
            grade: 2,
            monthly_allowance_fen: 8_000,
        }),
    );
    s.add(
        "red-cross",
        SPOUSE,
        Value::AssistanceReceived(AssistanceReceived {
            programme: "winter relief".into(),
            amount_12m_fen: 60_000,
            last_paid: None,
        }),
    );
    let r = s.fold();
    assert_eq!(
        total(&r, IncomeCategory::Excluded),
        15_000 + 30_000 + 8_000 + 5_000
    );
    assert_eq!(total(&r, IncomeCategory::Transfers), 200_000);
    assert_eq!(r.income.as_ref().unwrap().counted_monthly_fen, 200_000);
    let items = &r.income.as_ref().unwrap().items;
    let resident = items
        .iter()
        .find(|i| i.description == "resident basic pension")
        .unwrap();
    assert_eq!(resident.category(), IncomeCategory::Excluded);
    assert_eq!(
        resident.excluded_reason,
        "resident basic pension is not counted as income under policy 511703@2018-01-01 \
         (income.excluded)"
    );
    let employee = items
        .iter()
        .find(|i| i.description == "employee basic pension")
        .unwrap();
    assert_eq!(employee.category(), IncomeCategory::Transfers);
    assert!(employee.excluded_reason.is_empty());
    // Civil affairs reports only excluded income: not an input of R1.
    assert!(
        !indicator(&r, "R1")
            .input_sources
            .contains(&"civil-affairs".to_owned())
    );

    // A policy that counts social assistance: counted as a transfer, and
    // civil affairs becomes an input of R1.
    s.policy
        .income
        .excluded
        .remove(&IncomeKind::SocialAssistance);
    let r = s.fold();
    assert_eq!(total(&r, IncomeCategory::Transfers), 230_000);
    assert_eq!(total(&r, IncomeCategory::Excluded), 28_000);
    assert!(
        indicator(&r, "R1")
            .input_sources
            .contains(&"civil-affairs".to_owned())
    );
}

// === de-duplication ===

#[test]
fn accounts_at_two_sources_are_taken_once() {
    let mut s = Scenario::couple();
    let first = s.add(
        "finance-office",
        APPLICANT,
        account(
            "Dachuan RCB",
            "6228**11",
            AccountType::Deposit,
            1_000_000,
            12_000,
        ),
    );
    s.add(
        "rural-commercial-bank",
        APPLICANT,
        account(
            "Dachuan RCB",
            "6228**11",
            AccountType::Deposit,
            1_000_000,
            12_000,
        ),
    );
    // A joint account reported for the spouse too.
    s.add(
        "rural-commercial-bank",
        SPOUSE,
        account(
            "Dachuan RCB",
            "6228**11",
            AccountType::Deposit,
            1_000_000,
            12_000,
        ),
    );
    s.add(
        "rural-commercial-bank",
        SPOUSE,
        account("Dachuan RCB", "6228**22", AccountType::Fund, 500_000, 0),
    );
    let r = s.fold();
    let assets = r.assets.as_ref().unwrap();
    assert_eq!(assets.items.len(), 2);
    assert_eq!(
        assets.items[0].provenance.as_ref().unwrap().record_id,
        first
    );
    assert_eq!(assets.money_assets_fen, 1_500_000);
    assert_eq!(assets.money_assets_per_capita_fen, 750_000);
    assert_eq!(total(&r, IncomeCategory::Property), 1_000);
    let deposits = assets
        .totals
        .iter()
        .find(|t| t.category() == AssetCategory::Deposits)
        .unwrap();
    assert_eq!((deposits.count, deposits.value_fen), (1, 1_000_000));
}

#[test]
fn dwellings_owned_in_shares_are_taken_once_with_their_full_area() {
    let mut s = Scenario::couple();
    s.add(
        "housing-management",
        APPLICANT,
        dwelling("CERT-1", DwellingUse::Residential, 9_000, OLD, 50_000),
    );
    s.add(
        "housing-management",
        SPOUSE,
        dwelling("CERT-1", DwellingUse::Residential, 9_000, OLD, 50_000),
    );
    let r = s.fold();
    let assets = r.assets.as_ref().unwrap();
    assert_eq!(assets.items.len(), 1);
    assert_eq!(assets.items[0].area_centi_m2, 9_000);
    assert_eq!(total(&r, IncomeCategory::Property), 50_000);
    assert_eq!(
        indicator(&r, "R4").value,
        "1 residential (90.00 m², 45.00 m² per capita), 0 non-residential"
    );
    assert_eq!(outcome(&r, "R4"), Outcome::Pass);
}

// === R2 money assets ===

#[test]
fn r2_passes_up_to_the_limit_and_counts_only_money_account_types() {
    // Urban couple, 24 months: 12,480.00 yuan per capita, 24,960.00 in all.
    let mut s = Scenario::couple();
    s.add(
        "finance-office",
        APPLICANT,
        account("Bank A", "1", AccountType::Deposit, 2_000_000, 0),
    );
    s.add(
        "finance-office",
        SPOUSE,
        account("Bank B", "2", AccountType::Insurance, 496_000, 0),
    );
    s.add(
        "provident-fund",
        APPLICANT,
        Value::ProvidentFund(ProvidentFund {
            monthly_contribution_fen: 0,
            contribution_base_fen: 0,
            balance_fen: 9_000_000,
            loan_balance_fen: 0,
        }),
    );
    let r = s.fold();
    assert_eq!(
        r.assets.as_ref().unwrap().money_assets_per_capita_fen,
        1_248_000
    );
    assert_eq!(outcome(&r, "R2"), Outcome::Pass);

    s.add(
        "finance-office",
        SPOUSE,
        account("Bank B", "3", AccountType::WealthManagement, 2, 0),
    );
    let r = s.fold();
    assert_eq!(
        r.assets.as_ref().unwrap().money_assets_per_capita_fen,
        1_248_001
    );
    assert_eq!(outcome(&r, "R2"), Outcome::Fail);
    assert_eq!(
        indicator(&r, "R2").reason,
        "per-capita money assets 12480.01 yuan exceed 12480.00 yuan"
    );

    // Insurance not a money asset by policy: listed, not counted.
    s.policy
        .assets
        .money_account_types
        .remove(&AccountType::Insurance);
    let r = s.fold();
    let assets = r.assets.as_ref().unwrap();
    assert_eq!(assets.money_assets_fen, 2_000_002);
    assert!(
        assets
            .items
            .iter()
            .any(|i| i.category() == AssetCategory::Insurance)
    );
    assert!(
        assets
            .items
            .iter()
            .any(|i| i.category() == AssetCategory::ProvidentFund)
    );
    assert_eq!(outcome(&r, "R2"), Outcome::Pass);

    // Extreme poverty: 36 months.
    s.purpose(Purpose::ExtremePoverty);
    assert_eq!(
        indicator(&s.fold(), "R2").threshold,
        "<= 18720.00 yuan (36 months of the urban standard 520.00 yuan)"
    );
}

// === R3 vehicles ===

#[test]
fn r3_fails_reviews_and_exempts_by_class_and_licence() {
    let check = |values: Vec<Value>, expected: Outcome| {
        let mut s = Scenario::couple();
        for v in values {
            let source = match v.kind() {
                FactKind::Vehicle => "traffic-police",
                _ => "transport",
            };
            s.add(source, APPLICANT, v);
        }
        let r = s.fold();
        assert_eq!(outcome(&r, "R3"), expected, "{:?}", indicator(&r, "R3"));
        r
    };
    let today = CivilDate::ymd(2024, 5, 10);
    let r = check(
        vec![vehicle(
            "川S1",
            VehicleClass::Car,
            VehicleStatus::Registered,
        )],
        Outcome::Fail,
    );
    assert_eq!(indicator(&r, "R3").reason, "registered car 川S1");
    check(
        vec![vehicle(
            "川S1",
            VehicleClass::Car,
            VehicleStatus::Deregistered,
        )],
        Outcome::Pass,
    );
    check(
        vec![vehicle(
            "川S2",
            VehicleClass::Motorcycle,
            VehicleStatus::Registered,
        )],
        Outcome::Pass,
    );
    check(
        vec![vehicle(
            "川S3",
            VehicleClass::Disability,
            VehicleStatus::Registered,
        )],
        Outcome::Pass,
    );
    check(
        vec![vehicle(
            "川S4",
            VehicleClass::Tricycle,
            VehicleStatus::Registered,
        )],
        Outcome::Review,
    );
    check(
        vec![vehicle(
            "川S5",
            VehicleClass::FarmMachinery,
            VehicleStatus::Registered,
        )],
        Outcome::Review,
    );
    check(
        vec![vehicle(
            "川S6",
            VehicleClass::Unspecified,
            VehicleStatus::Registered,
        )],
        Outcome::Review,
    );
    check(
        vec![
            vehicle("川S4", VehicleClass::Tricycle, VehicleStatus::Registered),
            vehicle("川S7", VehicleClass::Ship, VehicleStatus::Registered),
        ],
        Outcome::Fail,
    );
    let r = check(vec![licence("T-1", Some(today))], Outcome::Fail);
    assert_eq!(
        indicator(&r, "R3").reason,
        "operating taxi licence T-1 valid to 2024-05-10"
    );
    check(
        vec![licence("T-1", Some(CivilDate::ymd(2024, 5, 9)))],
        Outcome::Pass,
    );
    check(vec![licence("T-1", None)], Outcome::Review);
    let r = check(vec![], Outcome::Pass);
    assert_eq!(
        indicator(&r, "R3").threshold,
        "no registered vehicle of class car, truck, ship and no valid operating licence; \
         class tricycle, farm machinery needs review"
    );
    let assets = r.assets.as_ref().unwrap();
    assert!(assets.items.is_empty());
}

// === R4 housing ===

#[test]
fn r4_counts_dwellings_area_and_recent_acquisitions() {
    let check = |dwellings: Vec<Value>, expected: Outcome| {
        let mut s = Scenario::couple();
        for d in dwellings {
            s.add("housing-management", APPLICANT, d);
        }
        let r = s.fold();
        assert_eq!(outcome(&r, "R4"), expected, "{:?}", indicator(&r, "R4"));
        r
    };
    let home = |c: &str, area: i64| dwelling(c, DwellingUse::Residential, area, OLD, 0);
    let shop = |c: &str| dwelling(c, DwellingUse::NonResidential, 3_000, OLD, 0);
    check(vec![home("A", 6_000)], Outcome::Pass);
    check(
        vec![home("A", 6_000), home("B", 2_000), home("C", 1_000)],
        Outcome::Fail,
    );
    // Two homes, 80.00 m² for 2 persons: exactly 40.00 m² each, not above.
    check(vec![home("A", 6_000), home("B", 2_000)], Outcome::Pass);
    // 80.01 m² / 2 = 40.005 m², rounded down to 40.00 m²: not above.
    check(vec![home("A", 6_000), home("B", 2_001)], Outcome::Pass);
    // 80.02 m² / 2 = 40.01 m².
    let r = check(vec![home("A", 6_000), home("B", 2_002)], Outcome::Fail);
    assert_eq!(
        indicator(&r, "R4").reason,
        "2 residential dwellings with 40.01 m² per capita, more than 40.00 m²"
    );
    // One home may be large.
    check(vec![home("A", 20_000)], Outcome::Pass);
    check(vec![home("A", 6_000), shop("S")], Outcome::Fail);
    let r = check(vec![shop("S")], Outcome::Review);
    assert_eq!(
        indicator(&r, "R4").reason,
        "a non-residential building is the only building"
    );
    // Acquired on 2021-05-10, three years before 2024-05-10: within.
    let recent = dwelling(
        "N",
        DwellingUse::Residential,
        6_000,
        CivilDate::ymd(2021, 5, 10),
        0,
    );
    let r = check(vec![recent], Outcome::Review);
    assert_eq!(
        indicator(&r, "R4").reason,
        "building N acquired 2021-05-10, within 3 years"
    );
    let older = dwelling(
        "N",
        DwellingUse::Residential,
        6_000,
        CivilDate::ymd(2021, 5, 9),
        0,
    );
    check(vec![older], Outcome::Pass);
    let r = check(vec![shop("S"), home("A", 1_000)], Outcome::Fail);
    let cats: Vec<_> = r
        .assets
        .unwrap()
        .totals
        .iter()
        .map(|t| t.category())
        .collect();
    assert_eq!(
        cats,
        [
            AssetCategory::Dwelling,
            AssetCategory::NonResidentialBuilding
        ]
    );
}

// === R5 business, R6 payroll, R7 related party ===

#[test]
fn r5_fails_above_the_capital_limit_and_reviews_any_active_business() {
    let mut s = Scenario::couple();
    s.add(
        "market-supervision",
        APPLICANT,
        entity("91511703A", 6_000_000, true),
    );
    s.add(
        "market-supervision",
        SPOUSE,
        entity("91511703B", 4_000_000, true),
    );
    s.add(
        "market-supervision",
        SPOUSE,
        entity("91511703C", 9_000_000, false),
    );
    let r = s.fold();
    assert_eq!(
        outcome(&r, "R5"),
        Outcome::Review,
        "exactly 100,000.00 yuan"
    );
    let assets = r.assets.as_ref().unwrap();
    assert_eq!(
        assets
            .items
            .iter()
            .filter(|i| i.category() == AssetCategory::Business)
            .count(),
        2
    );

    s.add("market-supervision", SPOUSE, entity("91511703D", 1, true));
    let r = s.fold();
    assert_eq!(outcome(&r, "R5"), Outcome::Fail);
    assert_eq!(
        indicator(&r, "R5").reason,
        "subscribed capital 100000.01 yuan exceeds 100000.00 yuan"
    );

    let mut s = Scenario::couple();
    s.add(
        "market-supervision",
        APPLICANT,
        entity("91511703C", 9_000_000, false),
    );
    assert_eq!(outcome(&s.fold(), "R5"), Outcome::Pass);
    s.add(
        "commerce",
        SPOUSE,
        Value::IndividualBusiness(IndividualBusiness {
            registration_number: "GT-1".into(),
            name: "noodle stall".into(),
            annual_turnover_fen: 0,
            monthly_net_income_fen: 80_000,
            active: true,
        }),
    );
    let r = s.fold();
    assert_eq!(outcome(&r, "R5"), Outcome::Review);
    assert_eq!(total(&r, IncomeCategory::Business), 80_000);
}

#[test]
fn r6_and_r7_review_payroll_and_related_parties() {
    let mut s = Scenario::couple();
    let r = s.fold();
    assert_eq!(
        (outcome(&r, "R6"), outcome(&r, "R7")),
        (Outcome::Pass, Outcome::Pass)
    );
    s.add("financial-bureau", SPOUSE, payroll(40_000));
    s.add(
        "civil-affairs",
        APPLICANT,
        Value::RelatedParty(RelatedParty {
            staff_role: "village committee member".into(),
            kinship: "brother".into(),
        }),
    );
    let r = s.fold();
    assert_eq!(
        (outcome(&r, "R6"), outcome(&r, "R7")),
        (Outcome::Review, Outcome::Review)
    );
    assert_eq!(
        indicator(&r, "R7").value,
        format!("kin of deciding staff: {APPLICANT} is brother of a village committee member")
    );
    assert_eq!(r.verdict(), Outcome::Review);
    assert_eq!(
        r.verdict_reason,
        "needs review of R6 (public payroll), R7 (related party)"
    );
}

// === R8 household registration ===

#[test]
fn r8_reviews_deceased_moved_and_undeclared_members() {
    let s = Scenario::registered(
        HukouType::Urban,
        &[
            (APPLICANT, RegistrationStatus::Active),
            (SPOUSE, RegistrationStatus::Active),
            (GRANDPA, RegistrationStatus::Deceased),
        ],
    );
    let r = s.fold();
    assert_eq!(outcome(&r, "R8"), Outcome::Review);
    assert_eq!(indicator(&r, "R8").reason, format!("deceased: {GRANDPA}"));
    assert_eq!(r.members.len(), 3);
    assert_eq!(r.active_member_count, 2);

    let mut s = Scenario::couple();
    s.request.declared_member_ids = vec![SPOUSE.to_owned(), APPLICANT.to_owned()];
    assert_eq!(outcome(&s.fold(), "R8"), Outcome::Pass);
    s.request.declared_member_ids = vec![APPLICANT.to_owned(), CHILD.to_owned()];
    let r = s.fold();
    assert_eq!(outcome(&r, "R8"), Outcome::Review);
    assert_eq!(
        indicator(&r, "R8").reason,
        format!(
            "declared but not active in the register: {CHILD}; active in the register but \
             not declared: {SPOUSE}"
        )
    );

    let s = Scenario::registered(
        HukouType::Urban,
        &[
            (APPLICANT, RegistrationStatus::Active),
            (CHILD, RegistrationStatus::MovedOut),
        ],
    );
    assert_eq!(outcome(&s.fold(), "R8"), Outcome::Review);
}

// === R9 bank outflows ===

#[test]
fn r9_reviews_outflows_above_months_of_the_standard() {
    // Urban couple: 12 × 520.00 = 6,240.00 yuan per capita.
    let mut s = Scenario::couple();
    s.add("finance-office", APPLICANT, outflow("Bank A", 1_000_000));
    s.add(
        "rural-commercial-bank",
        SPOUSE,
        outflow("Dachuan RCB", 248_000),
    );
    // The same institution reported twice for a person is taken once.
    s.add(
        "rural-commercial-bank",
        APPLICANT,
        outflow("Bank A", 1_000_000),
    );
    let r = s.fold();
    assert_eq!(outcome(&r, "R9"), Outcome::Pass);
    assert_eq!(
        indicator(&r, "R9").value,
        "per capita 6240.00 yuan (household total 12480.00 yuan, 2 active members)"
    );
    s.add(
        "rural-commercial-bank",
        SPOUSE,
        outflow("Dachuan RCB Branch", 2),
    );
    let r = s.fold();
    assert_eq!(outcome(&r, "R9"), Outcome::Review);
    assert_eq!(r.verdict(), Outcome::Review);
}

// === the verdict ===

#[test]
fn verdict_fail_wins_over_inconclusive_which_wins_over_review() {
    let mut s = Scenario::couple();
    s.add("financial-bureau", APPLICANT, payroll(10_000)); // R6 REVIEW
    assert_eq!(s.fold().verdict(), Outcome::Review);

    s.set_status("market-supervision", SourceStatus::Timeout); // R5 INCONCLUSIVE
    let r = s.fold();
    assert_eq!(r.verdict(), Outcome::Inconclusive);
    assert_eq!(
        r.verdict_reason,
        "cannot conclude R5 (business): no usable answer from market-supervision"
    );

    s.add(
        "traffic-police",
        SPOUSE,
        vehicle("川S9", VehicleClass::Car, VehicleStatus::Registered),
    );
    let r = s.fold();
    assert_eq!(r.verdict(), Outcome::Fail);
    assert_eq!(
        r.verdict_reason,
        "fails R3 (vehicles) under policy 511703@2018-01-01"
    );
    assert_eq!(outcome(&r, "R5"), Outcome::Inconclusive);
    assert_eq!(outcome(&r, "R6"), Outcome::Review);
}

// === sources that did not answer ===

#[test]
fn a_hung_source_makes_its_indicators_inconclusive_and_leaves_the_others() {
    let mut s = Scenario::couple();
    s.set_status("traffic-police", SourceStatus::Timeout);
    // What did arrive says FAIL, but the indicator cannot be concluded.
    s.add(
        "transport",
        APPLICANT,
        licence("T-1", Some(CivilDate::ymd(2030, 1, 1))),
    );
    s.add("employment", APPLICANT, employed(60_000));
    let r = s.fold();
    let r3 = indicator(&r, "R3");
    assert_eq!(r3.outcome(), Outcome::Inconclusive);
    assert_eq!(r3.missing_sources, ["traffic-police"]);
    assert_eq!(
        r3.input_sources,
        ["public-security", "traffic-police", "transport"]
    );
    assert_eq!(
        r3.reason,
        "no usable answer from traffic-police (timeout); a missing answer is not read as zero \
         or no record"
    );
    assert!(r3.value.starts_with("so far: "));
    for id in ["R1", "R2", "R4", "R5", "R6", "R7", "R8", "R9"] {
        assert_eq!(outcome(&r, id), Outcome::Pass, "{id}");
        assert!(indicator(&r, id).missing_sources.is_empty());
    }
    assert_eq!(r.verdict(), Outcome::Inconclusive);
    let assets = r.assets.as_ref().unwrap();
    assert!(!assets.complete);
    assert_eq!(assets.missing_sources, ["traffic-police"]);
    assert!(r.income.as_ref().unwrap().complete);
    assert_eq!(
        r.sources
            .iter()
            .find(|x| x.source_id == "traffic-police")
            .unwrap()
            .status(),
        SourceStatus::Timeout
    );

    // An income source down: R1 inconclusive, income incomplete, never zero.
    let mut s = Scenario::couple();
    s.set_status("state-tax", SourceStatus::Unavailable);
    let r = s.fold();
    assert_eq!(outcome(&r, "R1"), Outcome::Inconclusive);
    assert_eq!(indicator(&r, "R1").missing_sources, ["state-tax"]);
    let income = r.income.as_ref().unwrap();
    assert!(!income.complete);
    assert_eq!(income.missing_sources, ["state-tax"]);
    assert_eq!(outcome(&r, "R2"), Outcome::Pass);
}

#[test]
fn a_second_bank_added_by_configuration_is_an_input_of_r1_r2_and_r9() {
    let mut s = Scenario::couple();
    s.add_source(spec(
        "second-bank",
        &[FactKind::FinancialAccount, FactKind::AccountOutflow],
    ));
    let r = s.fold();
    for id in ["R1", "R2", "R9"] {
        assert!(
            indicator(&r, id)
                .input_sources
                .contains(&"second-bank".to_owned()),
            "{id}"
        );
    }
    assert!(
        !indicator(&r, "R3")
            .input_sources
            .contains(&"second-bank".to_owned())
    );
    assert_eq!(r.sources.len(), 29);

    // Its facts count.
    s.add(
        "second-bank",
        SPOUSE,
        account("Second Bank", "9", AccountType::Deposit, 3_000_000, 0),
    );
    let r = s.fold();
    assert_eq!(r.assets.as_ref().unwrap().money_assets_fen, 3_000_000);
    assert_eq!(outcome(&r, "R2"), Outcome::Fail);

    // Its failure makes R2 inconclusive.
    s.set_status("second-bank", SourceStatus::Error);
    let r = s.fold();
    assert_eq!(outcome(&r, "R2"), Outcome::Inconclusive);
    assert_eq!(indicator(&r, "R2").missing_sources, ["second-bank"]);
    assert_eq!(r.assets.as_ref().unwrap().money_assets_fen, 0);
}

#[test]
fn a_household_not_registered_is_the_applicant_alone_without_a_standard() {
    let mut s = Scenario::with_household(household_status(SourceStatus::NoRecord));
    s.add("employment", APPLICANT, employed(10_000));
    s.add(
        "housing-management",
        APPLICANT,
        dwelling("A", DwellingUse::Residential, 5_000, OLD, 0),
    );
    let r = s.fold();
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].person_id, APPLICANT);
    assert_eq!(r.active_member_count, 1);
    assert_eq!(r.standard_monthly_fen, 0);
    assert_eq!(r.household_number, "");
    for id in ["R1", "R2", "R9"] {
        let i = indicator(&r, id);
        assert_eq!(i.outcome(), Outcome::Inconclusive, "{id}");
        assert_eq!(
            i.reason,
            "household not registered in this district; no standard applies"
        );
        assert!(i.missing_sources.is_empty());
    }
    assert_eq!(outcome(&r, "R8"), Outcome::Review);
    assert_eq!(outcome(&r, "R4"), Outcome::Pass);
    assert_eq!(r.income.as_ref().unwrap().per_capita_monthly_fen, 9_000);
    assert_eq!(r.verdict(), Outcome::Inconclusive);
    assert_eq!(
        r.verdict_reason,
        "cannot conclude R1 (income), R2 (money assets), R9 (bank outflows): household not \
         registered in this district; no standard applies"
    );
}

#[test]
fn a_failed_household_source_makes_every_indicator_inconclusive() {
    // The household source timed out; the others were asked about the
    // applicant alone, so even what they found (a payroll, here) cannot
    // decide a rule: another member's facts were never asked for.
    let mut s = Scenario::with_household(household_status(SourceStatus::Timeout));
    s.add("financial-bureau", APPLICANT, payroll(100_000));
    let r = s.fold();
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.active_member_count, 1);
    assert_eq!(
        outcomes(&r),
        [
            ("R1".to_owned(), Outcome::Inconclusive),
            ("R2".to_owned(), Outcome::Inconclusive),
            ("R3".to_owned(), Outcome::Inconclusive),
            ("R4".to_owned(), Outcome::Inconclusive),
            ("R5".to_owned(), Outcome::Inconclusive),
            ("R6".to_owned(), Outcome::Inconclusive),
            ("R7".to_owned(), Outcome::Inconclusive),
            ("R8".to_owned(), Outcome::Inconclusive),
            ("R9".to_owned(), Outcome::Inconclusive),
        ]
    );
    for id in ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"] {
        assert_eq!(
            indicator(&r, id).missing_sources,
            ["public-security"],
            "{id}"
        );
    }
    assert_eq!(
        indicator(&r, "R8").reason,
        "no usable answer from public-security (timeout); a missing answer is not read as \
         zero or no record"
    );
    assert!(!r.income.as_ref().unwrap().complete);
    assert_eq!(r.verdict(), Outcome::Inconclusive);

    // The others not queried: everything is inconclusive.
    let mut s = Scenario::with_household(household_status(SourceStatus::Unavailable));
    for id in s
        .outcomes
        .iter()
        .skip(1)
        .map(|o| o.spec.id.clone())
        .collect::<Vec<_>>()
    {
        s.set_status(&id, SourceStatus::NotQueried);
    }
    let r = s.fold();
    assert!(
        r.indicators
            .iter()
            .all(|i| i.outcome() == Outcome::Inconclusive)
    );
    assert_eq!(
        indicator(&r, "R3").missing_sources,
        ["public-security", "traffic-police", "transport"]
    );

    // An answer that cannot be used (the register does not list the
    // applicant) counts as missing although the source said OK.
    let other = registration(
        "H9",
        HukouType::Urban,
        &[(SPOUSE, RegistrationStatus::Active)],
    );
    let s = Scenario::with_household(household_ok(APPLICANT, other));
    let r = s.fold();
    assert_eq!(r.sources[0].status(), SourceStatus::Ok);
    let r8 = indicator(&r, "R8");
    assert_eq!(r8.outcome(), Outcome::Inconclusive);
    assert_eq!(r8.missing_sources, ["public-security"]);
    assert_eq!(
        r8.reason,
        "no usable answer from public-security (answer unusable: household H9 does not list \
         the applicant); a missing answer is not read as zero or no record"
    );
    assert_eq!(outcome(&r, "R3"), Outcome::Inconclusive);
}

// === defence in depth ===

#[test]
fn only_ok_answers_about_active_members_of_served_kinds_count() {
    let mut s = Scenario::registered(
        HukouType::Urban,
        &[
            (APPLICANT, RegistrationStatus::Active),
            (GRANDPA, RegistrationStatus::Deceased),
        ],
    );
    // About a deceased member and about a stranger: ignored.
    s.add(
        "traffic-police",
        GRANDPA,
        vehicle("川S1", VehicleClass::Car, VehicleStatus::Registered),
    );
    s.add(
        "traffic-police",
        STRANGER,
        vehicle("川S2", VehicleClass::Car, VehicleStatus::Registered),
    );
    // A kind the source does not serve: ignored.
    s.add(
        "employment",
        APPLICANT,
        vehicle("川S3", VehicleClass::Car, VehicleStatus::Registered),
    );
    // A source that answered NO_RECORD yet sent a fact: ignored.
    s.add(
        "market-supervision",
        APPLICANT,
        entity("X", 90_000_000, true),
    );
    s.outcome_mut("market-supervision").result.status = SourceStatus::NoRecord as i32;
    let r = s.fold();
    assert_eq!(outcome(&r, "R3"), Outcome::Pass);
    assert_eq!(outcome(&r, "R5"), Outcome::Pass);
    assert!(r.assets.as_ref().unwrap().items.is_empty());
    assert_eq!(r.active_member_count, 1);
}

#[test]
fn items_carry_their_provenance() {
    let mut s = Scenario::couple();
    let rec = s.add(
        "traffic-police",
        SPOUSE,
        vehicle("川S2", VehicleClass::Motorcycle, VehicleStatus::Registered),
    );
    let r = s.fold();
    let item = &r.assets.as_ref().unwrap().items[0];
    assert_eq!(item.category(), AssetCategory::Vehicle);
    assert_eq!(item.vehicle_class(), VehicleClass::Motorcycle);
    assert_eq!(item.value_fen, 8_000_000);
    assert_eq!(item.description, "motorcycle 川S2, registered 2015-06-01");
    let p = item.provenance.as_ref().unwrap();
    assert_eq!(
        (
            p.source_id.as_str(),
            p.person_id.as_str(),
            p.record_id.as_str()
        ),
        ("traffic-police", SPOUSE, rec.as_str())
    );
    assert_eq!(p.as_of, Some(as_of()));
}

// === purpose binding and data minimisation ===

/// The scenario's outcomes as `d` lets the purpose see them.
fn restrict(s: &mut Scenario, d: &crate::report::Disclosure) {
    for o in &mut s.outcomes {
        let original = o.spec.clone();
        *o = d.restrict(&original, o.clone());
    }
}

#[test]
fn withheld_kinds_make_what_needs_them_inconclusive_never_none_found() {
    let mut s = Scenario::couple();
    s.add(
        "rural-commercial-bank",
        APPLICANT,
        account(
            "Dachuan RCB",
            "6228**11",
            AccountType::Deposit,
            99_000_000,
            0,
        ),
    );
    s.purpose(Purpose::EducationAssistance);
    let kinds: Vec<FactKind> = crate::report::disclosure::all_kinds()
        .into_iter()
        .filter(|k| !matches!(k, FactKind::FinancialAccount | FactKind::AccountOutflow))
        .collect();
    restrict(
        &mut s,
        &crate::report::Disclosure {
            purpose: "education_assistance".into(),
            sources: None,
            fact_kinds: Some(kinds),
            aggregate: Vec::new(),
        },
    );
    let r = s.fold();
    // The deposit (well over the limit) is not read, and not read as none
    // either: R2 and R9 (and R1, which counts interest) are undecided.
    assert!(r.assets.as_ref().unwrap().items.is_empty());
    assert!(!r.assets.as_ref().unwrap().complete);
    assert!(!r.income.as_ref().unwrap().complete);
    for id in ["R1", "R2", "R9"] {
        let i = indicator(&r, id);
        assert_eq!(i.outcome(), Outcome::Inconclusive, "{id}");
        assert!(
            i.reason
                .contains("withheld for the purpose education_assistance: "),
            "{}",
            i.reason
        );
        assert!(
            i.reason
                .contains("(purposes.education_assistance.fact_kinds)"),
            "{}",
            i.reason
        );
    }
    // What needs only allowed kinds is decided as before.
    assert_eq!(outcome(&r, "R3"), Outcome::Pass);
    assert_eq!(outcome(&r, "R8"), Outcome::Pass);
    assert_eq!(r.verdict(), Outcome::Inconclusive);
    assert!(
        r.verdict_reason.contains("withheld"),
        "{}",
        r.verdict_reason
    );
    assert_eq!(
        r.withheld_fact_kinds,
        vec![
            FactKind::FinancialAccount as i32,
            FactKind::AccountOutflow as i32
        ]
    );
    let text = crate::render::text(&r);
    assert!(
        text.contains(
            "withheld for purpose education_assistance: financial_account, account_outflow"
        ),
        "{text}"
    );
    let bank = r
        .sources
        .iter()
        .find(|x| x.source_id == "rural-commercial-bank")
        .unwrap();
    assert_eq!(bank.status(), SourceStatus::NoRecord);
    assert_eq!(bank.fact_count, 0);
}

#[test]
fn totals_take_each_account_once_and_name_no_account() {
    let mut s = Scenario::couple();
    let deposit = |r: &str, b: i64| account("Dachuan RCB", r, AccountType::Deposit, b, 12_000);
    s.add("finance-office", APPLICANT, deposit("6228**11", 1_000_000));
    s.add("finance-office", APPLICANT, deposit("6228**33", 200_000));
    // The same account again, from the bank: taken once, before the sum.
    s.add(
        "rural-commercial-bank",
        APPLICANT,
        deposit("6228**11", 1_000_000),
    );
    s.add(
        "rural-commercial-bank",
        SPOUSE,
        account("Dachuan RCB", "6228**22", AccountType::Fund, 500_000, 0),
    );
    let whole = s.fold();
    s.purpose(Purpose::TemporaryAssistance);
    restrict(
        &mut s,
        &crate::report::Disclosure {
            purpose: "temporary_assistance".into(),
            sources: None,
            fact_kinds: None,
            aggregate: vec![FactKind::FinancialAccount, FactKind::AccountOutflow],
        },
    );
    let r = s.fold();
    let assets = r.assets.as_ref().unwrap();
    let items: Vec<(&str, i64)> = assets
        .items
        .iter()
        .map(|i| (i.description.as_str(), i.value_fen))
        .collect();
    assert_eq!(
        items,
        vec![
            ("deposit, total of 2 accounts", 1_200_000),
            ("fund, total of 1 account", 500_000)
        ]
    );
    for i in &assets.items {
        let p = i.provenance.as_ref().unwrap();
        assert!(p.record_id.is_empty(), "{p:?}");
        assert!(p.as_of.is_some());
    }
    for i in &r.income.as_ref().unwrap().items {
        assert!(!i.description.contains("6228"), "{}", i.description);
    }
    // The same figures as with every account shown.
    let w = whole.assets.as_ref().unwrap();
    assert_eq!(assets.money_assets_fen, w.money_assets_fen);
    assert_eq!(
        total(&r, IncomeCategory::Property),
        total(&whole, IncomeCategory::Property)
    );
    assert_eq!(outcomes(&r), outcomes(&whole));
    assert_eq!(
        r.aggregated_fact_kinds,
        vec![
            FactKind::FinancialAccount as i32,
            FactKind::AccountOutflow as i32
        ]
    );
    // Two sources' fact counts say totals, not accounts.
    let count = |id: &str| {
        r.sources
            .iter()
            .find(|x| x.source_id == id)
            .unwrap()
            .fact_count
    };
    assert_eq!(
        (count("finance-office"), count("rural-commercial-bank")),
        (1, 2)
    );
}
