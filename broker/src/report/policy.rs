//! The dated, per-county policy that a report is computed against.
//!
//! A policy is a TOML file (`broker/policies/<county>-<year>.toml`): the
//! county's Dibao standards, which income kinds are counted, which accounts
//! are money assets, the vehicle, housing, business and outflow limits, and
//! the thresholds of each purpose. The rules that use them are described in
//! `docs/policy.md`. Every key is required and unknown keys are refused, so a
//! typo cannot silently fall back to a default.
//!
//! The default policy, Dachuan District from 2018-01-01, is embedded in the
//! binary; [`PolicySet::load_dir`] adds the files of a directory (a file with
//! the same county and date replaces the embedded one). [`PolicySet::select`]
//! picks, for a household, the policy of its county in force on the
//! verification date, or the default county's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use hedui_proto::v1::{AccountType, FactKind, HukouType, IncomeCategory, Purpose, VehicleClass};
use serde::Deserialize;

/// The text of the embedded default policy (Dachuan District, 2018).
pub const DACHUAN_POLICY: &str = include_str!("../../policies/511703-2018.toml");

/// Where the embedded default policy comes from, as named in messages.
pub const DACHUAN_POLICY_ORIGIN: &str = "broker/policies/511703-2018.toml";

/// The county whose policy applies when a household's county has none: Dachuan
/// District.
pub const DEFAULT_COUNTY: &str = "511703";

// === IncomeKind ===

/// A kind of income, as the policy names it (`income.excluded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncomeKind {
    /// Wages: the largest of employment, public payroll and income-tax
    /// evidence.
    Wages,
    /// Net income of active individual businesses.
    Business,
    /// Registered lease income of dwellings.
    Rent,
    /// Interest and dividends of financial accounts.
    Interest,
    /// Basic pension of urban employees.
    EmployeePension,
    /// Unemployment benefit.
    UnemploymentBenefit,
    /// Agricultural subsidies of land contracts.
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
    /// Assistance received from programmes (unions, red cross and others).
    ProgrammeAssistance,
}

impl IncomeKind {
    /// Every income kind, in the order of `docs/policy.md`.
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

    /// The name used in policy files, e.g. `"resident_pension"`.
    pub fn name(self) -> &'static str {
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

    /// The income kind with this policy name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the kind is, in words, for report items.
    pub fn label(self) -> &'static str {
        match self {
            IncomeKind::Wages => "wages",
            IncomeKind::Business => "individual business net income",
            IncomeKind::Rent => "rent",
            IncomeKind::Interest => "interest and dividends",
            IncomeKind::EmployeePension => "employee basic pension",
            IncomeKind::UnemploymentBenefit => "unemployment benefit",
            IncomeKind::AgriculturalSubsidy => "agricultural subsidies",
            IncomeKind::ForestryGrant => "forestry grants",
            IncomeKind::ResidentPension => "resident basic pension",
            IncomeKind::SocialAssistance => "social assistance",
            IncomeKind::DisabilityAllowance => "disability allowance",
            IncomeKind::StudyAssistance => "study assistance",
            IncomeKind::ProgrammeAssistance => "programme assistance",
        }
    }

    /// The category the kind is counted in when the policy counts it.
    pub fn category(self) -> IncomeCategory {
        match self {
            IncomeKind::Wages => IncomeCategory::Wages,
            IncomeKind::Business => IncomeCategory::Business,
            IncomeKind::Rent | IncomeKind::Interest => IncomeCategory::Property,
            IncomeKind::EmployeePension
            | IncomeKind::UnemploymentBenefit
            | IncomeKind::AgriculturalSubsidy
            | IncomeKind::ForestryGrant
            | IncomeKind::ResidentPension
            | IncomeKind::SocialAssistance
            | IncomeKind::DisabilityAllowance
            | IncomeKind::StudyAssistance
            | IncomeKind::ProgrammeAssistance => IncomeCategory::Transfers,
        }
    }

    /// The fact kinds the income is read from.
    pub fn fact_kinds(self) -> &'static [FactKind] {
        match self {
            IncomeKind::Wages => &[
                FactKind::Employment,
                FactKind::PublicPayroll,
                FactKind::IncomeTax,
            ],
            IncomeKind::Business => &[FactKind::IndividualBusiness],
            IncomeKind::Rent => &[FactKind::Dwelling],
            IncomeKind::Interest => &[FactKind::FinancialAccount],
            IncomeKind::EmployeePension | IncomeKind::ResidentPension => {
                &[FactKind::SocialInsurance]
            }
            IncomeKind::UnemploymentBenefit => &[FactKind::Employment],
            IncomeKind::AgriculturalSubsidy => &[FactKind::LandContract],
            IncomeKind::ForestryGrant => &[FactKind::ForestRight],
            IncomeKind::SocialAssistance => &[FactKind::SocialAssistance],
            IncomeKind::DisabilityAllowance => &[FactKind::Disability],
            IncomeKind::StudyAssistance => &[FactKind::SchoolEnrolment],
            IncomeKind::ProgrammeAssistance => &[FactKind::AssistanceReceived],
        }
    }
}

impl fmt::Display for IncomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === PolicyError ===

/// Why a policy file or set cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (syntax, a missing or
    /// unknown key, a value of the wrong type).
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is not allowed.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The dotted key, e.g. `standard.urban_monthly_fen`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Two files define the policy of the same county and date.
    #[error("{second}: policy {id} is already defined in {first}")]
    Duplicate {
        /// The policy id, e.g. `511703@2018-01-01`.
        id: String,
        /// The file that defined it first.
        first: String,
        /// The file that defines it again.
        second: String,
    },
    /// The configured default county has no policy.
    #[error("default county {county}: no policy is defined for it")]
    NoDefaultPolicy {
        /// The county code.
        county: String,
    },
}

// === Policy ===

/// Dibao standards per person per month (`[standard]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standard {
    /// Standard for urban hukou, in fen.
    pub urban_monthly_fen: i64,
    /// Standard for rural hukou, in fen.
    pub rural_monthly_fen: i64,
}

/// How income is counted (`[income]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomeRules {
    /// Share of counted wages deducted as the cost of employment, in percent.
    pub employment_cost_pct: i64,
    /// Income kinds received but not counted.
    pub excluded: BTreeSet<IncomeKind>,
}

/// Which holdings are money assets (`[assets]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRules {
    /// Account types whose balance counts as money assets.
    pub money_account_types: BTreeSet<AccountType>,
}

/// Vehicle classes that fail or need review (`[vehicles]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleRules {
    /// A registered vehicle of one of these classes fails R3.
    pub fail_classes: BTreeSet<VehicleClass>,
    /// A registered vehicle of one of these classes needs review under R3.
    pub review_classes: BTreeSet<VehicleClass>,
}

/// Housing limits (`[housing]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HousingRules {
    /// Most residential dwellings a household may own.
    pub max_dwellings: i64,
    /// With exactly `max_dwellings`, the largest residential area per active
    /// member, in hundredths of a square metre.
    pub avg_area_per_capita_centi_m2: i64,
    /// A dwelling acquired within this many years before the verification
    /// date needs review.
    pub review_years: u32,
}

/// Business limit (`[business]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusinessRules {
    /// Largest total subscribed capital in active market entities, in fen.
    pub capital_limit_fen: i64,
}

/// Bank outflow limit (`[outflow]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutflowRules {
    /// Outflows per capita above this many months of the standard need review.
    pub months: i64,
}

/// Thresholds of one purpose (`[purposes.<name>]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurposeParams {
    /// R1 passes when per-capita income < standard × this / 100.
    pub income_multiple_pct: i64,
    /// R2 passes when per-capita money assets ≤ standard × this.
    pub asset_months: i64,
}

/// One county's policy from one date on, checked.
///
/// Built by [`Policy::parse`] (or a [`PolicySet`]); the fields are public to
/// read, and a policy changed in code is not checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file the policy comes from, as named in messages.
    pub origin: String,
    /// GB/T 2260 code of the county (6 digits).
    pub county: String,
    /// Name of the county.
    pub name: String,
    /// First day the policy applies.
    pub effective_from: NaiveDate,
    /// Dibao standards.
    pub standard: Standard,
    /// How income is counted.
    pub income: IncomeRules,
    /// Which holdings are money assets.
    pub assets: AssetRules,
    /// Vehicle classes that fail or need review.
    pub vehicles: VehicleRules,
    /// Housing limits.
    pub housing: HousingRules,
    /// Business limit.
    pub business: BusinessRules,
    /// Bank outflow limit.
    pub outflow: OutflowRules,
    purposes: BTreeMap<Purpose, PurposeParams>,
}

impl Policy {
    /// The embedded default policy: Dachuan District from 2018-01-01.
    pub fn dachuan() -> Policy {
        Policy::parse(DACHUAN_POLICY_ORIGIN, DACHUAN_POLICY)
            .expect("the embedded dachuan policy is valid")
    }

    /// Parses and checks a policy file; `origin` names it in messages.
    ///
    /// # Errors
    /// [`PolicyError::Parse`] for TOML that does not parse or has a missing,
    /// unknown or mistyped key; [`PolicyError::Invalid`] for a value that is
    /// not allowed, naming the key and what is allowed.
    pub fn parse(origin: &str, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
        raw.check(origin)
    }

    /// The policy's id: county and effective date, e.g. `511703@2018-01-01`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.county, self.effective_from)
    }

    /// The standard per person per month for a hukou type, in fen; `None`
    /// when the type is not known.
    pub fn standard(&self, hukou_type: HukouType) -> Option<i64> {
        match hukou_type {
            HukouType::Urban => Some(self.standard.urban_monthly_fen),
            HukouType::Rural => Some(self.standard.rural_monthly_fen),
            HukouType::Unspecified => None,
        }
    }

    /// The thresholds of a purpose. `PURPOSE_UNSPECIFIED`, which request
    /// validation refuses before any report is folded, gets those of the
    /// Dibao application.
    pub fn purpose(&self, purpose: Purpose) -> PurposeParams {
        let purpose = if purpose == Purpose::Unspecified {
            Purpose::DibaoApplication
        } else {
            purpose
        };
        // Parsing requires every purpose and a policy cannot be built
        // otherwise, so the lookup does not miss; should it, the Dibao
        // application's documented defaults apply.
        self.purposes
            .get(&purpose)
            .copied()
            .unwrap_or(PurposeParams {
                income_multiple_pct: 100,
                asset_months: 24,
            })
    }

    /// Sets the thresholds of a purpose (for policies built in code).
    pub fn set_purpose(&mut self, purpose: Purpose, params: PurposeParams) {
        self.purposes.insert(purpose, params);
    }

    /// Whether the policy counts an income kind (it is not excluded).
    pub fn counts(&self, kind: IncomeKind) -> bool {
        !self.income.excluded.contains(&kind)
    }
}

// === PolicySet ===

/// The policies a broker knows, and the default county.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// Sorted by county, then effective date; no two share both.
    policies: Vec<Policy>,
    default_county: String,
    /// Index of the default county's earliest policy, the answer of last
    /// resort.
    fallback: usize,
}

impl PolicySet {
    /// The embedded default policy alone.
    pub fn embedded() -> PolicySet {
        PolicySet::new(vec![Policy::dachuan()], DEFAULT_COUNTY)
            .expect("the embedded policy set is valid")
    }

    /// A set of policies with a default county.
    ///
    /// # Errors
    /// [`PolicyError::Duplicate`] when two policies share county and date;
    /// [`PolicyError::NoDefaultPolicy`] when the default county has none.
    pub fn new(mut policies: Vec<Policy>, default_county: &str) -> Result<PolicySet, PolicyError> {
        policies.sort_by(|a, b| {
            (a.county.as_str(), a.effective_from).cmp(&(b.county.as_str(), b.effective_from))
        });
        for pair in policies.windows(2) {
            if pair[0].county == pair[1].county && pair[0].effective_from == pair[1].effective_from
            {
                return Err(PolicyError::Duplicate {
                    id: pair[1].id(),
                    first: pair[0].origin.clone(),
                    second: pair[1].origin.clone(),
                });
            }
        }
        let fallback = policies
            .iter()
            .position(|p| p.county == default_county)
            .ok_or_else(|| PolicyError::NoDefaultPolicy {
                county: default_county.to_owned(),
            })?;
        Ok(PolicySet {
            policies,
            default_county: default_county.to_owned(),
            fallback,
        })
    }

    /// Every `*.toml` file of a directory, plus the embedded default policy
    /// unless a file defines the same county and date. The default county is
    /// Dachuan ([`DEFAULT_COUNTY`]).
    ///
    /// # Errors
    /// [`PolicyError::Io`] when the directory or a file cannot be read, the
    /// error of the first file that is not a valid policy (files are read in
    /// name order), or [`PolicyError::Duplicate`] when two files define the
    /// same county and date.
    pub fn load_dir(path: impl AsRef<Path>) -> Result<PolicySet, PolicyError> {
        let dir = path.as_ref();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| PolicyError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let file = entry.path();
            if file.extension().is_some_and(|e| e == "toml") && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        let mut policies: Vec<Policy> = Vec::with_capacity(files.len() + 1);
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(io(file))?;
            let policy = Policy::parse(&file.display().to_string(), &text)?;
            if let Some(first) = policies
                .iter()
                .find(|p| p.county == policy.county && p.effective_from == policy.effective_from)
            {
                return Err(PolicyError::Duplicate {
                    id: policy.id(),
                    first: first.origin.clone(),
                    second: policy.origin,
                });
            }
            policies.push(policy);
        }
        let embedded = Policy::dachuan();
        if !policies
            .iter()
            .any(|p| p.county == embedded.county && p.effective_from == embedded.effective_from)
        {
            policies.push(embedded);
        }
        PolicySet::new(policies, DEFAULT_COUNTY)
    }

    /// The same set with another default county.
    ///
    /// # Errors
    /// [`PolicyError::NoDefaultPolicy`] when the county has no policy.
    pub fn with_default_county(self, county: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::new(self.policies, county)
    }

    /// The default county.
    pub fn default_county(&self) -> &str {
        &self.default_county
    }

    /// Every policy, by county then effective date.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter()
    }

    /// The policy for a household registered in `region_code`, verified on
    /// `date` (China time): the county's policy with the latest
    /// `effective_from` not after `date`. Without one, the default county's
    /// policy chosen the same way, or, when the date precedes all of them, the
    /// default county's earliest.
    pub fn select(&self, region_code: &str, date: NaiveDate) -> &Policy {
        self.latest(region_code, date)
            .or_else(|| self.latest(&self.default_county, date))
            .unwrap_or(&self.policies[self.fallback])
    }

    fn latest(&self, county: &str, date: NaiveDate) -> Option<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.county == county && p.effective_from <= date)
            .max_by_key(|p| p.effective_from)
    }
}

// === Parsing ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    county: String,
    name: String,
    effective_from: String,
    standard: RawStandard,
    income: RawIncome,
    assets: RawAssets,
    vehicles: RawVehicles,
    housing: RawHousing,
    business: RawBusiness,
    outflow: RawOutflow,
    purposes: BTreeMap<String, RawPurpose>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandard {
    urban_monthly_fen: i64,
    rural_monthly_fen: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncome {
    employment_cost_pct: i64,
    excluded: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssets {
    money_account_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVehicles {
    fail_classes: Vec<String>,
    review_classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHousing {
    max_dwellings: i64,
    avg_area_per_capita_centi_m2: i64,
    review_years: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBusiness {
    capital_limit_fen: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutflow {
    months: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    income_multiple_pct: i64,
    asset_months: i64,
}

/// Largest amount of money a policy may name (one billion yuan), so that the
/// products the rules compute cannot overflow.
const MAX_FEN: i64 = 100_000_000_000;

/// Largest percentage or number of months a policy may name.
const MAX_FACTOR: i64 = 10_000;

/// Checks values of one file, each error naming the file and the key.
struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// `value` within `min..=max`.
    fn range(&self, key: &str, value: i64, min: i64, max: i64) -> Result<i64, PolicyError> {
        if value < min {
            let op = if min == 1 {
                "> 0".to_owned()
            } else {
                format!(">= {min}")
            };
            return Err(self.invalid(key, format!("must be {op}, got {value}")));
        }
        if value > max {
            return Err(self.invalid(key, format!("must be <= {max}, got {value}")));
        }
        Ok(value)
    }

    /// A list of names, each one of `allowed`, none twice.
    fn names<T: Copy + Ord>(
        &self,
        key: &str,
        what: &str,
        names: &[String],
        allowed: &[(String, T)],
    ) -> Result<BTreeSet<T>, PolicyError> {
        let mut set = BTreeSet::new();
        for name in names {
            let Some((_, value)) = allowed.iter().find(|(n, _)| n == name) else {
                let list: Vec<&str> = allowed.iter().map(|(n, _)| n.as_str()).collect();
                return Err(self.invalid(
                    key,
                    format!("unknown {what} {name:?}; allowed: {}", list.join(", ")),
                ));
            };
            if !set.insert(*value) {
                return Err(self.invalid(key, format!("{name:?} is listed twice")));
            }
        }
        Ok(set)
    }
}

/// The values of a proto enum other than 0 (unspecified), with their names
/// less `prefix`, as policy files write them.
fn proto_names<T: Copy>(
    prefix: &str,
    of: impl Fn(i32) -> Option<T>,
    name: impl Fn(T) -> &'static str,
) -> Vec<(String, T)> {
    (1..)
        .map_while(&of)
        .map(|v| {
            let full = name(v);
            (full.strip_prefix(prefix).unwrap_or(full).to_owned(), v)
        })
        .collect()
}

fn account_type_names() -> Vec<(String, AccountType)> {
    proto_names(
        "ACCOUNT_TYPE_",
        |i| AccountType::try_from(i).ok(),
        |v| v.as_str_name(),
    )
}

fn vehicle_class_names() -> Vec<(String, VehicleClass)> {
    proto_names(
        "VEHICLE_CLASS_",
        |i| VehicleClass::try_from(i).ok(),
        |v| v.as_str_name(),
    )
}

/// Every purpose with its policy-file name, e.g. `dibao_application`.
pub fn purpose_names() -> Vec<(String, Purpose)> {
    proto_names(
        "PURPOSE_",
        |i| Purpose::try_from(i).ok(),
        |v| v.as_str_name(),
    )
    .into_iter()
    .map(|(n, v)| (n.to_ascii_lowercase(), v))
    .collect()
}

impl RawPolicy {
    fn check(self, origin: &str) -> Result<Policy, PolicyError> {
        let c = Checker { origin };

        if self.county.len() != 6 || !self.county.bytes().all(|b| b.is_ascii_digit()) {
            return Err(c.invalid(
                "county",
                format!("must be a 6-digit GB/T 2260 code, got {:?}", self.county),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(c.invalid("name", "must not be empty"));
        }
        let effective_from =
            NaiveDate::parse_from_str(&self.effective_from, "%Y-%m-%d").map_err(|_| {
                c.invalid(
                    "effective_from",
                    format!("must be a date YYYY-MM-DD, got {:?}", self.effective_from),
                )
            })?;

        let standard = Standard {
            urban_monthly_fen: c.range(
                "standard.urban_monthly_fen",
                self.standard.urban_monthly_fen,
                1,
                MAX_FEN,
            )?,
            rural_monthly_fen: c.range(
                "standard.rural_monthly_fen",
                self.standard.rural_monthly_fen,
                1,
                MAX_FEN,
            )?,
        };

        let income_kinds: Vec<(String, IncomeKind)> = IncomeKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), *k))
            .collect();
        let income = IncomeRules {
            employment_cost_pct: c.range(
                "income.employment_cost_pct",
                self.income.employment_cost_pct,
                0,
                100,
            )?,
            excluded: c.names(
                "income.excluded",
                "income kind",
                &self.income.excluded,
                &income_kinds,
            )?,
        };

        let account_types = account_type_names();
        let money_account_types = c.names(
            "assets.money_account_types",
            "account type",
            &self.assets.money_account_types,
            &account_types,
        )?;
        if money_account_types.is_empty() {
            let list: Vec<&str> = account_types.iter().map(|(n, _)| n.as_str()).collect();
            return Err(c.invalid(
                "assets.money_account_types",
                format!("must list at least one of: {}", list.join(", ")),
            ));
        }

        let classes = vehicle_class_names();
        let fail_classes = c.names(
            "vehicles.fail_classes",
            "vehicle class",
            &self.vehicles.fail_classes,
            &classes,
        )?;
        let review_classes = c.names(
            "vehicles.review_classes",
            "vehicle class",
            &self.vehicles.review_classes,
            &classes,
        )?;
        if let Some(both) = fail_classes.intersection(&review_classes).next() {
            let name = both.as_str_name().trim_start_matches("VEHICLE_CLASS_");
            return Err(c.invalid(
                "vehicles.review_classes",
                format!(
                    "{name:?} is also in vehicles.fail_classes; a class may be in one list only"
                ),
            ));
        }

        let housing = HousingRules {
            max_dwellings: c.range("housing.max_dwellings", self.housing.max_dwellings, 1, 1000)?,
            avg_area_per_capita_centi_m2: c.range(
                "housing.avg_area_per_capita_centi_m2",
                self.housing.avg_area_per_capita_centi_m2,
                1,
                MAX_FEN,
            )?,
            review_years: c.range("housing.review_years", self.housing.review_years, 0, 100)?
                as u32,
        };
        let business = BusinessRules {
            capital_limit_fen: c.range(
                "business.capital_limit_fen",
                self.business.capital_limit_fen,
                0,
                MAX_FEN,
            )?,
        };
        let outflow = OutflowRules {
            months: c.range("outflow.months", self.outflow.months, 1, MAX_FACTOR)?,
        };

        let known = purpose_names();
        let mut purposes = BTreeMap::new();
        for (name, raw) in &self.purposes {
            let Some((_, purpose)) = known.iter().find(|(n, _)| n == name) else {
                let list: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
                return Err(c.invalid(
                    &format!("purposes.{name}"),
                    format!("unknown purpose; allowed: {}", list.join(", ")),
                ));
            };
            let params = PurposeParams {
                income_multiple_pct: c.range(
                    &format!("purposes.{name}.income_multiple_pct"),
                    raw.income_multiple_pct,
                    1,
                    MAX_FACTOR,
                )?,
                asset_months: c.range(
                    &format!("purposes.{name}.asset_months"),
                    raw.asset_months,
                    1,
                    MAX_FACTOR,
                )?,
            };
            purposes.insert(*purpose, params);
        }
        let missing: Vec<&str> = known
            .iter()
            .filter(|(_, p)| !purposes.contains_key(p))
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(c.invalid(
                "purposes",
                format!(
                    "missing {}; every purpose must have a [purposes.<name>] table",
                    missing.join(", ")
                ),
            ));
        }

        Ok(Policy {
            origin: origin.to_owned(),
            county: self.county,
            name: self.name,
            effective_from,
            standard,
            income,
            assets: AssetRules {
                money_account_types,
            },
            vehicles: VehicleRules {
                fail_classes,
                review_classes,
            },
            housing,
            business,
            outflow,
            purposes,
        })
    }
}

/// A TOML error as one line naming the file, line and column.
fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> PolicyError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    PolicyError::Parse {
        origin: origin.to_owned(),
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// The shipped file with one line replaced.
    fn edited(from: &str, to: &str) -> String {
        assert!(DACHUAN_POLICY.contains(from), "{from:?} not in the file");
        DACHUAN_POLICY.replacen(from, to, 1)
    }

    fn error_of(text: &str) -> String {
        Policy::parse("test.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn shipped_file_parses_with_the_documented_values() {
        let p = Policy::dachuan();
        assert_eq!(p.id(), "511703@2018-01-01");
        assert_eq!(p.name, "Dachuan District");
        assert_eq!(p.standard(HukouType::Urban), Some(52000));
        assert_eq!(p.standard(HukouType::Rural), Some(33000));
        assert_eq!(p.standard(HukouType::Unspecified), None);
        assert_eq!(p.income.employment_cost_pct, 10);
        let excluded: Vec<_> = p.income.excluded.iter().map(|k| k.name()).collect();
        assert_eq!(
            excluded,
            [
                "resident_pension",
                "social_assistance",
                "disability_allowance",
                "study_assistance",
                "programme_assistance"
            ]
        );
        assert_eq!(p.assets.money_account_types.len(), 5);
        assert_eq!(
            p.vehicles.fail_classes,
            BTreeSet::from([VehicleClass::Car, VehicleClass::Truck, VehicleClass::Ship])
        );
        assert_eq!(
            p.vehicles.review_classes,
            BTreeSet::from([VehicleClass::Tricycle, VehicleClass::FarmMachinery])
        );
        assert_eq!(
            p.housing,
            HousingRules {
                max_dwellings: 2,
                avg_area_per_capita_centi_m2: 4000,
                review_years: 3
            }
        );
        assert_eq!(p.business.capital_limit_fen, 10_000_000);
        assert_eq!(p.outflow.months, 12);
        let expect = [
            (Purpose::DibaoApplication, 100, 24),
            (Purpose::DibaoReview, 100, 24),
            (Purpose::ExtremePoverty, 100, 36),
            (Purpose::LowIncome, 150, 36),
            (Purpose::TemporaryAssistance, 150, 24),
            (Purpose::MedicalAssistance, 150, 24),
            (Purpose::EducationAssistance, 150, 24),
        ];
        for (purpose, pct, months) in expect {
            assert_eq!(
                p.purpose(purpose),
                PurposeParams {
                    income_multiple_pct: pct,
                    asset_months: months
                },
                "{purpose:?}"
            );
        }
        assert_eq!(
            p.purpose(Purpose::Unspecified),
            p.purpose(Purpose::DibaoApplication)
        );
    }

    #[test]
    fn every_key_of_the_shipped_file_is_commented() {
        let mut previous = "";
        for line in DACHUAN_POLICY.lines() {
            let is_key = line.contains(" = ") && !line.starts_with('#') && !line.starts_with(' ');
            let in_purpose_table =
                previous.starts_with("[purposes.") || previous.starts_with("income_multiple_pct");
            if is_key && !in_purpose_table {
                assert!(
                    previous.starts_with('#'),
                    "key without a comment above it: {line}"
                );
            }
            previous = line;
        }
    }

    #[test]
    fn messages_name_the_file_the_key_and_what_is_allowed() {
        assert_eq!(
            error_of(&edited(
                "urban_monthly_fen = 52000",
                "urban_monthly_fen = 0"
            )),
            "test.toml: standard.urban_monthly_fen: must be > 0, got 0"
        );
        assert_eq!(
            Policy::parse(
                DACHUAN_POLICY_ORIGIN,
                &edited("urban_monthly_fen = 52000", "urban_monthly_fen = -5")
            )
            .unwrap_err()
            .to_string(),
            "broker/policies/511703-2018.toml: standard.urban_monthly_fen: must be > 0, got -5"
        );
        assert_eq!(
            error_of(&edited(
                "employment_cost_pct = 10",
                "employment_cost_pct = 101"
            )),
            "test.toml: income.employment_cost_pct: must be <= 100, got 101"
        );
        assert_eq!(
            error_of(&edited("\"study_assistance\",", "\"salary\",")),
            "test.toml: income.excluded: unknown income kind \"salary\"; allowed: wages, business, \
             rent, interest, employee_pension, unemployment_benefit, agricultural_subsidy, \
             forestry_grant, resident_pension, social_assistance, disability_allowance, \
             study_assistance, programme_assistance"
        );
        assert_eq!(
            error_of(&edited("\"study_assistance\",", "\"social_assistance\",")),
            "test.toml: income.excluded: \"social_assistance\" is listed twice"
        );
        assert_eq!(
            error_of(&edited("[\"DEPOSIT\",", "[\"CASH\",")),
            "test.toml: assets.money_account_types: unknown account type \"CASH\"; allowed: \
             DEPOSIT, SECURITIES, FUND, INSURANCE, WEALTH_MANAGEMENT"
        );
        assert_eq!(
            error_of(&edited(
                "money_account_types = [\"DEPOSIT\", \"SECURITIES\", \"FUND\", \"INSURANCE\", \"WEALTH_MANAGEMENT\"]",
                "money_account_types = []"
            )),
            "test.toml: assets.money_account_types: must list at least one of: DEPOSIT, \
             SECURITIES, FUND, INSURANCE, WEALTH_MANAGEMENT"
        );
        assert_eq!(
            error_of(&edited("[\"CAR\",", "[\"SPACESHIP\",")),
            "test.toml: vehicles.fail_classes: unknown vehicle class \"SPACESHIP\"; allowed: \
             CAR, TRUCK, MOTORCYCLE, TRICYCLE, FARM_MACHINERY, DISABILITY, SHIP"
        );
        assert_eq!(
            error_of(&edited("[\"TRICYCLE\",", "[\"CAR\",")),
            "test.toml: vehicles.review_classes: \"CAR\" is also in vehicles.fail_classes; a \
             class may be in one list only"
        );
        assert_eq!(
            error_of(&edited("county = \"511703\"", "county = \"5117\"")),
            "test.toml: county: must be a 6-digit GB/T 2260 code, got \"5117\""
        );
        assert_eq!(
            error_of(&edited(
                "effective_from = \"2018-01-01\"",
                "effective_from = \"2018-13-01\""
            )),
            "test.toml: effective_from: must be a date YYYY-MM-DD, got \"2018-13-01\""
        );
        assert_eq!(
            error_of(&edited("max_dwellings = 2", "max_dwellings = 0")),
            "test.toml: housing.max_dwellings: must be > 0, got 0"
        );
        assert_eq!(
            error_of(&edited("review_years = 3", "review_years = -1")),
            "test.toml: housing.review_years: must be >= 0, got -1"
        );
        assert_eq!(
            error_of(&edited("months = 12", "months = 0")),
            "test.toml: outflow.months: must be > 0, got 0"
        );
    }

    #[test]
    fn every_purpose_must_be_present_and_known() {
        let without = edited(
            "[purposes.low_income]\nincome_multiple_pct = 150\nasset_months = 36\n",
            "",
        );
        assert_eq!(
            error_of(&without),
            "test.toml: purposes: missing low_income; every purpose must have a \
             [purposes.<name>] table"
        );
        let unknown = format!(
            "{DACHUAN_POLICY}\n[purposes.housing_aid]\nincome_multiple_pct = 100\nasset_months = 24\n"
        );
        assert_eq!(
            error_of(&unknown),
            "test.toml: purposes.housing_aid: unknown purpose; allowed: dibao_application, \
             dibao_review, extreme_poverty, low_income, temporary_assistance, \
             medical_assistance, education_assistance"
        );
        let zero = edited(
            "[purposes.low_income]\nincome_multiple_pct = 150",
            "[purposes.low_income]\nincome_multiple_pct = 0",
        );
        assert_eq!(
            error_of(&zero),
            "test.toml: purposes.low_income.income_multiple_pct: must be > 0, got 0"
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_refused_with_their_line() {
        let unknown = edited("months = 12", "months = 12\nweeks = 3");
        let e = error_of(&unknown);
        assert!(e.starts_with("test.toml:"), "{e}");
        assert!(e.contains("unknown field `weeks`"), "{e}");
        let line = DACHUAN_POLICY
            .lines()
            .position(|l| l == "months = 12")
            .unwrap()
            + 2;
        assert!(e.starts_with(&format!("test.toml:{line}:")), "{e}");

        let missing = edited("capital_limit_fen = 10000000\n", "");
        let e = error_of(&missing);
        assert!(e.contains("missing field `capital_limit_fen`"), "{e}");

        let mistyped = edited("months = 12", "months = \"twelve\"");
        assert!(error_of(&mistyped).contains("invalid type"));
    }

    fn policy(county: &str, from: &str, urban: i64) -> Policy {
        let text = DACHUAN_POLICY
            .replacen("county = \"511703\"", &format!("county = \"{county}\""), 1)
            .replacen(
                "effective_from = \"2018-01-01\"",
                &format!("effective_from = \"{from}\""),
                1,
            )
            .replacen(
                "urban_monthly_fen = 52000",
                &format!("urban_monthly_fen = {urban}"),
                1,
            );
        Policy::parse(&format!("{county}-{from}.toml"), &text).unwrap()
    }

    #[test]
    fn select_picks_the_latest_policy_in_force_or_the_default() {
        let set = PolicySet::new(
            vec![
                policy("511703", "2018-01-01", 52000),
                policy("511703", "2023-07-01", 65000),
                policy("511702", "2020-01-01", 60000),
            ],
            DEFAULT_COUNTY,
        )
        .unwrap();
        assert_eq!(
            set.select("511703", date(2017, 5, 1)).id(),
            "511703@2018-01-01"
        );
        assert_eq!(
            set.select("511703", date(2023, 6, 30)).id(),
            "511703@2018-01-01"
        );
        assert_eq!(
            set.select("511703", date(2023, 7, 1)).id(),
            "511703@2023-07-01"
        );
        assert_eq!(
            set.select("511702", date(2024, 1, 1)).id(),
            "511702@2020-01-01"
        );
        // Before the county's first policy, and for unknown counties: the
        // default county's policy in force.
        assert_eq!(
            set.select("511702", date(2019, 1, 1)).id(),
            "511703@2018-01-01"
        );
        assert_eq!(
            set.select("110101", date(2024, 1, 1)).id(),
            "511703@2023-07-01"
        );
        assert_eq!(set.select("", date(2024, 1, 1)).id(), "511703@2023-07-01");

        let set = set.with_default_county("511702").unwrap();
        assert_eq!(set.default_county(), "511702");
        assert_eq!(
            set.select("110101", date(2024, 1, 1)).id(),
            "511702@2020-01-01"
        );
        assert_eq!(
            set.with_default_county("110101").unwrap_err().to_string(),
            "default county 110101: no policy is defined for it"
        );
    }

    #[test]
    fn embedded_set_answers_every_county_and_date() {
        let set = PolicySet::embedded();
        assert_eq!(set.iter().count(), 1);
        assert_eq!(
            set.select("511703", date(2025, 3, 1)).id(),
            "511703@2018-01-01"
        );
        assert_eq!(
            set.select("999999", date(1990, 3, 1)).id(),
            "511703@2018-01-01"
        );
    }

    #[test]
    fn load_dir_adds_files_and_overrides_the_embedded_policy() {
        let dir = tempfile::tempdir().unwrap();
        let later = DACHUAN_POLICY.replacen(
            "effective_from = \"2018-01-01\"",
            "effective_from = \"2024-01-01\"",
            1,
        );
        std::fs::write(dir.path().join("511703-2024.toml"), later).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap();
        let ids: Vec<String> = set.iter().map(Policy::id).collect();
        assert_eq!(ids, ["511703@2018-01-01", "511703@2024-01-01"]);
        assert_eq!(
            set.select("511703", date(2018, 1, 1)).origin,
            DACHUAN_POLICY_ORIGIN
        );

        // Same county and date as the embedded file: the file wins.
        let same =
            DACHUAN_POLICY.replacen("rural_monthly_fen = 33000", "rural_monthly_fen = 34000", 1);
        std::fs::write(dir.path().join("511703-2018.toml"), same).unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap();
        assert_eq!(set.iter().count(), 2);
        assert_eq!(
            set.select("511703", date(2019, 1, 1))
                .standard(HukouType::Rural),
            Some(34000)
        );

        // Two files for the same county and date.
        std::fs::write(dir.path().join("zz-copy.toml"), DACHUAN_POLICY).unwrap();
        let e = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("zz-copy.toml: policy 511703@2018-01-01 is already defined in ")
                && e.ends_with("511703-2018.toml"),
            "{e}"
        );

        // A bad file is named.
        std::fs::remove_file(dir.path().join("zz-copy.toml")).unwrap();
        std::fs::write(
            dir.path().join("511702-2020.toml"),
            DACHUAN_POLICY.replacen("months = 12", "months = -1", 1),
        )
        .unwrap();
        let e = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("511702-2020.toml: outflow.months: must be > 0, got -1"),
            "{e}"
        );

        let missing = dir.path().join("nope");
        let e = PolicySet::load_dir(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read:", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn income_kinds_round_trip_and_map_to_fact_kinds() {
        for kind in IncomeKind::ALL {
            assert_eq!(IncomeKind::from_name(kind.name()), Some(kind));
            assert!(!kind.fact_kinds().is_empty());
        }
        assert_eq!(IncomeKind::from_name("salary"), None);
        assert_eq!(
            IncomeKind::Wages.fact_kinds(),
            [
                FactKind::Employment,
                FactKind::PublicPayroll,
                FactKind::IncomeTax
            ]
        );
    }
}
