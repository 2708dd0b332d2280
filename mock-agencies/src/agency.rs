//! The 28 simulated agencies: their catalog ids, the fact kinds each one
//! reports and the prefix of its record ids.

use hedui_proto::v1::FactKind;

/// One of the 28 sources of Dachuan District that the simulation knows
/// about, in catalog order (`adapters/catalog.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Agency {
    /// District Public Security Bureau: household registration.
    PublicSecurity,
    /// Municipal Traffic Police: vehicles.
    TrafficPolice,
    /// District Transport Bureau: operating licences.
    Transport,
    /// District Finance Office: accounts at every institution other than
    /// the Rural Commercial Bank.
    FinanceOffice,
    /// District Housing Management Bureau: dwellings.
    HousingManagement,
    /// Municipal Housing Provident Fund Management Office.
    ProvidentFund,
    /// District Employment Agency.
    Employment,
    /// District Social Insurance Bureau.
    SocialInsurance,
    /// District Medical Insurance Bureau.
    MedicalInsurance,
    /// District Local Taxation Bureau: tax registrations.
    LocalTax,
    /// District Bureau of Commerce: individual businesses.
    Commerce,
    /// District Financial Bureau: public payroll.
    FinancialBureau,
    /// District Forestry Bureau: forest rights.
    Forestry,
    /// District Agricultural Bureau: land contracts.
    Agriculture,
    /// District Education and Science Department: school enrolment.
    Education,
    /// District Civil Affairs Bureau: assistance, marriage, related parties.
    CivilAffairs,
    /// Benefit and Assistance Center.
    BenefitCenter,
    /// District Disabled Persons' Federation.
    DisabledFederation,
    /// District Federation of Trade Unions.
    TradeUnions,
    /// District Health and Family Planning Commission.
    HealthCommission,
    /// District Women's Federation.
    WomensFederation,
    /// District Justice Bureau.
    Justice,
    /// District Youth League Committee.
    YouthLeague,
    /// District Red Cross Society.
    RedCross,
    /// District Work Committee for Offices Directly under the CCCPC.
    PartyWorkCommittee,
    /// State Taxation Bureau: individual income tax.
    StateTax,
    /// Market Supervision Administration: market entities.
    MarketSupervision,
    /// Dachuan Rural Commercial Bank: its own accounts only.
    RuralCommercialBank,
}

impl Agency {
    /// Every agency, in catalog order.
    pub const ALL: [Agency; 28] = [
        Agency::PublicSecurity,
        Agency::TrafficPolice,
        Agency::Transport,
        Agency::FinanceOffice,
        Agency::HousingManagement,
        Agency::ProvidentFund,
        Agency::Employment,
        Agency::SocialInsurance,
        Agency::MedicalInsurance,
        Agency::LocalTax,
        Agency::Commerce,
        Agency::FinancialBureau,
        Agency::Forestry,
        Agency::Agriculture,
        Agency::Education,
        Agency::CivilAffairs,
        Agency::BenefitCenter,
        Agency::DisabledFederation,
        Agency::TradeUnions,
        Agency::HealthCommission,
        Agency::WomensFederation,
        Agency::Justice,
        Agency::YouthLeague,
        Agency::RedCross,
        Agency::PartyWorkCommittee,
        Agency::StateTax,
        Agency::MarketSupervision,
        Agency::RuralCommercialBank,
    ];

    /// The agencies that report programme assistance
    /// (`ASSISTANCE_RECEIVED`), in the order of [`PROGRAMMES`].
    pub const PROGRAMME_AGENCIES: [Agency; 8] = [
        Agency::BenefitCenter,
        Agency::TradeUnions,
        Agency::HealthCommission,
        Agency::WomensFederation,
        Agency::Justice,
        Agency::YouthLeague,
        Agency::RedCross,
        Agency::PartyWorkCommittee,
    ];

    /// The source id in the catalog, e.g. `"public-security"`.
    pub fn id(self) -> &'static str {
        match self {
            Agency::PublicSecurity => "public-security",
            Agency::TrafficPolice => "traffic-police",
            Agency::Transport => "transport",
            Agency::FinanceOffice => "finance-office",
            Agency::HousingManagement => "housing-management",
            Agency::ProvidentFund => "provident-fund",
            Agency::Employment => "employment",
            Agency::SocialInsurance => "social-insurance",
            Agency::MedicalInsurance => "medical-insurance",
            Agency::LocalTax => "local-tax",
            Agency::Commerce => "commerce",
            Agency::FinancialBureau => "financial-bureau",
            Agency::Forestry => "forestry",
            Agency::Agriculture => "agriculture",
            Agency::Education => "education",
            Agency::CivilAffairs => "civil-affairs",
            Agency::BenefitCenter => "benefit-center",
            Agency::DisabledFederation => "disabled-federation",
            Agency::TradeUnions => "trade-unions",
            Agency::HealthCommission => "health-commission",
            Agency::WomensFederation => "womens-federation",
            Agency::Justice => "justice",
            Agency::YouthLeague => "youth-league",
            Agency::RedCross => "red-cross",
            Agency::PartyWorkCommittee => "party-work-committee",
            Agency::StateTax => "state-tax",
            Agency::MarketSupervision => "market-supervision",
            Agency::RuralCommercialBank => "rural-commercial-bank",
        }
    }

    /// The agency with this source id.
    pub fn from_id(id: &str) -> Option<Agency> {
        Agency::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The fact kinds the agency reports (as in the catalog).
    pub fn fact_kinds(self) -> &'static [FactKind] {
        match self {
            Agency::PublicSecurity => &[FactKind::HouseholdRegistration],
            Agency::TrafficPolice => &[FactKind::Vehicle],
            Agency::Transport => &[FactKind::OperatingLicence],
            Agency::FinanceOffice | Agency::RuralCommercialBank => {
                &[FactKind::FinancialAccount, FactKind::AccountOutflow]
            }
            Agency::HousingManagement => &[FactKind::Dwelling],
            Agency::ProvidentFund => &[FactKind::ProvidentFund],
            Agency::Employment => &[FactKind::Employment],
            Agency::SocialInsurance => &[FactKind::SocialInsurance],
            Agency::MedicalInsurance => &[FactKind::MedicalInsurance],
            Agency::LocalTax => &[FactKind::TaxRegistration],
            Agency::Commerce => &[FactKind::IndividualBusiness],
            Agency::FinancialBureau => &[FactKind::PublicPayroll],
            Agency::Forestry => &[FactKind::ForestRight],
            Agency::Agriculture => &[FactKind::LandContract],
            Agency::Education => &[FactKind::SchoolEnrolment],
            Agency::CivilAffairs => &[
                FactKind::SocialAssistance,
                FactKind::Marriage,
                FactKind::RelatedParty,
            ],
            Agency::DisabledFederation => &[FactKind::Disability],
            Agency::BenefitCenter
            | Agency::TradeUnions
            | Agency::HealthCommission
            | Agency::WomensFederation
            | Agency::Justice
            | Agency::YouthLeague
            | Agency::RedCross
            | Agency::PartyWorkCommittee => &[FactKind::AssistanceReceived],
            Agency::StateTax => &[FactKind::IncomeTax],
            Agency::MarketSupervision => &[FactKind::MarketEntity],
        }
    }

    /// The prefix of the agency's record ids, e.g. `"TP"` in `"TP-00000123"`.
    pub fn record_prefix(self) -> &'static str {
        match self {
            Agency::PublicSecurity => "PS",
            Agency::TrafficPolice => "TP",
            Agency::Transport => "TR",
            Agency::FinanceOffice => "FO",
            Agency::HousingManagement => "HM",
            Agency::ProvidentFund => "PF",
            Agency::Employment => "EM",
            Agency::SocialInsurance => "SI",
            Agency::MedicalInsurance => "MI",
            Agency::LocalTax => "LT",
            Agency::Commerce => "CM",
            Agency::FinancialBureau => "FB",
            Agency::Forestry => "FR",
            Agency::Agriculture => "AG",
            Agency::Education => "ED",
            Agency::CivilAffairs => "CA",
            Agency::BenefitCenter => "BC",
            Agency::DisabledFederation => "DF",
            Agency::TradeUnions => "TU",
            Agency::HealthCommission => "HC",
            Agency::WomensFederation => "WF",
            Agency::Justice => "JU",
            Agency::YouthLeague => "YL",
            Agency::RedCross => "RC",
            Agency::PartyWorkCommittee => "PW",
            Agency::StateTax => "ST",
            Agency::MarketSupervision => "MS",
            Agency::RuralCommercialBank => "RCB",
        }
    }
}

impl std::fmt::Display for Agency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// The programmes whose assistance the programme agencies report, in the
/// order of [`Agency::PROGRAMME_AGENCIES`].
pub const PROGRAMMES: [&str; 8] = [
    "ten livelihood assistance: housing repair",
    "needy worker assistance",
    "health poverty-alleviation fund",
    "poor mothers assistance",
    "legal aid",
    "adolescent assistance (spring bud)",
    "humanitarian medical assistance",
    "needy party member assistance",
];

#[cfg(test)]
mod tests {
    use hedui_adapters::catalog::Catalog;

    use super::*;

    #[test]
    fn agencies_match_the_catalog() {
        let catalog = Catalog::dachuan();
        let ids: Vec<&str> = catalog.iter().map(|s| s.id.as_str()).collect();
        let ours: Vec<&str> = Agency::ALL.iter().map(|a| a.id()).collect();
        assert_eq!(ids, ours);
        for a in Agency::ALL {
            let spec = catalog.get(a.id()).unwrap();
            assert_eq!(spec.fact_kinds, a.fact_kinds(), "{a}");
            assert_eq!(Agency::from_id(a.id()), Some(a));
        }
        assert_eq!(Agency::from_id("nobody"), None);
    }
}
