//! What a purpose may see: purpose binding and data minimisation
//! (`[purposes.<name>]` in the configuration).
//!
//! A [`Disclosure`] says, for one purpose, which sources may be asked
//! (`sources`), which fact kinds may reach the caller (`fact_kinds`) and
//! which of those the caller sees only as totals per person (`aggregate`).
//! The verification path applies it to every source:
//!
//! - a source outside `sources`, or none of whose kinds is allowed, is not
//!   asked (nor read from the cache): `NOT_QUERIED`, naming the key;
//! - any other source is asked only for its allowed kinds, and its answer
//!   is filtered again ([`Disclosure::restrict`]) before it is folded,
//!   streamed, stored or recorded, so a fact of a withheld kind never
//!   leaves the broker, whether it came from the source or from the cache;
//! - the outcome keeps only the allowed kinds, and lists the withheld ones
//!   (`SourceResult.withheld_fact_kinds`): the fold makes every indicator
//!   that needs a withheld kind `INCONCLUSIVE`, never "none found";
//! - aggregated kinds reach the fold whole (so that an account reported by
//!   two sources is still counted once) and are folded into one total per
//!   member, source and account type, without account or record
//!   identifiers (`SourceResult.aggregated_fact_kinds`).

use std::sync::Arc;

use hedui_adapters::catalog::SourceSpec;
use hedui_proto::v1::{Fact, FactKind, SourceStatus, fact};

use super::household::SourceOutcome;

/// The fact kinds a purpose may see only as totals: per-account facts
/// (`FinancialAccount`, summed per member, source and account type) and
/// per-institution outflows (`AccountOutflow`, summed per member and
/// source).
pub const AGGREGATABLE: [FactKind; 2] = [FactKind::FinancialAccount, FactKind::AccountOutflow];

/// A fact kind as the configuration and the audit log write it: the
/// `hedui.v1.FactKind` name without its prefix, in lower case, e.g.
/// `financial_account`.
pub fn kind_name(kind: FactKind) -> String {
    static NAMES: std::sync::LazyLock<ShortNames> =
        std::sync::LazyLock::new(|| ShortNames::of("FACT_KIND_", FactKind::as_str_name));
    NAMES.name(kind as i32)
}

/// The names of a protobuf enum's values as the broker writes them (the
/// value's name without the enum's prefix, in lower case), made once:
/// names are written for every source of every verification.
pub(crate) struct ShortNames(Vec<Option<String>>);

impl ShortNames {
    /// Values from 0 up to this are named.
    const MAX: i32 = 255;

    /// The names of the values of `E`, whose names (`as_str_name`) start
    /// with `prefix`.
    pub(crate) fn of<E: TryFrom<i32>>(prefix: &str, as_str_name: fn(&E) -> &'static str) -> Self {
        ShortNames(
            (0..=Self::MAX)
                .map(|v| {
                    E::try_from(v).ok().map(|e| {
                        as_str_name(&e)
                            .trim_start_matches(prefix)
                            .to_ascii_lowercase()
                    })
                })
                .collect(),
        )
    }

    /// The name of `value`, or `unknown_<value>` for a value the enum does
    /// not define.
    pub(crate) fn name(&self, value: i32) -> String {
        usize::try_from(value)
            .ok()
            .and_then(|i| self.0.get(i))
            .and_then(Option::as_deref)
            .map_or_else(|| format!("unknown_{value}"), str::to_owned)
    }
}

/// The fact kind named `name` (as [`kind_name`] writes it; upper case, as
/// the source catalog writes kinds, is accepted too).
pub fn parse_kind(name: &str) -> Option<FactKind> {
    FactKind::from_str_name(&format!("FACT_KIND_{}", name.to_ascii_uppercase()))
        .filter(|k| *k != FactKind::Unspecified)
}

/// Every fact kind, in `FactKind` order.
pub fn all_kinds() -> Vec<FactKind> {
    (1..).map_while(|i| FactKind::try_from(i).ok()).collect()
}

/// Names of these kinds, comma-separated.
pub fn kind_names(kinds: &[FactKind]) -> String {
    kinds
        .iter()
        .map(|k| kind_name(*k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one purpose may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// The purpose's name, e.g. `education_assistance`, for the reasons
    /// given in reports.
    pub purpose: String,
    /// The sources that may be asked; `None`: every source.
    pub sources: Option<Vec<String>>,
    /// The fact kinds that may reach the caller; `None`: every kind.
    pub fact_kinds: Option<Vec<FactKind>>,
    /// Allowed kinds the caller sees only as totals per person (a subset
    /// of [`AGGREGATABLE`]).
    pub aggregate: Vec<FactKind>,
}

impl Disclosure {
    /// No restriction at all, for the purpose `purpose`.
    pub fn unrestricted(purpose: &str) -> Self {
        Self {
            purpose: purpose.to_owned(),
            sources: None,
            fact_kinds: None,
            aggregate: Vec::new(),
        }
    }

    /// Whether facts of `kind` may reach the caller.
    pub fn allows_kind(&self, kind: FactKind) -> bool {
        self.fact_kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }

    /// Whether the source `id` may be asked.
    pub fn allows_source(&self, id: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == id))
    }

    /// The kinds `spec` serves that the purpose may not see.
    pub fn withheld(&self, spec: &SourceSpec) -> Vec<FactKind> {
        spec.fact_kinds
            .iter()
            .copied()
            .filter(|k| !self.allows_kind(*k))
            .collect()
    }

    /// The kinds `spec` serves that the purpose sees as totals only.
    pub fn aggregated(&self, spec: &SourceSpec) -> Vec<FactKind> {
        spec.fact_kinds
            .iter()
            .copied()
            .filter(|k| self.allows_kind(*k) && self.aggregate.contains(k))
            .collect()
    }

    /// `spec` serving only the kinds the purpose may see: what the source
    /// is asked for, and what the fold may read from it. The same `spec`
    /// when the purpose may see all of its kinds.
    pub fn narrowed(&self, spec: &Arc<SourceSpec>) -> Arc<SourceSpec> {
        if spec.fact_kinds.iter().all(|k| self.allows_kind(*k)) {
            return Arc::clone(spec);
        }
        let mut narrowed = SourceSpec::clone(spec);
        narrowed.fact_kinds.retain(|k| self.allows_kind(*k));
        Arc::new(narrowed)
    }

    /// Why the source `spec` is not asked for this purpose, naming the
    /// configuration key; `None` when it is asked.
    pub fn not_asked(&self, spec: &SourceSpec) -> Option<String> {
        let name = &self.purpose;
        if !self.allows_source(&spec.id) {
            return Some(format!(
                "not asked: not needed for the purpose {name} (purposes.{name}.sources)"
            ));
        }
        if !spec.fact_kinds.iter().any(|k| self.allows_kind(*k)) {
            return Some(format!(
                "not asked: the purpose {name} may see none of its fact kinds ({}) \
                 (purposes.{name}.fact_kinds)",
                kind_names(&spec.fact_kinds)
            ));
        }
        None
    }

    /// The outcome of the source `original` as this purpose may see it:
    /// its spec narrowed to the allowed kinds, the facts of other kinds
    /// dropped (whatever the source or the cache gave), the withheld and
    /// aggregated kinds listed on its result, and its fact count and
    /// status recounted from what is left (an aggregated kind counts one
    /// fact per total). Applying it twice changes nothing more.
    pub fn restrict(
        &self,
        original: &Arc<SourceSpec>,
        mut outcome: SourceOutcome,
    ) -> SourceOutcome {
        outcome.spec = self.narrowed(original);
        let allowed = &outcome.spec.fact_kinds;
        let shown = |f: &hedui_proto::v1::Fact| {
            f.value
                .as_ref()
                .is_some_and(|v| allowed.contains(&v.kind()))
        };
        let mut dropped = 0usize;
        // The answers may be the cache's: copied only when a fact must go.
        if !outcome.answers.iter().all(|a| a.facts.iter().all(shown)) {
            for answer in std::sync::Arc::make_mut(&mut outcome.answers) {
                let before = answer.facts.len();
                answer.facts.retain(shown);
                dropped += before - answer.facts.len();
            }
        }
        if dropped > 0 {
            tracing::warn!(
                source = %original.id,
                purpose = %self.purpose,
                facts = dropped,
                "dropped facts of kinds withheld for the purpose"
            );
        }
        let withheld = self.withheld(original);
        let aggregated = self.aggregated(original);
        outcome.result.withheld_fact_kinds = withheld.iter().map(|k| *k as i32).collect();
        outcome.result.aggregated_fact_kinds = aggregated.iter().map(|k| *k as i32).collect();
        if outcome.answered() {
            let count = disclosed_count(&outcome, &aggregated);
            outcome.result.fact_count = u32::try_from(count).unwrap_or(u32::MAX);
            outcome.result.status = if count > 0 {
                SourceStatus::Ok
            } else {
                SourceStatus::NoRecord
            } as i32;
        }
        outcome
    }
}

/// What groups facts of an aggregated kind into one total: the member, the
/// kind and, for accounts, the account type.
fn total_key(person_id: &str, fact: &Fact) -> Option<(String, FactKind, i32)> {
    match fact.value.as_ref()? {
        fact::Value::FinancialAccount(a) => Some((
            person_id.to_owned(),
            FactKind::FinancialAccount,
            a.account_type,
        )),
        fact::Value::AccountOutflow(_) => Some((person_id.to_owned(), FactKind::AccountOutflow, 0)),
        _ => None,
    }
}

/// How many facts of the outcome reach the caller: each fact of a kind
/// shown whole, and one per total of an aggregated kind.
fn disclosed_count(outcome: &SourceOutcome, aggregated: &[FactKind]) -> usize {
    let mut totals = std::collections::BTreeSet::new();
    let mut count = 0;
    for answer in outcome.answers.iter() {
        for f in &answer.facts {
            let Some(value) = &f.value else { continue };
            if aggregated.contains(&value.kind()) {
                if let Some(key) = total_key(&answer.person_id, f)
                    && totals.insert(key)
                {
                    count += 1;
                }
            } else {
                count += 1;
            }
        }
    }
    count
}

/// The fact kinds an outcome discloses, as the audit log writes them, in
/// `FactKind` order: the kinds of the facts it holds, an aggregated kind
/// written `<kind>:total`.
pub fn disclosed_kinds(outcome: &SourceOutcome) -> Vec<String> {
    let mut kinds: Vec<FactKind> = outcome
        .answers
        .iter()
        .flat_map(|a| a.facts.iter().filter_map(|f| f.value.as_ref()))
        .map(fact::Value::kind)
        .collect();
    kinds.sort_unstable_by_key(|k| *k as i32);
    kinds.dedup();
    kinds
        .into_iter()
        .map(|k| {
            if outcome.result.aggregated_fact_kinds.contains(&(k as i32)) {
                format!("{}:total", kind_name(k))
            } else {
                kind_name(k)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use hedui_adapters::catalog::Catalog;
    use hedui_proto::v1::{
        AccountOutflow, AccountType, FinancialAccount, PersonAnswer, SourceResult,
    };

    use super::*;

    fn account(person: &str, kind: AccountType, balance: i64) -> PersonAnswer {
        PersonAnswer {
            person_id: person.into(),
            facts: vec![Fact {
                record_id: format!("r-{balance}"),
                as_of: None,
                value: Some(fact::Value::FinancialAccount(FinancialAccount {
                    institution: "bank".into(),
                    account_ref: format!("6230****{balance}"),
                    account_type: kind as i32,
                    balance_fen: balance,
                    income_12m_fen: 0,
                })),
            }],
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for k in all_kinds() {
            assert_eq!(parse_kind(&kind_name(k)), Some(k));
        }
        assert_eq!(all_kinds().len(), 23);
        assert_eq!(
            parse_kind("FINANCIAL_ACCOUNT"),
            Some(FactKind::FinancialAccount)
        );
        assert_eq!(parse_kind("unspecified"), None);
        assert_eq!(parse_kind("bank_deposit"), None);
    }

    #[test]
    fn restrict_drops_withheld_kinds_and_counts_totals_once() {
        let bank = Arc::new(
            Catalog::dachuan()
                .get("rural-commercial-bank")
                .unwrap()
                .clone(),
        );
        let mut answers = vec![
            account("A", AccountType::Deposit, 100),
            account("A", AccountType::Deposit, 200),
            account("A", AccountType::Fund, 300),
        ];
        answers[0].facts.push(Fact {
            record_id: "o".into(),
            as_of: None,
            value: Some(fact::Value::AccountOutflow(AccountOutflow::default())),
        });
        let outcome = SourceOutcome {
            spec: bank.clone(),
            result: SourceResult {
                status: SourceStatus::Ok as i32,
                fact_count: 4,
                ..Default::default()
            },
            answers: answers.into(),
        };
        let only_outflows = Disclosure {
            purpose: "p".into(),
            sources: None,
            fact_kinds: Some(vec![
                FactKind::HouseholdRegistration,
                FactKind::AccountOutflow,
            ]),
            aggregate: Vec::new(),
        };
        let r = only_outflows.restrict(&bank, outcome.clone());
        assert_eq!(r.spec.fact_kinds, vec![FactKind::AccountOutflow]);
        assert_eq!(r.result.fact_count, 1);
        assert_eq!(
            r.result.withheld_fact_kinds,
            vec![FactKind::FinancialAccount as i32]
        );
        assert_eq!(disclosed_kinds(&r), vec!["account_outflow".to_owned()]);
        assert_eq!(only_outflows.restrict(&bank, r.clone()), r, "idempotent");
        // The answers were shared (as with the cache): restricting copied
        // them and left the shared ones whole.
        let facts = |o: &SourceOutcome| o.answers.iter().map(|a| a.facts.len()).sum::<usize>();
        assert_eq!(facts(&outcome), 4);
        assert_eq!(facts(&r), 1);

        let totals = Disclosure {
            purpose: "p".into(),
            sources: None,
            fact_kinds: None,
            aggregate: vec![FactKind::FinancialAccount],
        };
        let r = totals.restrict(&bank, outcome.clone());
        // Two deposit accounts make one total, the fund another, and the
        // outflow is shown whole.
        assert_eq!(r.result.fact_count, 3);
        assert_eq!(
            disclosed_kinds(&r),
            vec![
                "financial_account:total".to_owned(),
                "account_outflow".to_owned()
            ]
        );

        let none = Disclosure {
            purpose: "education_assistance".into(),
            sources: None,
            fact_kinds: Some(vec![FactKind::HouseholdRegistration]),
            aggregate: Vec::new(),
        };
        let why = none.not_asked(&bank).unwrap();
        assert!(
            why.contains("purposes.education_assistance.fact_kinds"),
            "{why}"
        );
        let r = none.restrict(&bank, outcome);
        assert_eq!(r.result.status(), SourceStatus::NoRecord);
        assert!(r.answers.iter().all(|a| a.facts.is_empty()));
    }
}
