//! The household's assets: one item per holding, totals per category, and the
//! money assets the policy counts, in total and per capita.

use hedui_proto::v1::{
    AccountType, AssetCategory, AssetItem, AssetTotal, Assets, DwellingUse, VehicleStatus,
};

use super::{Context, Found, amount, civil, div, enum_words, facts, indicators, yuan};

/// Folds the assets of the active members.
pub(super) fn fold_assets(ctx: &Context<'_>) -> Assets {
    let mut items: Vec<AssetItem> = Vec::new();
    let mut money: i64 = 0;

    for a in ctx.account_views() {
        let account_type = a.account_type;
        let category = match account_type {
            AccountType::Deposit => AssetCategory::Deposits,
            AccountType::Securities | AccountType::Fund => AssetCategory::Securities,
            AccountType::Insurance => AssetCategory::Insurance,
            AccountType::WealthManagement => AssetCategory::WealthManagement,
            AccountType::Unspecified => AssetCategory::Unspecified,
        };
        let balance = a.balance_fen;
        if ctx
            .policy
            .assets
            .money_account_types
            .contains(&account_type)
        {
            money = money.saturating_add(balance);
        }
        let mut item = asset(category, a.words(), balance, 0, a.found);
        item.provenance = Some(a.provenance());
        items.push(item);
    }

    for (f, d) in &ctx.dwellings {
        let (category, what) = match d.r#use() {
            DwellingUse::NonResidential => (
                AssetCategory::NonResidentialBuilding,
                "non-residential building",
            ),
            // A building of unstated use is counted as a dwelling.
            DwellingUse::Residential | DwellingUse::Unspecified => {
                (AssetCategory::Dwelling, "residential building")
            }
        };
        let mut description = format!("{what}, certificate {}", d.certificate_number);
        if let Some(acquired) = civil(d.acquired_date.as_ref()) {
            description.push_str(&format!(", acquired {acquired}"));
        }
        items.push(asset(category, description, 0, amount(d.area_centi_m2), *f));
    }

    for (f, v) in ctx
        .vehicles
        .iter()
        .filter(|(_, v)| v.status() == VehicleStatus::Registered)
    {
        let class = v.vehicle_class();
        let mut description = format!(
            "{} {}",
            enum_words(class.as_str_name(), "VEHICLE_CLASS_"),
            v.plate
        );
        if let Some(registered) = civil(v.registration_date.as_ref()) {
            description.push_str(&format!(", registered {registered}"));
        }
        let mut item = asset(
            AssetCategory::Vehicle,
            description,
            amount(v.purchase_price_fen),
            0,
            *f,
        );
        item.vehicle_class = class as i32;
        items.push(item);
    }

    for (f, p) in facts!(ctx, ProvidentFund) {
        let description = format!(
            "housing provident fund (loan balance {} yuan)",
            yuan(amount(p.loan_balance_fen))
        );
        items.push(asset(
            AssetCategory::ProvidentFund,
            description,
            amount(p.balance_fen),
            0,
            f,
        ));
    }

    for (f, e) in ctx.entities.iter().filter(|(_, e)| e.active) {
        let description = format!(
            "{} {} ({}), {}",
            enum_words(e.kind().as_str_name(), "ENTITY_KIND_"),
            e.name,
            e.credit_code,
            enum_words(e.role().as_str_name(), "ENTITY_ROLE_")
        );
        items.push(asset(
            AssetCategory::Business,
            description,
            amount(e.subscribed_capital_fen),
            0,
            *f,
        ));
    }

    for (f, l) in facts!(ctx, LandContract) {
        let mut description = format!("contracted land {}", l.contract_number);
        if l.large_machinery {
            description.push_str(", with large farm machinery");
        }
        items.push(asset(
            AssetCategory::Land,
            description,
            0,
            amount(l.area_centi_m2),
            f,
        ));
    }

    for (f, r) in facts!(ctx, ForestRight) {
        let description = format!("forest right {}", r.certificate_number);
        items.push(asset(
            AssetCategory::Forest,
            description,
            0,
            amount(r.area_centi_m2),
            f,
        ));
    }

    let totals = totals(&items);
    let input_kinds = indicators::asset_input_kinds();
    let missing: Vec<String> = ctx
        .missing_serving(&input_kinds)
        .iter()
        .map(|o| o.spec.id.clone())
        .collect();
    // Assets of a withheld kind are unknown: not complete either.
    let withheld = ctx.withheld_of(&input_kinds);
    Assets {
        items,
        totals,
        money_assets_fen: money,
        money_assets_per_capita_fen: div(money, ctx.n as i64),
        complete: missing.is_empty() && withheld.is_empty(),
        missing_sources: missing,
    }
}

fn asset(
    category: AssetCategory,
    description: String,
    value_fen: i64,
    area_centi_m2: i64,
    found: Found<'_>,
) -> AssetItem {
    AssetItem {
        category: category as i32,
        description,
        value_fen,
        area_centi_m2,
        vehicle_class: 0,
        provenance: Some(found.provenance()),
    }
}

/// Totals of every category present, in category order.
fn totals(items: &[AssetItem]) -> Vec<AssetTotal> {
    let mut totals: Vec<AssetTotal> = Vec::new();
    for item in items {
        match totals.iter_mut().find(|t| t.category == item.category) {
            Some(t) => {
                t.count += 1;
                t.value_fen = t.value_fen.saturating_add(item.value_fen);
                t.area_centi_m2 = t.area_centi_m2.saturating_add(item.area_centi_m2);
            }
            None => totals.push(AssetTotal {
                category: item.category,
                count: 1,
                value_fen: item.value_fen,
                area_centi_m2: item.area_centi_m2,
            }),
        }
    }
    totals.sort_by_key(|t| t.category);
    totals
}
