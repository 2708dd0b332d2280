//! A deterministic synthetic population of households applying for social
//! assistance in Dachuan District, and the facts each of the 28 sources
//! holds about each person.
//!
//! The same [`PopulationConfig`] (seed, number of households, today) always
//! gives the same population, down to every ID number and record id.
//! Households are drawn for a designed [`Scenario`] (a clean household, one
//! whose income is over the line, one with a car, a related party, ...) so
//! that the Dachuan 2018 standard gives a useful mix of verdicts; the
//! verdict itself is never stored: [`crate::truth`] computes it from the
//! model.
//!
//! Storage is compact (a few dozen bytes per person and per record) so that
//! a population of Dachuan's scale (400,000 households) fits comfortably in
//! memory; facts are built on demand by [`Population::facts_for`].

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use chrono::{Datelike, Days, NaiveDate};
use hedui_proto::{
    resident_id,
    v1::{
        AccountOutflow, AccountType, AssistanceReceived, AssistanceType, CivilDate, Disability,
        Dwelling, DwellingUse, Employment, EmploymentStatus, EntityKind, EntityRole, Fact,
        FinancialAccount, ForestRight, HouseholdRegistration, HukouType, IncomeTax,
        IndividualBusiness, LandContract, LicenceType, MaritalStatus, MarketEntity, Marriage,
        MedicalInsurance, OperatingLicence, PensionKind, ProvidentFund, PublicPayroll,
        RegisteredPerson, RegistrationStatus, RelatedParty, Relation, SchoolEnrolment, Sex,
        SocialAssistance, SocialInsurance, TaxRegistration, Vehicle, VehicleClass, VehicleStatus,
        fact::Value,
    },
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::agency::{Agency, PROGRAMMES};

/// GB/T 2260 code of Dachuan District, where every generated household is
/// registered.
pub const DACHUAN_CODE: &str = "511703";

/// Name of the Dachuan Rural Commercial Bank as it appears in
/// `FinancialAccount.institution`; its accounts are reported only by the
/// `rural-commercial-bank` source.
pub const RURAL_COMMERCIAL_BANK: &str = "Dachuan Rural Commercial Bank";

/// Id of a 29th source the catalog does not know: a second rural bank,
/// connected by configuration alone. The population knows its customers
/// ([`Population::facts_for`]); the ground truth does not count them.
pub const SECOND_BANK_ID: &str = "tongchuan-rural-bank";

/// Name of the second rural bank, as in `FinancialAccount.institution`.
pub const SECOND_BANK_NAME: &str = "Tongchuan Rural Commercial Bank";

/// Default seed of a population (the year of the Dachuan pilot).
pub const DEFAULT_SEED: u64 = 2018;

/// Default number of households.
pub const DEFAULT_HOUSEHOLDS: usize = 3000;

/// Urban Dibao standard of Dachuan 2018 in fen per person per month, which
/// the generator aims its distributions at.
const URBAN_STANDARD_FEN: i64 = 52_000;
/// Rural Dibao standard of Dachuan 2018 in fen per person per month.
const RURAL_STANDARD_FEN: i64 = 33_000;

/// What a population is generated from. Equal configurations give equal
/// populations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PopulationConfig {
    /// Seed of the random generator.
    pub seed: u64,
    /// Number of households.
    pub households: usize,
    /// The day the population is as of: ages, "recent" purchases and the
    /// validity of licences are relative to it.
    pub today: NaiveDate,
}

impl PopulationConfig {
    /// A configuration with the default seed and size, as of today in China
    /// time.
    pub fn new() -> Self {
        Self {
            seed: DEFAULT_SEED,
            households: DEFAULT_HOUSEHOLDS,
            today: china_today(),
        }
    }
}

impl Default for PopulationConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Today's date in China time (UTC+8).
pub fn china_today() -> NaiveDate {
    (chrono::Utc::now() + chrono::TimeDelta::hours(8)).date_naive()
}

/// What a household was generated to show. The verdict is not stored: it is
/// computed by [`crate::truth`] and may differ from the design (a household
/// designed clean whose deposits' interest lifts its income over the line
/// fails on income).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Income and assets within the standard, nothing to review.
    Clean,
    /// Counted income per capita over the standard (R1).
    IncomeOverLine,
    /// Money assets per capita over the limit (R2).
    MoneyAssets,
    /// A car, truck or ship, or a valid operating licence (R3).
    Vehicle,
    /// Three dwellings, two large ones, or a shop besides a home (R4).
    Housing,
    /// Subscribed capital over the limit (R5).
    BusinessCapital,
    /// Two of the failures above.
    SeveralFailures,
    /// A member on public payroll (R6).
    PublicPayroll,
    /// A member related to deciding staff (R7).
    RelatedParty,
    /// A tricycle or large farm machinery (R3 review).
    ReviewVehicle,
    /// A dwelling bought within the last three years (R4 review).
    RecentPurchase,
    /// A small individual business or a cooperative share (R5 review).
    SmallBusiness,
    /// Large outflows from bank accounts (R9).
    LargeOutflow,
    /// A deceased or moved-out member in the register (R8).
    RegisterChange,
    /// A shop or workshop as the only building (R4 review).
    SoleNonResidential,
}

impl Scenario {
    /// Every scenario with its weight per thousand households.
    const WEIGHTS: [(Scenario, u32); 15] = [
        (Scenario::Clean, 390),
        (Scenario::IncomeOverLine, 120),
        (Scenario::MoneyAssets, 70),
        (Scenario::Vehicle, 70),
        (Scenario::Housing, 45),
        (Scenario::BusinessCapital, 35),
        (Scenario::SeveralFailures, 35),
        (Scenario::PublicPayroll, 30),
        (Scenario::RelatedParty, 30),
        (Scenario::ReviewVehicle, 35),
        (Scenario::RecentPurchase, 30),
        (Scenario::SmallBusiness, 35),
        (Scenario::LargeOutflow, 30),
        (Scenario::RegisterChange, 35),
        (Scenario::SoleNonResidential, 10),
    ];

    fn from_u8(v: u8) -> Scenario {
        Scenario::WEIGHTS[usize::from(v)].0
    }

    fn to_u8(self) -> u8 {
        Scenario::WEIGHTS
            .iter()
            .position(|(s, _)| *s == self)
            .expect("every scenario has a weight") as u8
    }
}

// === records ===

/// A household as stored: its members are `persons[first..first + size]`.
#[derive(Debug, Clone, Copy)]
struct HouseholdRec {
    first_person: u32,
    size: u8,
    applicant: u8,
    urban: bool,
    scenario: u8,
}

/// A person as stored: 52 bytes. Enums are kept as their proto values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PersonRec {
    id: [u8; 18],
    pub(crate) household: u32,
    pub(crate) first_holding: u32,
    pub(crate) holdings: u16,
    given: u16,
    surname: u8,
    relation: u8,
    sex: u8,
    status: u8,
    marital: u8,
    employee_scheme: bool,
    birth: NaiveDate,
    status_date: Option<NaiveDate>,
    marriage_date: Option<NaiveDate>,
    oop_yuan: u32,
}

impl PersonRec {
    pub(crate) fn is_active(&self) -> bool {
        i32::from(self.status) == RegistrationStatus::Active as i32
    }

    pub(crate) fn status(&self) -> RegistrationStatus {
        RegistrationStatus::try_from(i32::from(self.status)).unwrap_or_default()
    }
}

/// Something a person has, is or receives, as one source records it. Money
/// is fen unless the field says yuan; enums are their proto values.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Holding {
    Vehicle {
        plate: u32,
        class: u8,
        status: u8,
        registered: NaiveDate,
        price_yuan: u32,
    },
    Licence {
        plate: u32,
        kind: u8,
        valid_to: NaiveDate,
    },
    Account {
        institution: u8,
        kind: u8,
        balance_fen: u32,
        income_12m_fen: u32,
    },
    Outflow {
        institution: u8,
        months: u8,
        total_fen: u32,
    },
    Dwelling {
        cert: u32,
        residential: bool,
        area_centi_m2: u32,
        acquired: NaiveDate,
        share_bp: u16,
        rent_yuan: u16,
    },
    ProvidentFund {
        contribution_fen: u32,
        base_fen: u32,
        balance_fen: u32,
        loan_fen: u32,
    },
    Employment {
        status: u8,
        employer: u8,
        wage_fen: u32,
        benefit_fen: u32,
    },
    SocialInsurance {
        base_fen: u32,
        employer: u8,
        pension_kind: u8,
        pension_fen: u32,
    },
    TaxRegistration {
        entity: u32,
        tax_paid_fen: u32,
    },
    IncomeTax {
        year: u16,
        wages_fen: u32,
        labour_fen: u32,
        withheld_fen: u32,
    },
    MarketEntity {
        entity: u32,
        kind: u8,
        role: u8,
        capital_fen: u32,
        active: bool,
    },
    IndividualBusiness {
        entity: u32,
        turnover_fen: u32,
        net_fen: u32,
        active: bool,
    },
    PublicPayroll {
        employer: u8,
        salary_fen: u32,
    },
    ForestRight {
        area_centi_m2: u32,
        grants_fen: u32,
    },
    LandContract {
        area_centi_m2: u32,
        subsidies_fen: u32,
        machinery: bool,
    },
    School {
        level: u8,
        school: u8,
        assistance_fen: u32,
    },
    SocialAssistance {
        kind: u8,
        monthly_fen: u32,
        since: NaiveDate,
    },
    RelatedParty {
        role: u8,
        kinship: u8,
    },
    Disability {
        category: u8,
        grade: u8,
        allowance_fen: u32,
    },
    Assistance {
        programme: u8,
        amount_fen: u32,
        last_paid: NaiveDate,
    },
}

impl Holding {
    /// The agency that records this holding.
    pub(crate) fn agency(&self) -> Agency {
        match self {
            Holding::Vehicle { .. } => Agency::TrafficPolice,
            Holding::Licence { .. } => Agency::Transport,
            Holding::Account { institution, .. } | Holding::Outflow { institution, .. } => {
                institution_agency(*institution)
            }
            Holding::Dwelling { .. } => Agency::HousingManagement,
            Holding::ProvidentFund { .. } => Agency::ProvidentFund,
            Holding::Employment { .. } => Agency::Employment,
            Holding::SocialInsurance { .. } => Agency::SocialInsurance,
            Holding::TaxRegistration { .. } => Agency::LocalTax,
            Holding::IncomeTax { .. } => Agency::StateTax,
            Holding::MarketEntity { .. } => Agency::MarketSupervision,
            Holding::IndividualBusiness { .. } => Agency::Commerce,
            Holding::PublicPayroll { .. } => Agency::FinancialBureau,
            Holding::ForestRight { .. } => Agency::Forestry,
            Holding::LandContract { .. } => Agency::Agriculture,
            Holding::School { .. } => Agency::Education,
            Holding::SocialAssistance { .. } | Holding::RelatedParty { .. } => Agency::CivilAffairs,
            Holding::Disability { .. } => Agency::DisabledFederation,
            Holding::Assistance { programme, .. } => {
                Agency::PROGRAMME_AGENCIES[usize::from(*programme)]
            }
        }
    }
}

/// An entity (individual business, enterprise, cooperative) as stored, for
/// its name and code.
#[derive(Debug, Clone, Copy)]
struct EntityRec {
    kind: u8,
    surname: u8,
    word: u8,
    sector: u8,
}

// === tables ===

const SURNAMES: [&str; 32] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高", "郑", "梁", "谢", "唐", "许", "冯", "宋", "邓", "曾", "彭", "蒋", "向",
];

/// Given names: the first `MALE_GIVEN` are usual for men, the rest for
/// women.
const GIVEN_NAMES: [&str; 64] = [
    "伟", "强", "军", "勇", "杰", "涛", "明", "超", "刚", "平", "辉", "建国", "建华", "志强",
    "国庆", "德明", "文斌", "海波", "小龙", "俊杰", "浩然", "子豪", "宇航", "家明", "永福", "长青",
    "正华", "光荣", "成刚", "世平", "天佑", "一鸣", "芳", "娜", "敏", "静", "丽", "艳", "霞", "燕",
    "玲", "桂英", "秀英", "玉兰", "淑珍", "春梅", "晓红", "丽萍", "小芳", "雨涵", "欣怡", "梓涵",
    "思琪", "佳怡", "婷婷", "慧敏", "凤英", "翠花", "金凤", "莉", "雪梅", "红梅", "梦瑶", "诗雨",
];
const MALE_GIVEN: usize = 32;

/// Address codes written in ID numbers, with weights per hundred: mostly
/// Dachuan, some the old Da County code, some elsewhere in Sichuan.
const ADDRESS_CODES: [(&str, u32); 10] = [
    ("511703", 60),
    ("511721", 28),
    ("511702", 3),
    ("511722", 2),
    ("511723", 1),
    ("511724", 1),
    ("511725", 2),
    ("511781", 1),
    ("510104", 1),
    ("510722", 1),
];

/// The kind of an institution, which decides the accounts it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstitutionKind {
    Bank,
    Securities,
    Insurer,
    FundCompany,
}

/// Financial institutions; index 0 is the Rural Commercial Bank.
const INSTITUTIONS: [(&str, InstitutionKind, &str); 10] = [
    (RURAL_COMMERCIAL_BANK, InstitutionKind::Bank, "6230"),
    (
        "Agricultural Bank of China, Dazhou Branch",
        InstitutionKind::Bank,
        "6228",
    ),
    (
        "Postal Savings Bank of China, Dachuan Sub-branch",
        InstitutionKind::Bank,
        "6217",
    ),
    (
        "China Construction Bank, Dazhou Branch",
        InstitutionKind::Bank,
        "6236",
    ),
    (
        "Industrial and Commercial Bank of China, Dazhou Branch",
        InstitutionKind::Bank,
        "6222",
    ),
    ("Bank of Dazhou", InstitutionKind::Bank, "6214"),
    (
        "Huaxi Securities, Dazhou Office",
        InstitutionKind::Securities,
        "SA",
    ),
    (
        "China Life Insurance, Dazhou Branch",
        InstitutionKind::Insurer,
        "PL",
    ),
    (
        "Ping An Life Insurance, Dazhou Branch",
        InstitutionKind::Insurer,
        "PA",
    ),
    ("E Fund Management", InstitutionKind::FundCompany, "EF"),
];

fn institution_agency(institution: u8) -> Agency {
    if institution == 0 {
        Agency::RuralCommercialBank
    } else {
        Agency::FinanceOffice
    }
}

const EMPLOYERS: [&str; 12] = [
    "达州市达川区建筑安装工程有限公司",
    "四川达州钢铁集团有限责任公司",
    "达州市达川区环境卫生管理所",
    "四川明月江服装有限公司",
    "达州市翠屏食品有限公司",
    "达州市达川区宏达物业管理有限公司",
    "达川区三里坪街道社区服务中心",
    "达州市川东物流有限公司",
    "达川区石桥镇社区服务中心",
    "达州市巴山汽车运输有限公司",
    "达州市渠江建材有限公司",
    "达川区人民医院后勤服务部",
];
/// Positions in [`EMPLOYERS`] of the community service centres, which
/// employ people in public-welfare jobs.
const COMMUNITY_EMPLOYERS: [u8; 2] = [6, 8];

const PAYROLL_EMPLOYERS: [&str; 6] = [
    "达川区三里坪街道办事处",
    "达川区教育和科学技术局",
    "达川区卫生健康局",
    "达川区农业农村局",
    "达川区第二人民医院",
    "达川区石桥镇人民政府",
];

const ENTITY_WORDS: [&str; 8] = [
    "川东", "渠江", "巴山", "明月", "金垭", "宏达", "兴隆", "鑫源",
];
const ENTERPRISE_SECTORS: [&str; 6] = ["商贸", "建材", "农业开发", "物流", "餐饮管理", "建筑劳务"];
const TRADES: [&str; 8] = [
    "面馆",
    "副食店",
    "理发店",
    "农资店",
    "摩托车修理部",
    "五金店",
    "水果店",
    "小吃店",
];
const COOP_PRODUCTS: [&str; 4] = ["柑橘", "生猪", "茶叶", "蔬菜"];

const SCHOOLS: [(&str, &str); 8] = [
    ("primary", "达川区实验小学"),
    ("primary", "达川区石桥镇中心小学"),
    ("junior secondary", "达川区第四中学"),
    ("junior secondary", "达川区亭子镇中学"),
    ("senior secondary", "达川中学"),
    ("senior secondary", "达川区职业高级中学"),
    ("university", "四川文理学院"),
    ("university", "达州职业技术学院"),
];

const DISABILITY_CATEGORIES: [&str; 7] = [
    "physical",
    "visual",
    "hearing",
    "speech",
    "intellectual",
    "mental",
    "multiple",
];

const STAFF_ROLES: [&str; 3] = [
    "village committee member",
    "case worker",
    "township civil affairs officer",
];
const KINSHIPS: [&str; 4] = ["spouse", "child", "sibling", "parent"];

const PLATE_CHARS: &[u8; 34] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";

// === Population ===

/// A synthetic population: households, their members, and what the 28
/// sources know about each member.
pub struct Population {
    config: PopulationConfig,
    households: Vec<HouseholdRec>,
    persons: Vec<PersonRec>,
    holdings: Vec<Holding>,
    entities: Vec<EntityRec>,
    index: HashMap<[u8; 18], u32>,
}

impl fmt::Debug for Population {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Population")
            .field("config", &self.config)
            .field("households", &self.households.len())
            .field("persons", &self.persons.len())
            .field("records", &self.holdings.len())
            .finish()
    }
}

type SharedCache = Mutex<HashMap<PopulationConfig, Weak<Population>>>;

fn shared_cache() -> &'static SharedCache {
    static CACHE: OnceLock<SharedCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Population {
    /// Generates the population of `config`. Deterministic: the same
    /// configuration gives the same population.
    pub fn generate(config: &PopulationConfig) -> Population {
        let mut g = Generator::new(config);
        for i in 0..config.households {
            g.household(i as u32);
        }
        g.pop
    }

    /// The population of `config`, shared within the process: every
    /// simulated source built for the same seed, size and day uses the same
    /// one, generated once (and freed when none uses it any more).
    pub fn shared(config: &PopulationConfig) -> Arc<Population> {
        let mut cache = shared_cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(config).and_then(Weak::upgrade) {
            return p;
        }
        cache.retain(|_, w| w.strong_count() > 0);
        let p = Arc::new(Population::generate(config));
        cache.insert(*config, Arc::downgrade(&p));
        p
    }

    /// The configuration the population was generated from.
    pub fn config(&self) -> &PopulationConfig {
        &self.config
    }

    /// The day the population is as of.
    pub fn today(&self) -> NaiveDate {
        self.config.today
    }

    /// Number of households.
    pub fn len(&self) -> usize {
        self.households.len()
    }

    /// Whether there is no household.
    pub fn is_empty(&self) -> bool {
        self.households.is_empty()
    }

    /// Number of registered persons (active or not).
    pub fn person_count(&self) -> usize {
        self.persons.len()
    }

    /// Every household, in order.
    pub fn households(&self) -> impl ExactSizeIterator<Item = Household<'_>> + '_ {
        (0..self.households.len() as u32).map(move |index| Household { pop: self, index })
    }

    /// The household at `index` (0-based, in generation order).
    pub fn household_at(&self, index: usize) -> Option<Household<'_>> {
        (index < self.households.len()).then_some(Household {
            pop: self,
            index: index as u32,
        })
    }

    /// The household with this register number (as in
    /// `HouseholdRegistration.household_number`).
    pub fn household(&self, number: &str) -> Option<Household<'_>> {
        let rest = number.strip_prefix(DACHUAN_CODE)?;
        if rest.len() != 8 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: usize = rest.parse().ok()?;
        self.household_at(n.checked_sub(1)?)
    }

    /// The person with this resident identity number.
    pub fn person(&self, person_id: &str) -> Option<Person<'_>> {
        let key: [u8; 18] = person_id.as_bytes().try_into().ok()?;
        self.index
            .get(&key)
            .map(|&index| Person { pop: self, index })
    }

    /// The household a person is registered in.
    pub fn household_of(&self, person_id: &str) -> Option<Household<'_>> {
        self.person(person_id).map(|p| p.household())
    }

    /// The facts the source `source_id` holds about `person_id`, each with
    /// `as_of`. Empty for an unknown source, an unknown person, or a person
    /// the source has no record of. `public-security` answers every
    /// registered person (deceased and moved-out ones too) with the whole
    /// household register; the other sources know only active members.
    /// Besides the 28, the second rural bank ([`SECOND_BANK_ID`]) knows its
    /// customers.
    pub fn facts_for(
        &self,
        source_id: &str,
        person_id: &str,
        as_of: prost_types::Timestamp,
    ) -> Vec<Fact> {
        match (Agency::from_id(source_id), self.person(person_id)) {
            (Some(agency), Some(person)) => person.facts(agency, as_of),
            (None, Some(person)) if source_id == SECOND_BANK_ID => person.second_bank_facts(as_of),
            _ => Vec::new(),
        }
    }

    // --- crate-internal access for the truth ---

    pub(crate) fn person_rec(&self, index: u32) -> &PersonRec {
        &self.persons[index as usize]
    }

    pub(crate) fn holdings_of(&self, index: u32) -> &[Holding] {
        let p = &self.persons[index as usize];
        let start = p.first_holding as usize;
        &self.holdings[start..start + usize::from(p.holdings)]
    }

    fn household_rec(&self, index: u32) -> &HouseholdRec {
        &self.households[index as usize]
    }

    fn entity_code(&self, entity: u32) -> String {
        let e = &self.entities[entity as usize];
        let prefix = if i32::from(e.kind) == EntityKind::IndividualBusiness as i32 {
            "92"
        } else if i32::from(e.kind) == EntityKind::Cooperative as i32 {
            "93"
        } else {
            "91"
        };
        format!("{prefix}{DACHUAN_CODE}MA{entity:08X}")
    }

    fn entity_name(&self, entity: u32) -> String {
        let e = &self.entities[entity as usize];
        let word = ENTITY_WORDS[usize::from(e.word) % ENTITY_WORDS.len()];
        match EntityKind::try_from(i32::from(e.kind)).unwrap_or_default() {
            EntityKind::IndividualBusiness => format!(
                "达川区{}记{}",
                SURNAMES[usize::from(e.surname)],
                TRADES[usize::from(e.sector) % TRADES.len()]
            ),
            EntityKind::Cooperative => format!(
                "达川区{word}{}专业合作社",
                COOP_PRODUCTS[usize::from(e.sector) % COOP_PRODUCTS.len()]
            ),
            EntityKind::Enterprise | EntityKind::Unspecified => format!(
                "达州市{word}{}有限公司",
                ENTERPRISE_SECTORS[usize::from(e.sector) % ENTERPRISE_SECTORS.len()]
            ),
        }
    }
}

fn plate(id: u32) -> String {
    let mut chars = [0u8; 5];
    let mut v = id;
    for c in chars.iter_mut().rev() {
        *c = PLATE_CHARS[(v % 34) as usize];
        v /= 34;
    }
    format!("川S{}", std::str::from_utf8(&chars).expect("ascii"))
}

fn civil(d: NaiveDate) -> CivilDate {
    CivilDate::ymd(d.year(), d.month() as i32, d.day() as i32)
}

fn household_number(index: u32) -> String {
    format!("{DACHUAN_CODE}{:08}", index + 1)
}

// === views ===

/// A household of the population (a borrowed view).
#[derive(Clone, Copy)]
pub struct Household<'a> {
    pop: &'a Population,
    index: u32,
}

impl fmt::Debug for Household<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Household")
            .field("number", &self.number())
            .field("hukou_type", &self.hukou_type())
            .field("scenario", &self.scenario())
            .field("registered", &self.rec().size)
            .finish()
    }
}

impl<'a> Household<'a> {
    fn rec(&self) -> &'a HouseholdRec {
        self.pop.household_rec(self.index)
    }

    /// Position of the household in the population (0-based).
    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub(crate) fn population(&self) -> &'a Population {
        self.pop
    }

    /// Household register number (户号), e.g. `"51170300000001"`.
    pub fn number(&self) -> String {
        household_number(self.index)
    }

    /// GB/T 2260 code of the county where the household is registered.
    pub fn region_code(&self) -> &'static str {
        DACHUAN_CODE
    }

    /// Urban or rural registration.
    pub fn hukou_type(&self) -> HukouType {
        if self.rec().urban {
            HukouType::Urban
        } else {
            HukouType::Rural
        }
    }

    /// What the household was generated to show.
    pub fn scenario(&self) -> Scenario {
        Scenario::from_u8(self.rec().scenario)
    }

    /// The member who applies (always active).
    pub fn applicant(&self) -> Person<'a> {
        Person {
            pop: self.pop,
            index: self.rec().first_person + u32::from(self.rec().applicant),
        }
    }

    /// Everyone in the register, the head first, deceased and moved-out
    /// persons included.
    pub fn members(&self) -> impl ExactSizeIterator<Item = Person<'a>> + 'a {
        let pop = self.pop;
        let first = self.rec().first_person;
        (first..first + u32::from(self.rec().size)).map(move |index| Person { pop, index })
    }

    /// The active members.
    pub fn active_members(&self) -> impl Iterator<Item = Person<'a>> + 'a {
        self.members().filter(|p| p.is_active())
    }

    /// Ids of the active members.
    pub fn active_member_ids(&self) -> Vec<String> {
        self.active_members().map(|p| p.id().to_owned()).collect()
    }

    /// The household register as `public-security` reports it.
    pub fn registration(&self) -> HouseholdRegistration {
        HouseholdRegistration {
            household_number: self.number(),
            region_code: DACHUAN_CODE.to_owned(),
            hukou_type: self.hukou_type() as i32,
            members: self.members().map(|p| p.registered()).collect(),
        }
    }
}

/// A registered person of the population (a borrowed view).
#[derive(Clone, Copy)]
pub struct Person<'a> {
    pop: &'a Population,
    index: u32,
}

impl fmt::Debug for Person<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("relation", &self.relation())
            .field("status", &self.status())
            .finish()
    }
}

impl<'a> Person<'a> {
    fn rec(&self) -> &'a PersonRec {
        self.pop.person_rec(self.index)
    }

    /// The 18-digit resident identity number.
    pub fn id(&self) -> &'a str {
        std::str::from_utf8(&self.rec().id).expect("ids are ascii")
    }

    /// The name as registered.
    pub fn name(&self) -> String {
        let r = self.rec();
        format!(
            "{}{}",
            SURNAMES[usize::from(r.surname)],
            GIVEN_NAMES[usize::from(r.given)]
        )
    }

    /// Relation to the head of the household.
    pub fn relation(&self) -> Relation {
        Relation::try_from(i32::from(self.rec().relation)).unwrap_or_default()
    }

    /// Sex.
    pub fn sex(&self) -> Sex {
        Sex::try_from(i32::from(self.rec().sex)).unwrap_or_default()
    }

    /// Date of birth.
    pub fn birth_date(&self) -> NaiveDate {
        self.rec().birth
    }

    /// Registration status.
    pub fn status(&self) -> RegistrationStatus {
        self.rec().status()
    }

    /// Date of death or move-out; `None` while active.
    pub fn status_date(&self) -> Option<NaiveDate> {
        self.rec().status_date
    }

    /// Whether the person is an active member of the household.
    pub fn is_active(&self) -> bool {
        self.rec().is_active()
    }

    /// The household the person is registered in.
    pub fn household(&self) -> Household<'a> {
        Household {
            pop: self.pop,
            index: self.rec().household,
        }
    }

    /// Position of the person's record in the population.
    pub(crate) fn record_index(&self) -> u32 {
        self.index
    }

    fn registered(&self) -> RegisteredPerson {
        RegisteredPerson {
            person_id: self.id().to_owned(),
            name: self.name(),
            relation: i32::from(self.rec().relation),
            sex: i32::from(self.rec().sex),
            birth_date: Some(civil(self.rec().birth)),
            status: i32::from(self.rec().status),
            status_date: self.rec().status_date.map(civil),
        }
    }

    /// The facts `agency` holds about the person, each with `as_of`.
    pub fn facts(&self, agency: Agency, as_of: prost_types::Timestamp) -> Vec<Fact> {
        let mut out = Vec::new();
        let rec = self.rec();
        let fact = |record_id: String, value: Value| Fact {
            record_id,
            as_of: Some(as_of),
            value: Some(value),
        };
        if agency == Agency::PublicSecurity {
            let hh = self.household();
            out.push(fact(
                format!("PS-{}", hh.number()),
                Value::HouseholdRegistration(hh.registration()),
            ));
            return out;
        }
        if !rec.is_active() {
            return out;
        }
        match agency {
            Agency::MedicalInsurance => out.push(fact(
                format!("MI-{:08}", self.index),
                Value::MedicalInsurance(MedicalInsurance {
                    scheme: if rec.employee_scheme {
                        "urban employee".to_owned()
                    } else {
                        "urban-rural resident".to_owned()
                    },
                    out_of_pocket_12m_fen: i64::from(rec.oop_yuan) * 100,
                }),
            )),
            Agency::CivilAffairs if rec.marital != 0 => out.push(fact(
                format!("CA-MR-{:08}", self.index),
                Value::Marriage(Marriage {
                    status: i32::from(rec.marital),
                    registered: rec.marriage_date.map(civil),
                }),
            )),
            _ => {}
        }
        let first = rec.first_holding as usize;
        for (i, h) in self.pop.holdings_of(self.index).iter().enumerate() {
            if h.agency() != agency {
                continue;
            }
            let record_id = format!("{}-{:08}", agency.record_prefix(), first + i);
            out.push(fact(record_id, self.value(h, first + i)));
        }
        out
    }

    /// The deposit the second rural bank holds for about one active person
    /// in five, drawn from the seed and the person alone (so it changes
    /// nothing else in the population).
    fn second_bank_facts(&self, as_of: prost_types::Timestamp) -> Vec<Fact> {
        if !self.rec().is_active() {
            return Vec::new();
        }
        let mut h = self.pop.config.seed ^ 0x7C0F_FEE5_u64.wrapping_mul(u64::from(self.index) + 1);
        for _ in 0..3 {
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        }
        if !h.is_multiple_of(5) {
            return Vec::new();
        }
        let balance_fen = 50_000 + ((h >> 8) % 3_000_000) as i64;
        vec![Fact {
            record_id: format!("TC-{:08}", self.index),
            as_of: Some(as_of),
            value: Some(Value::FinancialAccount(FinancialAccount {
                institution: SECOND_BANK_NAME.to_owned(),
                account_ref: format!("6224****{:08}", self.index),
                account_type: AccountType::Deposit as i32,
                balance_fen,
                income_12m_fen: balance_fen / 80,
            })),
        }]
    }

    fn value(&self, h: &Holding, holding_index: usize) -> Value {
        let pop = self.pop;
        match *h {
            Holding::Vehicle {
                plate: p,
                class,
                status,
                registered,
                price_yuan,
            } => Value::Vehicle(Vehicle {
                plate: plate(p),
                vehicle_class: i32::from(class),
                registration_date: Some(civil(registered)),
                purchase_price_fen: i64::from(price_yuan) * 100,
                status: i32::from(status),
            }),
            Holding::Licence {
                plate: p,
                kind,
                valid_to,
            } => Value::OperatingLicence(OperatingLicence {
                licence_number: format!("川交运管{DACHUAN_CODE}{p:07}"),
                licence_type: i32::from(kind),
                vehicle_plate: plate(p),
                valid_to: Some(civil(valid_to)),
            }),
            Holding::Account {
                institution,
                kind,
                balance_fen,
                income_12m_fen,
            } => {
                let (name, _, bin) = INSTITUTIONS[usize::from(institution)];
                Value::FinancialAccount(FinancialAccount {
                    institution: name.to_owned(),
                    account_ref: format!("{bin}****{holding_index:08}"),
                    account_type: i32::from(kind),
                    balance_fen: i64::from(balance_fen),
                    income_12m_fen: i64::from(income_12m_fen),
                })
            }
            Holding::Outflow {
                institution,
                months,
                total_fen,
            } => Value::AccountOutflow(AccountOutflow {
                institution: INSTITUTIONS[usize::from(institution)].0.to_owned(),
                months: i32::from(months),
                total_fen: i64::from(total_fen),
            }),
            Holding::Dwelling {
                cert,
                residential,
                area_centi_m2,
                acquired,
                share_bp,
                rent_yuan,
            } => Value::Dwelling(Dwelling {
                certificate_number: format!("川({})达川区不动产权第{cert:07}号", acquired.year()),
                r#use: if residential {
                    DwellingUse::Residential as i32
                } else {
                    DwellingUse::NonResidential as i32
                },
                area_centi_m2: i64::from(area_centi_m2),
                acquired_date: Some(civil(acquired)),
                share_bp: i32::from(share_bp),
                monthly_rent_fen: i64::from(rent_yuan) * 100,
            }),
            Holding::ProvidentFund {
                contribution_fen,
                base_fen,
                balance_fen,
                loan_fen,
            } => Value::ProvidentFund(ProvidentFund {
                monthly_contribution_fen: i64::from(contribution_fen),
                contribution_base_fen: i64::from(base_fen),
                balance_fen: i64::from(balance_fen),
                loan_balance_fen: i64::from(loan_fen),
            }),
            Holding::Employment {
                status,
                employer,
                wage_fen,
                benefit_fen,
            } => Value::Employment(Employment {
                status: i32::from(status),
                employer: employer_name(employer),
                monthly_wage_fen: i64::from(wage_fen),
                unemployment_benefit_fen: i64::from(benefit_fen),
            }),
            Holding::SocialInsurance {
                base_fen,
                employer,
                pension_kind,
                pension_fen,
            } => Value::SocialInsurance(SocialInsurance {
                contribution_base_fen: i64::from(base_fen),
                employer: employer_name(employer),
                pension_kind: i32::from(pension_kind),
                monthly_pension_fen: i64::from(pension_fen),
            }),
            Holding::TaxRegistration {
                entity,
                tax_paid_fen,
            } => Value::TaxRegistration(TaxRegistration {
                taxpayer_number: pop.entity_code(entity),
                taxpayer_kind: "individual business".to_owned(),
                tax_paid_12m_fen: i64::from(tax_paid_fen),
            }),
            Holding::IncomeTax {
                year,
                wages_fen,
                labour_fen,
                withheld_fen,
            } => Value::IncomeTax(IncomeTax {
                year: i32::from(year),
                annual_wages_fen: i64::from(wages_fen),
                annual_labour_fen: i64::from(labour_fen),
                tax_withheld_fen: i64::from(withheld_fen),
            }),
            Holding::MarketEntity {
                entity,
                kind,
                role,
                capital_fen,
                active,
            } => Value::MarketEntity(MarketEntity {
                credit_code: pop.entity_code(entity),
                name: pop.entity_name(entity),
                kind: i32::from(kind),
                role: i32::from(role),
                subscribed_capital_fen: i64::from(capital_fen),
                active,
            }),
            Holding::IndividualBusiness {
                entity,
                turnover_fen,
                net_fen,
                active,
            } => Value::IndividualBusiness(IndividualBusiness {
                registration_number: pop.entity_code(entity),
                name: pop.entity_name(entity),
                annual_turnover_fen: i64::from(turnover_fen),
                monthly_net_income_fen: i64::from(net_fen),
                active,
            }),
            Holding::PublicPayroll {
                employer,
                salary_fen,
            } => Value::PublicPayroll(PublicPayroll {
                employer: PAYROLL_EMPLOYERS[usize::from(employer)].to_owned(),
                monthly_salary_fen: i64::from(salary_fen),
            }),
            Holding::ForestRight {
                area_centi_m2,
                grants_fen,
            } => Value::ForestRight(ForestRight {
                certificate_number: format!("川林证{DACHUAN_CODE}{holding_index:08}"),
                area_centi_m2: i64::from(area_centi_m2),
                grants_12m_fen: i64::from(grants_fen),
            }),
            Holding::LandContract {
                area_centi_m2,
                subsidies_fen,
                machinery,
            } => Value::LandContract(LandContract {
                contract_number: format!("{DACHUAN_CODE}CB{holding_index:08}"),
                area_centi_m2: i64::from(area_centi_m2),
                subsidies_12m_fen: i64::from(subsidies_fen),
                large_machinery: machinery,
            }),
            Holding::School {
                level,
                school,
                assistance_fen,
            } => Value::SchoolEnrolment(SchoolEnrolment {
                level: SCHOOLS[usize::from(level)].0.to_owned(),
                school: SCHOOLS[usize::from(school)].1.to_owned(),
                study_assistance_12m_fen: i64::from(assistance_fen),
            }),
            Holding::SocialAssistance {
                kind,
                monthly_fen,
                since,
            } => Value::SocialAssistance(SocialAssistance {
                assistance_type: i32::from(kind),
                monthly_fen: i64::from(monthly_fen),
                since: Some(civil(since)),
            }),
            Holding::RelatedParty { role, kinship } => Value::RelatedParty(RelatedParty {
                staff_role: STAFF_ROLES[usize::from(role)].to_owned(),
                kinship: KINSHIPS[usize::from(kinship)].to_owned(),
            }),
            Holding::Disability {
                category,
                grade,
                allowance_fen,
            } => Value::Disability(Disability {
                category: DISABILITY_CATEGORIES[usize::from(category)].to_owned(),
                grade: i32::from(grade),
                monthly_allowance_fen: i64::from(allowance_fen),
            }),
            Holding::Assistance {
                programme,
                amount_fen,
                last_paid,
            } => Value::AssistanceReceived(AssistanceReceived {
                programme: PROGRAMMES[usize::from(programme)].to_owned(),
                amount_12m_fen: i64::from(amount_fen),
                last_paid: Some(civil(last_paid)),
            }),
        }
    }
}

/// Employer index 0 means none; `n` is `EMPLOYERS[n - 1]`.
fn employer_name(employer: u8) -> String {
    match employer {
        0 => String::new(),
        n => EMPLOYERS[usize::from(n - 1)].to_owned(),
    }
}

// === generation ===

/// The failures and reviews a household is designed to show.
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    income: bool,
    money: bool,
    vehicle: bool,
    housing: bool,
    capital: bool,
    payroll: bool,
    related: bool,
    review_vehicle: bool,
    recent_purchase: bool,
    small_business: bool,
    outflow: bool,
    register: bool,
    sole_shop: bool,
}

/// A member while the household is drafted.
#[derive(Debug, Clone)]
struct MemberDraft {
    relation: Relation,
    sex: Sex,
    age: i32,
    surname: u8,
    status: RegistrationStatus,
    status_date: Option<NaiveDate>,
    marital: MaritalStatus,
    marriage_date: Option<NaiveDate>,
    student: bool,
    employee_scheme: bool,
    /// Already given a source of income (payroll, benefit, pension, wage).
    occupied: bool,
    oop_yuan: u32,
}

impl MemberDraft {
    fn active(&self) -> bool {
        self.status == RegistrationStatus::Active
    }

    fn working_age(&self) -> bool {
        self.active() && (18..=60).contains(&self.age) && !self.student
    }
}

/// A household while it is drafted.
#[derive(Debug)]
struct HouseholdDraft {
    urban: bool,
    standard: i64,
    features: Features,
    members: Vec<MemberDraft>,
    holdings: Vec<(usize, Holding)>,
}

impl HouseholdDraft {
    fn active(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].active())
            .collect()
    }

    fn n(&self) -> i64 {
        self.members.iter().filter(|m| m.active()).count() as i64
    }

    fn adults(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].active() && self.members[i].age >= 18)
            .collect()
    }

    /// The head and, when active, the spouse: the owners of the home.
    fn owners(&self) -> Vec<usize> {
        let mut o = vec![0];
        if let Some(s) = self
            .members
            .iter()
            .position(|m| m.relation == Relation::Spouse && m.active())
        {
            o.push(s);
        }
        o
    }

    fn add(&mut self, member: usize, h: Holding) {
        debug_assert!(self.members[member].active());
        self.holdings.push((member, h));
    }

    /// Counted monthly income already fixed before wages are drawn:
    /// interest, subsidies and grants.
    fn fixed_counted(&self) -> i64 {
        self.holdings
            .iter()
            .map(|(_, h)| match *h {
                Holding::Account { income_12m_fen, .. } => i64::from(income_12m_fen) / 12,
                Holding::LandContract { subsidies_fen, .. } => i64::from(subsidies_fen) / 12,
                Holding::ForestRight { grants_fen, .. } => i64::from(grants_fen) / 12,
                _ => 0,
            })
            .sum()
    }

    fn remove_dwellings(&mut self) {
        self.holdings
            .retain(|(_, h)| !matches!(h, Holding::Dwelling { .. }));
    }

    fn residential_area(&self) -> (usize, i64) {
        let mut certs = Vec::new();
        let mut area = 0;
        for (_, h) in &self.holdings {
            if let Holding::Dwelling {
                cert,
                residential: true,
                area_centi_m2,
                ..
            } = *h
                && !certs.contains(&cert)
            {
                certs.push(cert);
                area += i64::from(area_centi_m2);
            }
        }
        (certs.len(), area)
    }
}

struct Generator {
    rng: ChaCha8Rng,
    today: NaiveDate,
    pop: Population,
    next_plate: u32,
    next_cert: u32,
}

impl Generator {
    fn new(config: &PopulationConfig) -> Self {
        let persons_hint = config.households.saturating_mul(3);
        Generator {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            today: config.today,
            pop: Population {
                config: *config,
                households: Vec::with_capacity(config.households),
                persons: Vec::with_capacity(persons_hint),
                holdings: Vec::with_capacity(persons_hint.saturating_mul(4)),
                entities: Vec::new(),
                index: HashMap::with_capacity(persons_hint),
            },
            next_plate: 1,
            next_cert: 1,
        }
    }

    // --- random helpers ---

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }

    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.random_range(lo..=hi)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.random_range(0..total);
        for &(item, w) in items {
            if r < w {
                return item;
            }
            r -= w;
        }
        items[items.len() - 1].0
    }

    /// A date between `lo` and `hi` days before today.
    fn days_ago(&mut self, lo: i64, hi: i64) -> NaiveDate {
        let d = self.int(lo, hi) as u64;
        self.today - Days::new(d)
    }

    /// A date between `lo` and `hi` days after today.
    fn days_ahead(&mut self, lo: i64, hi: i64) -> NaiveDate {
        let d = self.int(lo, hi) as u64;
        self.today + Days::new(d)
    }

    /// A recent date: 3 to 24 months before today.
    fn recent(&mut self) -> NaiveDate {
        self.days_ago(92, 730)
    }

    /// An old date: 5 to `max_years` years before today.
    fn old(&mut self, max_years: i64) -> NaiveDate {
        self.days_ago(1_830, max_years.max(6) * 365)
    }

    fn birth_date(&mut self, age: i32) -> NaiveDate {
        // The birthday of this year passed 1 to 364 days ago, so the person
        // is `age` today.
        let anchor = self.days_ago(1, 364);
        let year = anchor.year() - age;
        anchor
            .with_year(year)
            .or_else(|| NaiveDate::from_ymd_opt(year, anchor.month(), 28))
            .expect("valid date")
    }

    // --- one household ---

    fn household(&mut self, index: u32) {
        let scenario = self.weighted(&Scenario::WEIGHTS);
        let mut f = Features::default();
        match scenario {
            Scenario::Clean => {}
            Scenario::IncomeOverLine => f.income = true,
            Scenario::MoneyAssets => f.money = true,
            Scenario::Vehicle => f.vehicle = true,
            Scenario::Housing => f.housing = true,
            Scenario::BusinessCapital => f.capital = true,
            Scenario::SeveralFailures => {
                let a = self.int(0, 4);
                let b = (a + self.int(1, 4)) % 5;
                for k in [a, b] {
                    match k {
                        0 => f.income = true,
                        1 => f.money = true,
                        2 => f.vehicle = true,
                        3 => f.housing = true,
                        _ => f.capital = true,
                    }
                }
            }
            Scenario::PublicPayroll => f.payroll = true,
            Scenario::RelatedParty => f.related = true,
            Scenario::ReviewVehicle => f.review_vehicle = true,
            Scenario::RecentPurchase => f.recent_purchase = true,
            Scenario::SmallBusiness => f.small_business = true,
            Scenario::LargeOutflow => f.outflow = true,
            Scenario::RegisterChange => f.register = true,
            Scenario::SoleNonResidential => f.sole_shop = true,
        }
        let urban = self.chance(0.27);
        let mut h = HouseholdDraft {
            urban,
            standard: if urban {
                URBAN_STANDARD_FEN
            } else {
                RURAL_STANDARD_FEN
            },
            features: f,
            members: Vec::new(),
            holdings: Vec::new(),
        };
        self.members(&mut h);
        self.personal(&mut h);
        self.land(&mut h);
        self.dwellings(&mut h);
        self.vehicles(&mut h);
        self.accounts(&mut h);
        self.businesses(&mut h);
        self.income(&mut h);
        self.assistance(&mut h);
        self.store(index, scenario, h);
    }

    fn members(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        let min_size = if f.payroll {
            4
        } else if f.register {
            2
        } else {
            1
        };
        let size = loop {
            let s = self.weighted(&[(1, 24), (2, 25), (3, 21), (4, 15), (5, 10), (6, 5)]);
            if s >= min_size {
                break s;
            }
        };
        let head_age = if f.payroll || f.income {
            self.int(28, 56) as i32
        } else if size == 1 {
            self.int(30, 86) as i32
        } else {
            self.int(24, 78) as i32
        };
        let head_male = self.chance(0.7);
        let head_sex = if head_male { Sex::Male } else { Sex::Female };
        let family = self.int(0, SURNAMES.len() as i64 - 1) as u8;
        let draft = |relation, sex, age, surname| MemberDraft {
            relation,
            sex,
            age,
            surname,
            status: RegistrationStatus::Active,
            status_date: None,
            marital: MaritalStatus::Unspecified,
            marriage_date: None,
            student: false,
            employee_scheme: false,
            occupied: false,
            oop_yuan: 0,
        };
        h.members
            .push(draft(Relation::Head, head_sex, head_age, family));
        let mut youngest_parent = head_age;
        let wants_spouse = size >= 4 || (size >= 2 && self.chance(0.75));
        if wants_spouse {
            let age = (head_age + self.int(-5, 5) as i32).clamp(20, 95);
            youngest_parent = youngest_parent.min(age);
            let sex = if head_male { Sex::Female } else { Sex::Male };
            let surname = self.int(0, SURNAMES.len() as i64 - 1) as u8;
            h.members.push(draft(Relation::Spouse, sex, age, surname));
        }
        // Children carry the father's family name.
        let child_surname = if head_male || !wants_spouse {
            family
        } else {
            h.members[1].surname
        };
        let (mut parents, mut siblings) = (0, 0);
        while h.members.len() < size {
            let max_child_age = (youngest_parent - 20).min(45);
            let adult_child = h
                .members
                .iter()
                .filter(|m| m.relation == Relation::Child && m.age >= 22)
                .map(|m| m.age)
                .max();
            let grandchildren = h
                .members
                .iter()
                .filter(|m| m.relation == Relation::Grandchild)
                .count();
            let children = h
                .members
                .iter()
                .filter(|m| m.relation == Relation::Child)
                .count();
            let mut options: Vec<(u8, u32)> = Vec::new();
            if max_child_age >= 0 && children < 4 {
                options.push((0, 6));
            }
            if parents < 2 && head_age + 20 <= 92 {
                options.push((1, 3));
            }
            if adult_child.is_some() && grandchildren < 2 {
                options.push((2, 3));
            }
            if siblings < 1 {
                options.push((3, 1));
            }
            if options.is_empty() {
                break;
            }
            match self.weighted(&options) {
                0 => {
                    let age = self.int(0, i64::from(max_child_age)) as i32;
                    let sex = if self.chance(0.5) {
                        Sex::Male
                    } else {
                        Sex::Female
                    };
                    h.members
                        .push(draft(Relation::Child, sex, age, child_surname));
                }
                1 => {
                    let hi = (95 - head_age).min(38);
                    let age = head_age + self.int(20, i64::from(hi)) as i32;
                    // The first parent is the head's father, the second the
                    // mother.
                    let (sex, surname) = if parents == 0 {
                        (Sex::Male, family)
                    } else {
                        (Sex::Female, self.int(0, SURNAMES.len() as i64 - 1) as u8)
                    };
                    parents += 1;
                    h.members.push(draft(Relation::Parent, sex, age, surname));
                }
                2 => {
                    let parent_age = adult_child.expect("checked");
                    let age = self.int(0, i64::from(parent_age - 22)) as i32;
                    let sex = if self.chance(0.5) {
                        Sex::Male
                    } else {
                        Sex::Female
                    };
                    h.members
                        .push(draft(Relation::Grandchild, sex, age, child_surname));
                }
                _ => {
                    let age = (head_age + self.int(-8, 8) as i32).max(16);
                    let sex = if self.chance(0.5) {
                        Sex::Male
                    } else {
                        Sex::Female
                    };
                    siblings += 1;
                    h.members.push(draft(Relation::Sibling, sex, age, family));
                }
            }
        }
        if f.register {
            // Prefer a deceased parent, then a child who moved out, then a
            // deceased spouse, then anyone else who moved out.
            let by = |rel: Relation, min_age: i32| {
                h.members
                    .iter()
                    .position(|m| m.relation == rel && m.age >= min_age)
            };
            let (who, deceased) = if let Some(i) = by(Relation::Parent, 0) {
                (i, true)
            } else if let Some(i) = by(Relation::Child, 18) {
                (i, false)
            } else if let Some(i) = by(Relation::Spouse, 0) {
                (i, true)
            } else {
                (h.members.len() - 1, false)
            };
            if who != 0 {
                let (status, date) = if deceased {
                    (RegistrationStatus::Deceased, self.days_ago(60, 900))
                } else {
                    (RegistrationStatus::MovedOut, self.days_ago(60, 1_200))
                };
                h.members[who].status = status;
                h.members[who].status_date = Some(date);
            }
        }
    }

    /// Marriage, school, disability, medical insurance.
    fn personal(&mut self, h: &mut HouseholdDraft) {
        let has_spouse = h.members.iter().any(|m| m.relation == Relation::Spouse);
        let spouse_deceased = h
            .members
            .iter()
            .any(|m| m.relation == Relation::Spouse && !m.active());
        let parents_both = h
            .members
            .iter()
            .filter(|m| m.relation == Relation::Parent && m.active())
            .count()
            == 2;
        let younger = h
            .members
            .iter()
            .filter(|m| matches!(m.relation, Relation::Head | Relation::Spouse))
            .map(|m| m.age)
            .min()
            .unwrap_or(20);
        let couple_married = if younger > 21 {
            Some(self.days_ago(365, i64::from(younger - 20) * 365))
        } else {
            None
        };
        for i in 0..h.members.len() {
            if !h.members[i].active() {
                continue;
            }
            let age = h.members[i].age;
            let relation = h.members[i].relation;
            // Marriage registration.
            let (marital, date) = match relation {
                Relation::Head | Relation::Spouse if has_spouse && !spouse_deceased => {
                    (MaritalStatus::Married, couple_married)
                }
                Relation::Head if spouse_deceased => (MaritalStatus::Widowed, couple_married),
                Relation::Parent if parents_both => (
                    MaritalStatus::Married,
                    Some(self.days_ago(365 * 30, 365 * i64::from((age - 20).max(31)))),
                ),
                Relation::Parent => (
                    MaritalStatus::Widowed,
                    Some(self.days_ago(365 * 30, 365 * i64::from((age - 20).max(31)))),
                ),
                _ if age >= 22 => {
                    let r = self.rng.random::<f64>();
                    if age >= 60 && r < 0.6 {
                        (
                            MaritalStatus::Widowed,
                            Some(self.days_ago(365 * 10, 365 * i64::from((age - 20).max(11)))),
                        )
                    } else if r < 0.75 {
                        (MaritalStatus::Single, None)
                    } else {
                        (
                            MaritalStatus::Divorced,
                            Some(self.days_ago(200, 365 * i64::from((age - 21).max(1)))),
                        )
                    }
                }
                _ => (MaritalStatus::Unspecified, None),
            };
            // A single person has no registration at civil affairs.
            let (marital, date) = if marital == MaritalStatus::Single {
                (MaritalStatus::Unspecified, None)
            } else {
                (marital, date)
            };
            h.members[i].marital = marital;
            h.members[i].marriage_date = date;

            // School.
            let schoolable = !matches!(relation, Relation::Head | Relation::Spouse);
            if schoolable && (6..=22).contains(&age) {
                let p = if age <= 17 { 0.97 } else { 0.45 };
                if self.chance(p) {
                    let level_base: u8 = match age {
                        6..=11 => 0,
                        12..=14 => 2,
                        15..=17 => 4,
                        _ => 6,
                    };
                    let school = level_base + self.int(0, 1) as u8;
                    let assistance = if self.chance(0.35) {
                        match level_base {
                            0 => 100_000,
                            2 => 125_000,
                            4 => 200_000,
                            _ => self.int(30, 40) as u32 * 10_000,
                        }
                    } else {
                        0
                    };
                    h.members[i].student = true;
                    h.add(
                        i,
                        Holding::School {
                            level: level_base,
                            school,
                            assistance_fen: assistance,
                        },
                    );
                }
            }

            // Disability.
            let p = if age >= 60 { 0.12 } else { 0.04 };
            if self.chance(p) {
                let category = self.int(0, DISABILITY_CATEGORIES.len() as i64 - 1) as u8;
                let grade = self.int(1, 4) as u8;
                let allowance = match grade {
                    1 | 2 => self.int(80, 160) as u32 * 100,
                    _ if self.chance(0.5) => 5_000,
                    _ => 0,
                };
                h.add(
                    i,
                    Holding::Disability {
                        category,
                        grade,
                        allowance_fen: allowance,
                    },
                );
                if category == 0 && age >= 18 && self.chance(0.25) {
                    let plate = self.plate();
                    let registered = self.days_ago(200, 3_000);
                    let price = self.int(30, 90) as u32 * 100;
                    h.add(
                        i,
                        Holding::Vehicle {
                            plate,
                            class: VehicleClass::Disability as u8,
                            status: VehicleStatus::Registered as u8,
                            registered,
                            price_yuan: price,
                        },
                    );
                }
                h.members[i].oop_yuan += self.int(500, 6_000) as u32;
            }

            // Medical spending of the last 12 months.
            let r = self.rng.random::<f64>();
            h.members[i].oop_yuan += if r < 0.7 {
                self.int(0, 1_500) as u32
            } else if r < 0.95 {
                self.int(1_500, 8_000) as u32
            } else {
                self.int(8_000, 40_000) as u32
            };
        }
    }

    /// Land contracts and forest rights of rural households.
    fn land(&mut self, h: &mut HouseholdDraft) {
        if h.urban {
            return;
        }
        if self.chance(0.92) {
            let mu = self.uniform(1.0, 6.0);
            let area = (mu * 666.67) as u32 * 100;
            let subsidies = (mu * self.uniform(100.0, 150.0)) as u32 * 100;
            h.add(
                0,
                Holding::LandContract {
                    area_centi_m2: area,
                    subsidies_fen: subsidies,
                    machinery: false,
                },
            );
        }
        if self.chance(0.3) {
            let area = self.int(1_300, 13_000) as u32 * 100;
            let grants = if self.chance(0.4) {
                0
            } else {
                self.int(50, 600) as u32 * 100
            };
            h.add(
                0,
                Holding::ForestRight {
                    area_centi_m2: area,
                    grants_fen: grants,
                },
            );
        }
    }

    fn plate(&mut self) -> u32 {
        let p = self.next_plate;
        self.next_plate += 1;
        p
    }

    fn add_dwelling(
        &mut self,
        h: &mut HouseholdDraft,
        owners: &[usize],
        residential: bool,
        area_centi_m2: i64,
        acquired: NaiveDate,
    ) {
        let cert = self.next_cert;
        self.next_cert += 1;
        let share = (10_000 / owners.len()) as u16;
        for &o in owners {
            h.add(
                o,
                Holding::Dwelling {
                    cert,
                    residential,
                    area_centi_m2: area_centi_m2.max(1_000) as u32,
                    acquired,
                    share_bp: share,
                    rent_yuan: 0,
                },
            );
        }
    }

    fn home_owners(&mut self, h: &HouseholdDraft) -> Vec<usize> {
        let owners = h.owners();
        if owners.len() == 2 && self.chance(0.4) {
            owners
        } else {
            vec![0]
        }
    }

    fn dwellings(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        let n = h.n();
        // The home most households have.
        let owners = self.home_owners(h);
        if h.urban {
            if self.chance(0.5) {
                let area = self.int(40, 95) * 100;
                let acquired = self.old(25);
                self.add_dwelling(h, &owners, true, area, acquired);
            }
        } else if self.chance(0.88) {
            let area = self.int(70, 180) * 100;
            let acquired = self.old(40);
            self.add_dwelling(h, &owners, true, area, acquired);
        }
        // A second small dwelling within the average area.
        if n >= 3 && self.chance(0.05) {
            let (count, area) = h.residential_area();
            let room = 3_600 * n - area;
            if count == 1 && room >= 2_000 {
                let a2 = self.int(2_000, room.min(6_000));
                let acquired = self.old(30);
                self.add_dwelling(h, &[0], true, a2, acquired);
            }
        }
        if f.housing {
            let variant = self.int(0, 2);
            match variant {
                0 => {
                    // Three residential dwellings.
                    loop {
                        let (count, _) = h.residential_area();
                        if count >= 3 {
                            break;
                        }
                        let area = self.int(40, 120) * 100;
                        let acquired = self.old(30);
                        let owners = self.home_owners(h);
                        self.add_dwelling(h, &owners, true, area, acquired);
                    }
                }
                1 => {
                    // Two residential dwellings, large for the household.
                    h.remove_dwellings();
                    let total = n * self.int(50, 90) * 100;
                    let first = total * self.int(50, 65) / 100;
                    let owners = self.home_owners(h);
                    let a1 = self.old(30);
                    let a2 = self.old(20);
                    self.add_dwelling(h, &owners, true, first, a1);
                    self.add_dwelling(h, &[0], true, total - first, a2);
                }
                _ => {
                    // A shop besides a home.
                    if h.residential_area().0 == 0 {
                        let owners = self.home_owners(h);
                        let area = self.int(50, 110) * 100;
                        let acquired = self.old(30);
                        self.add_dwelling(h, &owners, true, area, acquired);
                    }
                    let area = self.int(20, 120) * 100;
                    let acquired = self.old(20);
                    self.add_dwelling(h, &[0], false, area, acquired);
                }
            }
        }
        if f.recent_purchase {
            h.remove_dwellings();
            let owners = self.home_owners(h);
            let area = self.int(50, 110) * 100;
            let acquired = self.recent();
            self.add_dwelling(h, &owners, true, area, acquired);
            if n >= 3 && self.chance(0.25) {
                let room = 3_600 * n - area;
                if room >= 2_000 {
                    let a2 = self.int(2_000, room.min(6_000));
                    let acquired = self.old(30);
                    self.add_dwelling(h, &[0], true, a2, acquired);
                }
            }
        }
        if f.sole_shop {
            h.remove_dwellings();
            let area = self.int(25, 80) * 100;
            let acquired = self.old(25);
            self.add_dwelling(h, &[0], false, area, acquired);
        }
    }

    fn vehicle(
        &mut self,
        h: &mut HouseholdDraft,
        owner: usize,
        class: VehicleClass,
        price_yuan: i64,
    ) {
        let plate = self.plate();
        let registered = if self.chance(0.4) {
            self.recent()
        } else {
            self.days_ago(800, 3_650)
        };
        h.add(
            owner,
            Holding::Vehicle {
                plate,
                class: class as u8,
                status: VehicleStatus::Registered as u8,
                registered,
                price_yuan: price_yuan as u32,
            },
        );
    }

    fn some_adult(&mut self, h: &HouseholdDraft) -> usize {
        let adults = h.adults();
        if adults.is_empty() || self.chance(0.7) {
            0
        } else {
            self.pick(&adults)
        }
    }

    fn vehicles(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        // Motorcycles are exempt.
        if self.chance(if h.urban { 0.15 } else { 0.4 }) {
            let owner = self.some_adult(h);
            let price = self.int(30, 90) * 100;
            self.vehicle(h, owner, VehicleClass::Motorcycle, price);
        }
        // A car scrapped long ago.
        if self.chance(0.03) {
            let plate = self.plate();
            let registered = self.days_ago(9 * 365, 18 * 365);
            let price = self.int(30, 80) * 1_000;
            h.add(
                0,
                Holding::Vehicle {
                    plate,
                    class: VehicleClass::Car as u8,
                    status: VehicleStatus::Deregistered as u8,
                    registered,
                    price_yuan: price as u32,
                },
            );
        }
        // An operating licence that expired.
        if self.chance(0.02) {
            let plate = self.plate();
            let kind = self.pick(&[LicenceType::Taxi, LicenceType::Freight]);
            let valid_to = self.days_ago(60, 1_500);
            h.add(
                0,
                Holding::Licence {
                    plate,
                    kind: kind as u8,
                    valid_to,
                },
            );
        }
        if f.vehicle {
            let owner = self.some_adult(h);
            let r = self.rng.random::<f64>();
            if r < 0.6 {
                let price = self.int(40, 180) * 1_000;
                self.vehicle(h, owner, VehicleClass::Car, price);
            } else if r < 0.75 {
                let price = self.int(60, 250) * 1_000;
                self.vehicle(h, owner, VehicleClass::Truck, price);
            } else if r < 0.78 {
                let price = self.int(20, 90) * 1_000;
                self.vehicle(h, owner, VehicleClass::Ship, price);
            } else {
                let kind =
                    self.pick(&[LicenceType::Taxi, LicenceType::Freight, LicenceType::Coach]);
                let valid_to = self.days_ahead(60, 900);
                let plate = if self.chance(0.5) && kind != LicenceType::Coach {
                    // The licensed vehicle is the household's own.
                    let class = if kind == LicenceType::Taxi {
                        VehicleClass::Car
                    } else {
                        VehicleClass::Truck
                    };
                    let price = self.int(50, 150) * 1_000;
                    self.vehicle(h, owner, class, price);
                    self.next_plate - 1
                } else {
                    self.plate()
                };
                h.add(
                    owner,
                    Holding::Licence {
                        plate,
                        kind: kind as u8,
                        valid_to,
                    },
                );
            }
        }
        if f.review_vehicle {
            let land = h
                .holdings
                .iter()
                .position(|(_, x)| matches!(x, Holding::LandContract { .. }));
            match land {
                Some(i) if self.chance(0.35) => {
                    if let (owner, Holding::LandContract { machinery, .. }) = &mut h.holdings[i] {
                        *machinery = true;
                        let owner = *owner;
                        let price = self.int(20, 80) * 1_000;
                        self.vehicle(h, owner, VehicleClass::FarmMachinery, price);
                    }
                }
                _ => {
                    let owner = self.some_adult(h);
                    let price = self.int(5, 15) * 1_000;
                    self.vehicle(h, owner, VehicleClass::Tricycle, price);
                }
            }
        }
    }

    fn account(
        &mut self,
        h: &mut HouseholdDraft,
        owner: usize,
        institution: u8,
        kind: AccountType,
        balance: i64,
    ) {
        let rate_bp = match kind {
            AccountType::Deposit => self.int(100, 175),
            AccountType::WealthManagement => self.int(250, 350),
            AccountType::Fund => self.int(0, 400),
            AccountType::Securities => self.int(0, 200),
            AccountType::Insurance | AccountType::Unspecified => 0,
        };
        let balance = balance.clamp(0, i64::from(u32::MAX / 2));
        h.add(
            owner,
            Holding::Account {
                institution,
                kind: kind as u8,
                balance_fen: balance as u32,
                income_12m_fen: (balance * rate_bp / 10_000) as u32,
            },
        );
    }

    fn institution_for(&mut self, kind: AccountType) -> u8 {
        let want = match kind {
            AccountType::Securities => InstitutionKind::Securities,
            AccountType::Insurance => InstitutionKind::Insurer,
            AccountType::Fund if self.chance(0.5) => InstitutionKind::FundCompany,
            _ => InstitutionKind::Bank,
        };
        if want == InstitutionKind::Bank && self.chance(0.55) {
            return 0;
        }
        let candidates: Vec<u8> = (1..INSTITUTIONS.len() as u8)
            .filter(|&i| INSTITUTIONS[usize::from(i)].1 == want)
            .collect();
        self.pick(&candidates)
    }

    fn accounts(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        let s = h.standard;
        let n = h.n();
        let mut holders = h.adults();
        if holders.is_empty() {
            holders.push(0);
        }
        if self.chance(0.9) || f.money || f.outflow {
            let u = self.rng.random::<f64>();
            let total = (u * u * 12.0 * (s * n) as f64) as i64;
            let k = self.int(1, 3);
            let mut left = total;
            for j in 0..k {
                let part = if j == k - 1 {
                    left
                } else {
                    left * self.int(30, 70) / 100
                };
                left -= part;
                let owner = if j == 0 { 0 } else { self.pick(&holders) };
                let kind = self.weighted(&[
                    (AccountType::Deposit, 80),
                    (AccountType::Insurance, 8),
                    (AccountType::WealthManagement, 5),
                    (AccountType::Fund, 4),
                    (AccountType::Securities, 3),
                ]);
                let institution = self.institution_for(kind);
                self.account(h, owner, institution, kind, part);
            }
        }
        if f.money {
            let per_capita = (self.uniform(28.0, 80.0) * s as f64) as i64;
            let total = per_capita * n;
            let owner = self.pick(&holders);
            let kind = self.weighted(&[
                (AccountType::Deposit, 60),
                (AccountType::WealthManagement, 25),
                (AccountType::Insurance, 15),
            ]);
            let institution = self.institution_for(kind);
            self.account(h, owner, institution, kind, total);
        }
        // Outflows of the last six months, per person and bank.
        let mut pairs: Vec<(usize, u8)> = Vec::new();
        for (m, x) in &h.holdings {
            if let Holding::Account { institution, .. } = *x
                && INSTITUTIONS[usize::from(institution)].1 == InstitutionKind::Bank
                && !pairs.contains(&(*m, institution))
            {
                pairs.push((*m, institution));
            }
        }
        if f.outflow && pairs.is_empty() {
            let balance = self.int(500, 5_000) * 100;
            self.account(h, 0, 0, AccountType::Deposit, balance);
            pairs.push((0, 0));
        }
        let big = if f.outflow {
            Some(self.int(0, pairs.len() as i64 - 1) as usize)
        } else {
            None
        };
        for (j, (m, institution)) in pairs.into_iter().enumerate() {
            let total = if big == Some(j) {
                (self.uniform(15.0, 40.0) * (s * n) as f64) as i64
            } else {
                (self.uniform(0.1, 1.5) * s as f64) as i64
            };
            h.add(
                m,
                Holding::Outflow {
                    institution,
                    months: 6,
                    total_fen: total as u32,
                },
            );
        }
    }

    fn entity(&mut self, kind: EntityKind, surname: u8) -> u32 {
        let id = self.pop.entities.len() as u32;
        let word = self.int(0, ENTITY_WORDS.len() as i64 - 1) as u8;
        let sector = self.int(0, 7) as u8;
        self.pop.entities.push(EntityRec {
            kind: kind as u8,
            surname,
            word,
            sector,
        });
        id
    }

    fn getihu(&mut self, h: &mut HouseholdDraft, owner: usize, net_fen: i64, active: bool) {
        let entity = self.entity(EntityKind::IndividualBusiness, h.members[owner].surname);
        let turnover = net_fen * 12 * self.int(3, 6);
        let capital = self.int(3, 50) * 100_000;
        h.add(
            owner,
            Holding::IndividualBusiness {
                entity,
                turnover_fen: turnover as u32,
                net_fen: net_fen as u32,
                active,
            },
        );
        h.add(
            owner,
            Holding::MarketEntity {
                entity,
                kind: EntityKind::IndividualBusiness as u8,
                role: EntityRole::Operator as u8,
                capital_fen: capital as u32,
                active,
            },
        );
        let tax = if active && turnover > 10_000_000 {
            turnover / 100
        } else {
            0
        };
        h.add(
            owner,
            Holding::TaxRegistration {
                entity,
                tax_paid_fen: tax as u32,
            },
        );
    }

    fn businesses(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        // A business closed long ago.
        if self.chance(0.03) {
            let owner = self.some_adult(h);
            let net = self.int(500, 2_000) * 100;
            self.getihu(h, owner, net, false);
        }
        if self.chance(0.01) {
            let owner = self.some_adult(h);
            let entity = self.entity(EntityKind::Enterprise, h.members[owner].surname);
            let capital = self.int(20, 100) * 1_000_000;
            h.add(
                owner,
                Holding::MarketEntity {
                    entity,
                    kind: EntityKind::Enterprise as u8,
                    role: EntityRole::Shareholder as u8,
                    capital_fen: capital as u32,
                    active: false,
                },
            );
        }
        if f.capital {
            let adults = h.adults();
            let entity = self.entity(EntityKind::Enterprise, h.members[0].surname);
            if adults.len() >= 2 && self.chance(0.3) {
                // Two shareholders, each under the limit, together over it.
                for &m in adults.iter().take(2) {
                    let capital = self.int(55, 95) * 100_000;
                    h.add(
                        m,
                        Holding::MarketEntity {
                            entity,
                            kind: EntityKind::Enterprise as u8,
                            role: EntityRole::Shareholder as u8,
                            capital_fen: capital as u32,
                            active: true,
                        },
                    );
                }
            } else {
                let owner = self.some_adult(h);
                let capital = self.int(15, 300) * 1_000_000;
                let role = self.pick(&[EntityRole::LegalRepresentative, EntityRole::Shareholder]);
                h.add(
                    owner,
                    Holding::MarketEntity {
                        entity,
                        kind: EntityKind::Enterprise as u8,
                        role: role as u8,
                        capital_fen: capital as u32,
                        active: true,
                    },
                );
            }
        }
    }

    fn income_tax(
        &mut self,
        h: &mut HouseholdDraft,
        m: usize,
        wages: i64,
        labour: i64,
        older: f64,
    ) {
        let year = self.today.year() - 1;
        let withheld = |annual: i64| ((annual - 6_000_000).max(0) * 3 / 100) as u32;
        h.add(
            m,
            Holding::IncomeTax {
                year: year as u16,
                wages_fen: wages as u32,
                labour_fen: labour as u32,
                withheld_fen: withheld(wages + labour),
            },
        );
        let (w2, l2) = (
            (wages as f64 * older) as i64,
            (labour as f64 * older) as i64,
        );
        h.add(
            m,
            Holding::IncomeTax {
                year: (year - 1) as u16,
                wages_fen: w2 as u32,
                labour_fen: l2 as u32,
                withheld_fen: withheld(w2 + l2),
            },
        );
    }

    /// Gives member `m` a monthly wage of `w` fen with the evidence of one
    /// kind of work.
    fn wage(&mut self, h: &mut HouseholdDraft, m: usize, w: i64) {
        h.members[m].occupied = true;
        let r = self.rng.random::<f64>();
        // Formal jobs pay at least about the minimum wage; public-welfare
        // jobs pay a modest fixed amount; anything else is flexible or
        // migrant work.
        let formal = w >= 150_000 && r < 0.35;
        let welfare_job = (60_000..=200_000).contains(&w) && r >= 0.85;
        if formal {
            // Formal employment: employment, social insurance, income tax,
            // sometimes provident fund.
            let employer = self.int(1, EMPLOYERS.len() as i64) as u8;
            let registered = if self.chance(0.3) { w * 8 / 10 } else { w };
            h.add(
                m,
                Holding::Employment {
                    status: EmploymentStatus::Employed as u8,
                    employer,
                    wage_fen: registered as u32,
                    benefit_fen: 0,
                },
            );
            h.add(
                m,
                Holding::SocialInsurance {
                    base_fen: w as u32,
                    employer,
                    pension_kind: PensionKind::Unspecified as u8,
                    pension_fen: 0,
                },
            );
            let older = self.uniform(0.75, 1.05);
            self.income_tax(h, m, w * 12, 0, older);
            if self.chance(0.4) {
                let contribution = w * 24 / 100;
                let balance = contribution * self.int(6, 60);
                let loan = if self.chance(0.15) {
                    self.int(50, 300) * 100_000
                } else {
                    0
                };
                h.add(
                    m,
                    Holding::ProvidentFund {
                        contribution_fen: contribution as u32,
                        base_fen: w as u32,
                        balance_fen: balance as u32,
                        loan_fen: loan as u32,
                    },
                );
            }
            h.members[m].employee_scheme = true;
        } else if !welfare_job && r < 0.6 {
            // Flexible employment, sometimes with some labour remuneration
            // declared.
            h.add(
                m,
                Holding::Employment {
                    status: EmploymentStatus::Flexible as u8,
                    employer: 0,
                    wage_fen: w as u32,
                    benefit_fen: 0,
                },
            );
            if self.chance(0.2) {
                let labour = (w as f64 * 12.0 * self.uniform(0.3, 0.9)) as i64;
                let older = self.uniform(0.5, 1.2);
                self.income_tax(h, m, 0, labour, older);
            }
        } else if !welfare_job {
            // Migrant work seen only in income tax; the year before may have
            // been better or worse.
            let older = self.uniform(0.5, 1.6);
            self.income_tax(h, m, 0, w * 12, older);
        } else {
            // A public-welfare job.
            let employer = self.pick(&COMMUNITY_EMPLOYERS) + 1;
            h.add(
                m,
                Holding::Employment {
                    status: EmploymentStatus::PublicWelfareJob as u8,
                    employer,
                    wage_fen: w as u32,
                    benefit_fen: 0,
                },
            );
        }
    }

    fn pension(&mut self, h: &mut HouseholdDraft, m: usize, kind: PensionKind, monthly: i64) {
        h.members[m].occupied = true;
        h.add(
            m,
            Holding::SocialInsurance {
                base_fen: 0,
                employer: 0,
                pension_kind: kind as u8,
                pension_fen: monthly as u32,
            },
        );
    }

    /// Draws the household's counted income towards a target per capita:
    /// below the standard for most, over it for those designed to fail on
    /// income.
    fn income(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        let s = h.standard;
        let n = h.n();
        let t = if f.income {
            self.uniform(1.2, 2.6)
        } else if f.payroll {
            self.uniform(0.6, 0.85)
        } else if f.small_business {
            self.uniform(0.35, 0.85)
        } else {
            self.uniform(0.08, 0.85)
        };
        let budget = (t * (s * n) as f64) as i64;
        let mut r = budget - h.fixed_counted();

        if f.payroll {
            let candidates: Vec<usize> = (0..h.members.len())
                .filter(|&i| h.members[i].working_age())
                .collect();
            if !candidates.is_empty() {
                let m = candidates[0];
                let salary = (((r.max(0) as f64 * self.uniform(0.7, 0.95) / 0.9) as i64) / 1_000
                    * 1_000)
                    .max(60_000);
                let employer = self.int(0, PAYROLL_EMPLOYERS.len() as i64 - 1) as u8;
                h.members[m].occupied = true;
                h.members[m].employee_scheme = true;
                h.add(
                    m,
                    Holding::PublicPayroll {
                        employer,
                        salary_fen: salary as u32,
                    },
                );
                let older = self.uniform(0.85, 1.0);
                self.income_tax(h, m, salary * 12, 0, older);
                r -= salary * 9 / 10;
            }
        }
        if f.small_business {
            let owner = self.some_adult(h);
            if self.chance(0.25) {
                let entity = self.entity(EntityKind::Cooperative, h.members[owner].surname);
                let capital = self.int(5, 30) * 100_000;
                h.add(
                    owner,
                    Holding::MarketEntity {
                        entity,
                        kind: EntityKind::Cooperative as u8,
                        role: EntityRole::Shareholder as u8,
                        capital_fen: capital as u32,
                        active: true,
                    },
                );
            } else {
                let net = ((r.max(0) as f64 * self.uniform(0.4, 0.9)) as i64) / 100 * 100;
                self.getihu(h, owner, net, true);
                h.members[owner].occupied = true;
                r -= net;
            }
        }
        // Pensions of the elderly.
        for m in 0..h.members.len() {
            let d = &h.members[m];
            if !d.active() || d.age < 60 || d.occupied {
                continue;
            }
            if h.urban && r >= 120_000 && self.chance(if f.income { 0.7 } else { 0.5 }) {
                let p = (self.int(120_000, 300_000).min(r)) / 100 * 100;
                self.pension(h, m, PensionKind::Employee, p);
                r -= p;
            } else {
                let p = if h.urban {
                    self.int(150, 300) * 100
                } else {
                    self.int(103, 200) * 100
                };
                self.pension(h, m, PensionKind::Resident, p);
            }
        }
        // Unemployment registration.
        if h.urban {
            for m in 0..h.members.len() {
                if !h.members[m].working_age() || h.members[m].occupied {
                    continue;
                }
                if r >= 90_000 && self.chance(0.12) {
                    let b = self.int(90_000, 130_000).min(r) / 100 * 100;
                    h.members[m].occupied = true;
                    h.add(
                        m,
                        Holding::Employment {
                            status: EmploymentStatus::Unemployed as u8,
                            employer: 0,
                            wage_fen: 0,
                            benefit_fen: b as u32,
                        },
                    );
                    r -= b;
                } else if self.chance(0.06) {
                    h.add(
                        m,
                        Holding::Employment {
                            status: EmploymentStatus::Unemployed as u8,
                            employer: 0,
                            wage_fen: 0,
                            benefit_fen: 0,
                        },
                    );
                }
            }
        }
        // Rent from a solely owned home.
        let p_rent = if f.income { 0.25 } else { 0.1 };
        if r >= 30_000 && self.chance(p_rent) {
            let sole = h.holdings.iter().position(|(_, x)| {
                matches!(
                    x,
                    Holding::Dwelling {
                        residential: true,
                        share_bp: 10_000,
                        ..
                    }
                )
            });
            if let Some(i) = sole {
                let rent = self.int(200, 900).min(r / 100);
                if let (_, Holding::Dwelling { rent_yuan, .. }) = &mut h.holdings[i] {
                    *rent_yuan = rent as u16;
                }
                r -= rent * 100;
            }
        }
        // Wages for the rest.
        if r >= 20_000 {
            let mut earners: Vec<usize> = (0..h.members.len())
                .filter(|&i| h.members[i].working_age() && !h.members[i].occupied)
                .collect();
            let k = if r > 250_000 { 2 } else { 1 };
            earners.truncate(k);
            let total = r * 10 / 9;
            match earners.as_slice() {
                [] => {}
                [m] => {
                    let w = total / 1_000 * 1_000;
                    self.wage(h, *m, w.max(1_000));
                }
                [a, b, ..] => {
                    let share = self.int(40, 60);
                    let wa = total * share / 100 / 1_000 * 1_000;
                    let wb = (total - wa) / 1_000 * 1_000;
                    self.wage(h, *a, wa.max(1_000));
                    self.wage(h, *b, wb.max(1_000));
                }
            }
        }
    }

    /// Assistance already received, and kinship with deciding staff.
    fn assistance(&mut self, h: &mut HouseholdDraft) {
        let f = h.features;
        let s = h.standard;
        let n = h.n();
        let active = h.active();
        let alone_elderly = n == 1 && h.members[0].age >= 60;
        let r = self.rng.random::<f64>();
        let assisted = if alone_elderly && r < 0.3 {
            Some((AssistanceType::ExtremePoverty, s * self.int(110, 140) / 100))
        } else if r < 0.2 {
            Some((
                AssistanceType::Dibao,
                s * n * self.int(20, 60) / 100 / 100 * 100,
            ))
        } else if r < 0.23 {
            Some((AssistanceType::LowIncome, self.int(100, 300) * 100))
        } else {
            None
        };
        if let Some((kind, monthly)) = assisted {
            let since = self.days_ago(180, 1_800);
            h.add(
                0,
                Holding::SocialAssistance {
                    kind: kind as u8,
                    monthly_fen: monthly as u32,
                    since,
                },
            );
        }
        if self.chance(0.15) {
            let m = self.pick(&active);
            let d = &h.members[m];
            let programme: u8 = if d.age < 18 {
                if self.chance(0.6) { 5 } else { 0 }
            } else if d.occupied && self.chance(0.4) {
                1
            } else if d.sex == Sex::Female && self.chance(0.3) {
                3
            } else {
                self.pick(&[0, 2, 4, 6, 7])
            };
            let amount = self.int(200, 3_000) * 100;
            let last_paid = self.days_ago(20, 330);
            h.add(
                m,
                Holding::Assistance {
                    programme,
                    amount_fen: amount as u32,
                    last_paid,
                },
            );
        }
        if f.related {
            let adults = h.adults();
            let m = if adults.is_empty() {
                0
            } else {
                self.pick(&adults)
            };
            let role = self.int(0, STAFF_ROLES.len() as i64 - 1) as u8;
            let kinship = self.int(0, KINSHIPS.len() as i64 - 1) as u8;
            h.add(m, Holding::RelatedParty { role, kinship });
        }
    }

    fn address_code(&mut self) -> &'static str {
        self.weighted(&ADDRESS_CODES)
    }

    fn store(&mut self, index: u32, scenario: Scenario, mut h: HouseholdDraft) {
        let first_person = self.pop.persons.len() as u32;
        let applicant = match h
            .members
            .iter()
            .position(|m| m.relation == Relation::Spouse && m.active())
        {
            Some(s) if self.chance(0.12) => s as u8,
            _ => 0,
        };
        h.holdings.sort_by_key(|(m, _)| *m);
        let mut next = 0;
        for (i, d) in h.members.iter().enumerate() {
            let birth = self.birth_date(d.age);
            let code = self.address_code();
            let id = self.unique_id(code, birth, d.sex);
            let first_holding = self.pop.holdings.len() as u32;
            let mut count = 0u16;
            while next < h.holdings.len() && h.holdings[next].0 == i {
                self.pop.holdings.push(h.holdings[next].1);
                next += 1;
                count += 1;
            }
            let given = if d.sex == Sex::Male {
                self.int(0, MALE_GIVEN as i64 - 1)
            } else {
                self.int(MALE_GIVEN as i64, GIVEN_NAMES.len() as i64 - 1)
            } as u16;
            let person = self.pop.persons.len() as u32;
            self.pop.index.insert(id, person);
            self.pop.persons.push(PersonRec {
                id,
                household: index,
                first_holding,
                holdings: count,
                given,
                surname: d.surname,
                relation: d.relation as u8,
                sex: d.sex as u8,
                status: d.status as u8,
                marital: d.marital as u8,
                employee_scheme: d.employee_scheme,
                birth,
                status_date: d.status_date,
                marriage_date: d.marriage_date,
                oop_yuan: d.oop_yuan,
            });
        }
        self.pop.households.push(HouseholdRec {
            first_person,
            size: h.members.len() as u8,
            applicant,
            urban: h.urban,
            scenario: scenario.to_u8(),
        });
    }

    /// A resident identity number not yet used: the sequence number's
    /// parity follows the sex, and a taken number moves to the next one of
    /// the same parity.
    fn unique_id(&mut self, code: &str, birth: NaiveDate, sex: Sex) -> [u8; 18] {
        let mut seq = self.int(0, 499) as u32 * 2 + u32::from(sex == Sex::Male);
        for _ in 0..500 {
            let id = resident_id::compose(code, birth.year(), birth.month(), birth.day(), seq);
            let key: [u8; 18] = id.as_bytes().try_into().expect("18 characters");
            if !self.pop.index.contains_key(&key) {
                return key;
            }
            seq = (seq + 2) % 1_000;
        }
        // Every sequence of the day is taken for this code (only possible
        // with millions of persons): use the Dachuan code of the day after.
        let next = if code == DACHUAN_CODE {
            "511721"
        } else {
            DACHUAN_CODE
        };
        self.unique_id(next, birth, sex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(households: usize) -> PopulationConfig {
        PopulationConfig {
            seed: 7,
            households,
            today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
        }
    }

    fn ts() -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }
    }

    #[test]
    fn records_stay_small() {
        assert!(std::mem::size_of::<Holding>() <= 20);
        assert!(std::mem::size_of::<PersonRec>() <= 56);
    }

    #[test]
    fn same_config_same_population() {
        let a = Population::generate(&config(300));
        let b = Population::generate(&config(300));
        assert_eq!(a.person_count(), b.person_count());
        for (ha, hb) in a.households().zip(b.households()) {
            assert_eq!(ha.registration(), hb.registration());
            for (pa, pb) in ha.members().zip(hb.members()) {
                for agency in Agency::ALL {
                    assert_eq!(pa.facts(agency, ts()), pb.facts(agency, ts()));
                }
            }
        }
        let c = Population::generate(&PopulationConfig {
            seed: 8,
            ..config(300)
        });
        assert_ne!(
            a.household_at(0).unwrap().registration(),
            c.household_at(0).unwrap().registration()
        );
    }

    #[test]
    fn ids_are_valid_unique_and_match_sex_and_birth() {
        let pop = Population::generate(&config(2_000));
        let today = pop.today();
        let mut seen = std::collections::HashSet::new();
        for hh in pop.households() {
            for p in hh.members() {
                let id = p.id();
                resident_id::validate(id, (today.year(), today.month(), today.day()))
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                assert!(seen.insert(id.to_owned()), "{id} twice");
                let seq: u32 = id[14..17].parse().unwrap();
                assert_eq!(seq % 2 == 1, p.sex() == Sex::Male, "{id}");
                assert_eq!(&id[6..14], p.birth_date().format("%Y%m%d").to_string());
                assert_eq!(pop.person(id).unwrap().id(), id);
            }
        }
        assert_eq!(seen.len(), pop.person_count());
    }

    #[test]
    fn households_are_plausible() {
        let pop = Population::generate(&config(2_000));
        let today = pop.today();
        let age = |p: &Person<'_>| today.years_since(p.birth_date()).unwrap() as i32;
        let mut urban = 0;
        for hh in pop.households() {
            let members: Vec<_> = hh.members().collect();
            assert!((1..=6).contains(&members.len()), "{hh:?}");
            assert_eq!(members[0].relation(), Relation::Head);
            assert!(hh.applicant().is_active());
            assert!(hh.active_members().count() >= 1);
            let head = age(&members[0]);
            for p in &members[1..] {
                match p.relation() {
                    Relation::Child => assert!(head - age(p) >= 20, "{hh:?}"),
                    Relation::Parent => assert!(age(p) - head >= 20, "{hh:?}"),
                    Relation::Spouse => assert_ne!(p.sex(), members[0].sex()),
                    _ => {}
                }
            }
            for p in &members {
                assert_eq!(p.is_active(), p.status_date().is_none());
            }
            urban += usize::from(hh.hukou_type() == HukouType::Urban);
            assert_eq!(pop.household(&hh.number()).unwrap().index(), hh.index());
        }
        let share = urban as f64 / pop.len() as f64;
        assert!((0.22..0.32).contains(&share), "urban share {share}");
    }

    #[test]
    fn public_security_lists_the_whole_register_for_everyone() {
        let pop = Population::generate(&config(1_000));
        let hh = pop
            .households()
            .find(|h| h.members().any(|p| !p.is_active()))
            .expect("a household with a deceased or moved-out member");
        for p in hh.members() {
            let facts = pop.facts_for("public-security", p.id(), ts());
            assert_eq!(facts.len(), 1);
            let Some(Value::HouseholdRegistration(reg)) = &facts[0].value else {
                panic!("not a registration");
            };
            assert_eq!(reg.members.len(), hh.members().count());
            assert_eq!(reg.household_number, hh.number());
            assert_eq!(facts[0].record_id, format!("PS-{}", hh.number()));
            if !p.is_active() {
                // Only the register knows inactive persons.
                for agency in &Agency::ALL[1..] {
                    assert!(p.facts(*agency, ts()).is_empty());
                }
            }
        }
        assert!(
            pop.facts_for("public-security", "110105194912310021", ts())
                .is_empty()
        );
        let someone = hh.applicant().id();
        assert!(pop.facts_for("no-such-source", someone, ts()).is_empty());
    }

    #[test]
    fn facts_come_from_the_right_sources() {
        let pop = Population::generate(&config(1_000));
        let mut kinds_seen = std::collections::HashSet::new();
        let mut rcb = 0;
        let mut other = 0;
        for hh in pop.households() {
            for p in hh.active_members() {
                for agency in Agency::ALL {
                    for fact in p.facts(agency, ts()) {
                        let v = fact.value.as_ref().unwrap();
                        assert!(agency.fact_kinds().contains(&v.kind()), "{agency}");
                        assert!(fact.record_id.starts_with(agency.record_prefix()));
                        kinds_seen.insert(v.kind());
                        if let Value::FinancialAccount(a) = v {
                            if agency == Agency::RuralCommercialBank {
                                assert_eq!(a.institution, RURAL_COMMERCIAL_BANK);
                                rcb += 1;
                            } else {
                                assert_ne!(a.institution, RURAL_COMMERCIAL_BANK);
                                other += 1;
                            }
                        }
                    }
                }
            }
        }
        // Every kind of fact occurs somewhere.
        for a in Agency::ALL {
            for k in a.fact_kinds() {
                assert!(kinds_seen.contains(k), "{k:?} never generated");
            }
        }
        assert!(rcb > 100 && other > 100, "rcb {rcb} other {other}");
    }

    #[test]
    fn shared_populations_are_shared() {
        let c = config(50);
        let a = Population::shared(&c);
        let b = Population::shared(&c);
        assert!(Arc::ptr_eq(&a, &b));
        let d = Population::shared(&PopulationConfig { seed: 99, ..c });
        assert!(!Arc::ptr_eq(&a, &d));
    }

    #[test]
    fn plates_are_dazhou_plates() {
        assert_eq!(plate(1), "川S00001");
        assert_eq!(plate(34), "川S00010");
    }
}
