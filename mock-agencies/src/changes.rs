//! Changes that happen at the simulated departments while they run: a car
//! registered to a person, a dwelling bought, a job taken, a pension
//! started, a business registered, a death, a large bank outflow. A change
//! becomes part of what the department answers from then on (an overlay on
//! the generated population) and is published as a `hedui.v1.ChangeEvent`,
//! so that a broker watching the household re-verifies it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use hedui_proto::v1::{
    AccountOutflow, ChangeEvent, ChangeKind, CivilDate, Dwelling, DwellingUse, Employment,
    EmploymentStatus, EntityKind, EntityRole, Fact, MarketEntity, PensionKind, RegistrationStatus,
    SocialInsurance, Vehicle, VehicleClass, VehicleStatus, fact::Value,
};

/// The source that records a kind of change.
pub fn source_of(kind: ChangeKind) -> Option<&'static str> {
    Some(match kind {
        ChangeKind::Unspecified => return None,
        ChangeKind::VehicleRegistered => "traffic-police",
        ChangeKind::DwellingAcquired => "housing-management",
        ChangeKind::EmploymentStarted => "employment",
        ChangeKind::PensionStarted => "social-insurance",
        ChangeKind::BusinessRegistered => "market-supervision",
        ChangeKind::Death => "public-security",
        ChangeKind::LargeOutflow => "rural-commercial-bank",
    })
}

/// What one source answers beyond the generated population.
#[derive(Debug, Default)]
pub struct Overlay {
    facts: RwLock<HashMap<String, Vec<Fact>>>,
    deceased: RwLock<HashSet<String>>,
}

impl Overlay {
    /// Adds the changes to what the source knows of `person_id`.
    pub fn apply(&self, person_id: &str, facts: &mut Vec<Fact>) {
        let deceased = self.deceased.read().unwrap_or_else(|e| e.into_inner());
        if !deceased.is_empty() {
            for f in facts.iter_mut() {
                if let Some(Value::HouseholdRegistration(r)) = &mut f.value {
                    for m in &mut r.members {
                        if deceased.contains(&m.person_id) {
                            m.status = RegistrationStatus::Deceased as i32;
                        }
                    }
                }
            }
        }
        if let Some(extra) = self
            .facts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(person_id)
        {
            facts.extend(extra.iter().cloned());
        }
    }

    fn add(&self, person_id: &str, fact: Fact) {
        self.facts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(person_id.to_owned())
            .or_default()
            .push(fact);
    }

    fn die(&self, person_id: &str) {
        self.deceased
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(person_id.to_owned());
    }
}

/// Numbers the changes of a process.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Makes `kind` happen to `person_id` in `overlay` (the overlay of the
/// source [`source_of`] names) and returns the event to publish.
pub fn happen(overlay: &Overlay, person_id: &str, kind: ChangeKind) -> Option<ChangeEvent> {
    let source_id = source_of(kind)?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let today = chrono::DateTime::<chrono::Utc>::from(now).date_naive();
    let date = Some(CivilDate {
        year: chrono::Datelike::year(&today),
        month: chrono::Datelike::month(&today) as i32,
        day: chrono::Datelike::day(&today) as i32,
    });
    let record_id = format!("CHG-{n:08}");
    let value = match kind {
        ChangeKind::Unspecified => return None,
        ChangeKind::VehicleRegistered => Some(Value::Vehicle(Vehicle {
            plate: format!("川S{:05}", n % 100_000),
            vehicle_class: VehicleClass::Car as i32,
            registration_date: date,
            purchase_price_fen: 12_000_000,
            status: VehicleStatus::Registered as i32,
        })),
        ChangeKind::DwellingAcquired => Some(Value::Dwelling(Dwelling {
            certificate_number: format!("川(2026)达川区不动产权第9{n:06}号"),
            r#use: DwellingUse::Residential as i32,
            area_centi_m2: 12_000,
            acquired_date: date,
            share_bp: 10_000,
            monthly_rent_fen: 0,
        })),
        ChangeKind::EmploymentStarted => Some(Value::Employment(Employment {
            status: EmploymentStatus::Employed as i32,
            employer: "达州市新材料有限公司".into(),
            monthly_wage_fen: 450_000,
            unemployment_benefit_fen: 0,
        })),
        ChangeKind::PensionStarted => Some(Value::SocialInsurance(SocialInsurance {
            contribution_base_fen: 0,
            employer: String::new(),
            pension_kind: PensionKind::Employee as i32,
            monthly_pension_fen: 320_000,
        })),
        ChangeKind::BusinessRegistered => Some(Value::MarketEntity(MarketEntity {
            credit_code: format!("91511703MA{n:08}"),
            name: "达川区新开商贸有限公司".into(),
            kind: EntityKind::Enterprise as i32,
            role: EntityRole::LegalRepresentative as i32,
            subscribed_capital_fen: 50_000_000,
            active: true,
        })),
        ChangeKind::LargeOutflow => Some(Value::AccountOutflow(AccountOutflow {
            institution: "Dachuan Rural Commercial Bank".into(),
            months: 12,
            total_fen: 60_000_000,
        })),
        ChangeKind::Death => None,
    };
    match value {
        Some(value) => overlay.add(
            person_id,
            Fact {
                record_id: record_id.clone(),
                as_of: Some(now.into()),
                value: Some(value),
            },
        ),
        None => overlay.die(person_id),
    }
    Some(ChangeEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        source_id: source_id.to_owned(),
        person_id: person_id.to_owned(),
        kind: kind as i32,
        record_id,
        occurred_at: Some(now.into()),
    })
}
