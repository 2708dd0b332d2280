//! The sources, as data: id, name and fact kinds of each. The 28 sources of
//! Dachuan District are embedded (`adapters/catalog.toml`); a deployment adds
//! or overrides sources in its configuration without touching code.

use std::collections::BTreeMap;

use hedui_proto::v1::FactKind;
use serde::Deserialize;

/// The embedded catalog of Dachuan's 27 verification departments and the
/// Rural Commercial Bank.
pub const DACHUAN_CATALOG: &str = include_str!("../catalog.toml");

/// The id of the household-registration source through which households are
/// resolved.
pub const HOUSEHOLD_SOURCE: &str = "public-security";

/// One source: a department or institution that answers lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// Stable id used in configuration, reports and the audit log
    /// (lower-case letters, digits and `-`).
    pub id: String,
    /// Department or institution name.
    pub name: String,
    /// The fact kinds it reports.
    pub fact_kinds: Vec<FactKind>,
}

/// A source as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceSpec {
    /// Stable id.
    pub id: String,
    /// Department or institution name.
    pub name: String,
    /// Fact kinds, as `hedui.v1.FactKind` names without the `FACT_KIND_`
    /// prefix, e.g. `"VEHICLE"`.
    pub fact_kinds: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    source: Vec<RawSourceSpec>,
}

/// What is wrong with a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The TOML does not parse.
    #[error("catalog does not parse: {0}")]
    Parse(String),
    /// An id is empty or has characters other than `a-z`, `0-9` and `-`.
    #[error("source id {0:?} must be lower-case letters, digits and '-'")]
    BadId(String),
    /// Two sources share an id.
    #[error("source id {0:?} appears twice")]
    Duplicate(String),
    /// A fact kind is not a `hedui.v1.FactKind`.
    #[error("source {source_id:?}: unknown fact kind {kind:?}")]
    UnknownKind {
        /// The source.
        source_id: String,
        /// The kind as written.
        kind: String,
    },
    /// A source lists no fact kind.
    #[error("source {0:?} lists no fact kind")]
    NoKinds(String),
}

impl SourceSpec {
    /// Checks and converts a source as written in TOML.
    ///
    /// # Errors
    /// A [`CatalogError`] naming the source and what is wrong.
    pub fn from_raw(raw: &RawSourceSpec) -> Result<Self, CatalogError> {
        let id_ok = !raw.id.is_empty()
            && raw
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(CatalogError::BadId(raw.id.clone()));
        }
        if raw.fact_kinds.is_empty() {
            return Err(CatalogError::NoKinds(raw.id.clone()));
        }
        let fact_kinds = raw
            .fact_kinds
            .iter()
            .map(|k| {
                FactKind::from_str_name(&format!("FACT_KIND_{k}"))
                    .filter(|k| *k != FactKind::Unspecified)
                    .ok_or_else(|| CatalogError::UnknownKind {
                        source_id: raw.id.clone(),
                        kind: k.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(SourceSpec {
            id: raw.id.clone(),
            name: raw.name.clone(),
            fact_kinds,
        })
    }
}

/// The sources known to a broker, by id, in catalog order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    sources: Vec<SourceSpec>,
    index: BTreeMap<String, usize>,
}

impl Catalog {
    /// The embedded catalog of Dachuan's 28 sources.
    pub fn dachuan() -> Self {
        Self::parse(DACHUAN_CATALOG).expect("embedded catalog is valid")
    }

    /// Parses a catalog file (`[[source]]` tables).
    ///
    /// # Errors
    /// A [`CatalogError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        let mut catalog = Catalog::default();
        for r in &raw.source {
            let spec = SourceSpec::from_raw(r)?;
            if catalog.index.contains_key(&spec.id) {
                return Err(CatalogError::Duplicate(spec.id));
            }
            catalog.upsert(spec);
        }
        Ok(catalog)
    }

    /// Adds a source, or replaces the one with the same id.
    pub fn upsert(&mut self, spec: SourceSpec) {
        match self.index.get(&spec.id) {
            Some(&i) => self.sources[i] = spec,
            None => {
                self.index.insert(spec.id.clone(), self.sources.len());
                self.sources.push(spec);
            }
        }
    }

    /// The source with this id.
    pub fn get(&self, id: &str) -> Option<&SourceSpec> {
        self.index.get(id).map(|&i| &self.sources[i])
    }

    /// Every source, in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = &SourceSpec> {
        self.sources.iter()
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dachuan_has_28_sources_with_household_registration() {
        let c = Catalog::dachuan();
        assert_eq!(c.len(), 28);
        assert_eq!(
            c.get(HOUSEHOLD_SOURCE).unwrap().fact_kinds,
            vec![FactKind::HouseholdRegistration]
        );
        assert!(c.get("rural-commercial-bank").is_some());
    }

    #[test]
    fn refuses_unknown_kinds_bad_ids_and_duplicates() {
        let bad_kind = "[[source]]\nid='x'\nname='X'\nfact_kinds=['SPACESHIP']\n";
        assert!(matches!(
            Catalog::parse(bad_kind),
            Err(CatalogError::UnknownKind { kind, .. }) if kind == "SPACESHIP"
        ));
        let bad_id = "[[source]]\nid='X Y'\nname='X'\nfact_kinds=['VEHICLE']\n";
        assert!(matches!(
            Catalog::parse(bad_id),
            Err(CatalogError::BadId(_))
        ));
        let dup = format!(
            "{0}{0}",
            "[[source]]\nid='x'\nname='X'\nfact_kinds=['VEHICLE']\n"
        );
        assert!(matches!(
            Catalog::parse(&dup),
            Err(CatalogError::Duplicate(_))
        ));
    }
}
