//! Declarative mapping from a source's own records (an object of a JSON
//! answer, a row of a view) to typed facts, written in configuration: which
//! field of the record fills which field of the fact, in which unit, through
//! which code table. The HTTP/JSON and SQL transports share it; the
//! `hedui.v1` descriptors say which fields each fact kind has, so every kind
//! with flat fields can be mapped without code.
//!
//! ```toml
//! [[sources.transport.facts]]
//! kind = "FINANCIAL_ACCOUNT"
//! record_id = "/serialNo"                 # where the source's record id is
//! record_id_prefix = "RCB-"               # optional, put before it
//! as_of = "/asOf"                         # optional, else the answer's
//! [sources.transport.facts.fields]
//! institution = { value = "Dachuan Rural Commercial Bank" }   # a constant
//! account_ref = "/acctNo"                                     # a field as is
//! account_type = { from = "/prodType", map = { "01" = "DEPOSIT", "05" = "WEALTH_MANAGEMENT" } }
//! balance_fen = { from = "/bal", unit = "yuan" }              # 12.34 -> 1234
//! income_12m_fen = { from = "/int12m", unit = "yuan", default = 0 }
//! ```
//!
//! Units: money fields (`*_fen`) take `fen` (default), `yuan` or
//! `wan_yuan` and must come out as whole fen; area fields (`*_centi_m2`)
//! take `centi_m2` (default), `m2`, `mu` (1/15 hectare, rounded to the
//! nearest hundredth of a square metre) or `hectare`. Enum fields take the
//! value's name (`DEPOSIT` or `ACCOUNT_TYPE_DEPOSIT`) or its number, usually
//! through `map`; a code the map does not know makes the answer unusable,
//! never a guess. Date fields take a date, or text as `YYYY-MM-DD`,
//! `YYYYMMDD`, `YYYY/MM/DD` or the `format` given (chrono syntax). Decimal
//! numbers are read exactly, never through floating point arithmetic.

use std::{collections::BTreeMap, fmt, sync::OnceLock};

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use hedui_proto::v1::{Fact, FactKind};
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value as Dyn,
};
use serde::Deserialize;

/// The `hedui.v1` descriptors (and their imports), decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(hedui_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes")
    })
}

/// China Standard Time, in which legacy systems write times without an
/// offset.
fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

// === Decimal ===

/// An exact decimal number: `digits * 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    digits: i128,
    scale: u32,
}

/// Most significant digits a decimal may have.
const MAX_DIGITS: usize = 30;

impl Decimal {
    /// Reads `[+-]digits[.digits][e[+-]digits]`, e.g. `"1234.56"`, `"-0.5"`,
    /// `"1e3"`. `None` when it is not such a number or has more than 30
    /// digits.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
            None => (t, 0),
        };
        let (neg, m) = match mantissa.as_bytes().first()? {
            b'-' => (true, &mantissa[1..]),
            b'+' => (false, &mantissa[1..]),
            _ => (false, mantissa),
        };
        let (int, frac) = match m.split_once('.') {
            Some((i, f)) => (i, f),
            None => (m, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let all = all.trim_start_matches('0');
        if all.len() > MAX_DIGITS {
            return None;
        }
        let mut digits: i128 = if all.is_empty() { 0 } else { all.parse().ok()? };
        let mut scale = i64::try_from(frac.len()).ok()? - i64::from(exp);
        while scale < 0 {
            digits = digits.checked_mul(10)?;
            scale += 1;
        }
        let scale = u32::try_from(scale).ok().filter(|s| *s <= 36)?;
        Some(Decimal {
            digits: if neg { -digits } else { digits },
            scale,
        })
    }

    /// `value * num / den` as a whole number; `None` on overflow, or when
    /// `exact` and the result has a fraction. Otherwise rounds half away
    /// from zero.
    fn scale_to_int(self, num: i128, den: i128, exact: bool) -> Option<Result<i64, ()>> {
        let n = self.digits.checked_mul(num)?;
        let d = den.checked_mul(10i128.checked_pow(self.scale)?)?;
        let (mut q, r) = (n / d, n % d);
        if r != 0 {
            if exact {
                return Some(Err(()));
            }
            if r.checked_mul(2)?.abs() >= d {
                q += n.signum();
            }
        }
        Some(Ok(i64::try_from(q).ok()?))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.digits < 0 { "-" } else { "" };
        let abs = self.digits.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{abs}");
        }
        let padded = format!("{abs:0>width$}", width = scale + 1);
        let (i, d) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{i}.{d}")
    }
}

// === Scalar ===

/// One value read from a source's record.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Absent or null.
    Null,
    /// A whole number.
    Int(i64),
    /// A decimal number, exact.
    Decimal(Decimal),
    /// Text.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// A calendar date.
    Date(NaiveDate),
    /// An instant.
    Time(DateTime<Utc>),
}

impl Scalar {
    /// The value read from JSON: numbers exactly, strings as text; arrays
    /// and objects are not values.
    ///
    /// # Errors
    /// A message saying what the JSON value is instead.
    pub fn from_json(v: Option<&serde_json::Value>) -> Result<Scalar, String> {
        use serde_json::Value as J;
        Ok(match v {
            None | Some(J::Null) => Scalar::Null,
            Some(J::Bool(b)) => Scalar::Bool(*b),
            Some(J::Number(n)) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Decimal::parse(&n.to_string())
                    .map(Scalar::Decimal)
                    .ok_or_else(|| format!("number {n} is out of range"))?,
            },
            Some(J::String(s)) => Scalar::Text(s.clone()),
            Some(J::Array(_)) => return Err("is a list, not a single value".into()),
            Some(J::Object(_)) => return Err("is an object, not a single value".into()),
        })
    }

    /// The value as a code-table key: text as is, numbers and booleans
    /// written out.
    fn key(&self) -> Option<String> {
        match self {
            Scalar::Null => None,
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Decimal(d) => Some(d.to_string()),
            Scalar::Text(t) => Some(t.trim().to_owned()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::Date(d) => Some(d.to_string()),
            Scalar::Time(t) => Some(t.to_rfc3339()),
        }
    }

    fn from_toml(v: &toml::Value) -> Result<Scalar, String> {
        Ok(match v {
            toml::Value::String(s) => Scalar::Text(s.clone()),
            toml::Value::Integer(i) => Scalar::Int(*i),
            toml::Value::Boolean(b) => Scalar::Bool(*b),
            toml::Value::Float(f) => Decimal::parse(&f.to_string())
                .map(Scalar::Decimal)
                .ok_or_else(|| format!("{f} is out of range"))?,
            toml::Value::Datetime(d) => {
                let text = d.to_string();
                match NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                    Ok(date) => Scalar::Date(date),
                    Err(_) => Scalar::Text(text),
                }
            }
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err("must be a single value, not a list or table".into());
            }
        })
    }

    /// Short description for error messages (never more than 40 characters
    /// of a value).
    fn describe(&self) -> String {
        match self {
            Scalar::Null => "nothing".into(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Decimal(d) => d.to_string(),
            Scalar::Text(t) => {
                let short: String = t.chars().take(40).collect();
                format!("{short:?}")
            }
            Scalar::Bool(b) => b.to_string(),
            Scalar::Date(d) => d.to_string(),
            Scalar::Time(t) => t.to_rfc3339(),
        }
    }
}

/// Reads an instant: a time, a date (midnight in China), seconds since the
/// epoch, or text as RFC 3339, `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD` (China
/// time when no offset is written).
pub fn instant_of(v: &Scalar) -> Option<DateTime<Utc>> {
    let midnight = |d: NaiveDate| {
        china()
            .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
            .single()
            .map(|t| t.with_timezone(&Utc))
    };
    match v {
        Scalar::Time(t) => Some(*t),
        Scalar::Date(d) => midnight(*d),
        Scalar::Int(secs) => DateTime::from_timestamp(*secs, 0),
        Scalar::Text(t) => {
            let t = t.trim();
            if let Ok(x) = DateTime::parse_from_rfc3339(t) {
                return Some(x.with_timezone(&Utc));
            }
            for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y%m%d%H%M%S"] {
                if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
                    return china()
                        .from_local_datetime(&n)
                        .single()
                        .map(|x| x.with_timezone(&Utc));
                }
            }
            date_of(t, None).and_then(midnight)
        }
        Scalar::Null | Scalar::Decimal(_) | Scalar::Bool(_) => None,
    }
}

fn date_of(t: &str, format: Option<&str>) -> Option<NaiveDate> {
    match format {
        Some(f) => NaiveDate::parse_from_str(t.trim(), f).ok(),
        None => ["%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"]
            .iter()
            .find_map(|f| NaiveDate::parse_from_str(t.trim(), f).ok()),
    }
}

/// The protobuf timestamp of an instant.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

// === configuration ===

/// Why a record could not be mapped: the answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} field {field}: {message}")]
pub struct MapError {
    /// The fact kind, e.g. `FINANCIAL_ACCOUNT`.
    pub kind: String,
    /// The fact field (or `record_id`, `as_of`).
    pub field: String,
    /// What is wrong, naming where in the record.
    pub message: String,
}

/// A record of a source: a JSON object, a row.
pub trait Record {
    /// The value at `locator` (a JSON pointer, a column name);
    /// [`Scalar::Null`] when absent.
    ///
    /// # Errors
    /// A message saying why the value cannot be read (e.g. it is a list).
    fn get(&self, locator: &str) -> Result<Scalar, String>;
}

/// A JSON value as a [`Record`]: locators are JSON pointers (RFC 6901)
/// relative to it.
#[derive(Debug, Clone, Copy)]
pub struct JsonRecord<'a>(pub &'a serde_json::Value);

impl Record for JsonRecord<'_> {
    fn get(&self, locator: &str) -> Result<Scalar, String> {
        Scalar::from_json(self.0.pointer(locator))
    }
}

/// Checks that `p` is a JSON pointer (empty, or starting with `/`).
///
/// # Errors
/// A message naming the pointer.
pub fn check_json_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "{p:?} is not a JSON pointer; write it from the record's root, e.g. \"/{p}\""
        ))
    }
}

/// How a field of a fact is filled, as written in configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Where in the record the value is (a JSON pointer or a column).
    pub from: Option<String>,
    /// A constant instead.
    pub value: Option<toml::Value>,
    /// The unit the source writes money or areas in.
    pub unit: Option<String>,
    /// The source's codes and what each means (an enum value's name, a
    /// boolean, a text).
    #[serde(default)]
    pub map: BTreeMap<String, toml::Value>,
    /// The value to use when the record has none (absent or null); without
    /// it, a missing value makes the answer unusable.
    pub default: Option<toml::Value>,
    /// chrono format of dates written as text, e.g. `"%d.%m.%Y"`.
    pub format: Option<String>,
}

/// The mapping of one fact kind, as written in configuration (the keys
/// common to every transport).
#[derive(Debug, Clone)]
pub struct FactConfig<'a> {
    /// The fact kind, e.g. `"FINANCIAL_ACCOUNT"`.
    pub kind: &'a str,
    /// Where the source's record id is.
    pub record_id: &'a str,
    /// Text put before the record id.
    pub record_id_prefix: Option<&'a str>,
    /// Where the record's as-of time is.
    pub as_of: Option<&'a str>,
    /// The fact's fields: each a locator, or a [`FieldConfig`] table.
    pub fields: &'a BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone)]
enum Source {
    From(String),
    Const(Scalar),
}

#[derive(Debug, Clone)]
enum Conversion {
    Text,
    Integer {
        num: i128,
        den: i128,
        exact: bool,
        unit: &'static str,
    },
    Bool,
    Enum(EnumDescriptor),
    Date(Option<String>),
}

#[derive(Debug, Clone)]
struct FieldMap {
    name: String,
    field: FieldDescriptor,
    source: Source,
    conversion: Conversion,
    map: BTreeMap<String, Scalar>,
    default: Option<Scalar>,
}

/// The mapping of one fact kind, checked against the fact's descriptor.
#[derive(Debug, Clone)]
pub struct FactMapping {
    kind: FactKind,
    kind_name: String,
    fact: MessageDescriptor,
    case: FieldDescriptor,
    record_id: String,
    record_id_prefix: String,
    as_of: Option<String>,
    fields: Vec<FieldMap>,
}

/// The fact kind named `name` (with or without the `FACT_KIND_` prefix).
///
/// # Errors
/// A message listing the kinds.
pub fn fact_kind(name: &str) -> Result<FactKind, String> {
    let full = if name.starts_with("FACT_KIND_") {
        name.to_owned()
    } else {
        format!("FACT_KIND_{name}")
    };
    FactKind::from_str_name(&full)
        .filter(|k| *k != FactKind::Unspecified)
        .ok_or_else(|| {
            format!("kind: {name:?} is not a fact kind (e.g. FINANCIAL_ACCOUNT, DWELLING)")
        })
}

const MONEY_UNITS: [(&str, i128, i128); 3] =
    [("fen", 1, 1), ("yuan", 100, 1), ("wan_yuan", 1_000_000, 1)];
/// One mu is 10000/15 square metres, so 1_000_000/15 hundredths.
const AREA_UNITS: [(&str, i128, i128); 4] = [
    ("centi_m2", 1, 1),
    ("m2", 100, 1),
    ("mu", 1_000_000, 15),
    ("hectare", 1_000_000, 1),
];

fn unit_names(units: &[(&str, i128, i128)]) -> String {
    units.iter().map(|u| u.0).collect::<Vec<_>>().join(", ")
}

impl FactMapping {
    /// Checks a fact kind's mapping against the fact's descriptor.
    /// `check_locator` checks each locator's syntax for the transport.
    ///
    /// # Errors
    /// A message naming the key and what is allowed.
    pub fn new(
        config: &FactConfig<'_>,
        check_locator: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<FactMapping, String> {
        let kind = fact_kind(config.kind)?;
        let kind_name = kind
            .as_str_name()
            .trim_start_matches("FACT_KIND_")
            .to_owned();
        let pool = descriptor_pool();
        let fact = pool
            .get_message_by_name("hedui.v1.Fact")
            .expect("hedui.v1.Fact is described");
        let case = fact
            .get_field_by_name(&kind_name.to_lowercase())
            .expect("every fact kind is a case of Fact.value");
        let Kind::Message(message) = case.kind() else {
            unreachable!("fact cases are messages")
        };
        check_locator(config.record_id).map_err(|e| format!("record_id: {e}"))?;
        if let Some(a) = config.as_of {
            check_locator(a).map_err(|e| format!("as_of: {e}"))?;
        }
        let known = || {
            message
                .fields()
                .map(|f| f.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut fields = Vec::with_capacity(config.fields.len());
        for (name, raw) in config.fields {
            let at = |m: String| format!("fields.{name}: {m}");
            let field = message.get_field_by_name(name).ok_or_else(|| {
                at(format!(
                    "{kind_name} has no such field; its fields: {}",
                    known()
                ))
            })?;
            let fc = match raw {
                toml::Value::String(s) => FieldConfig {
                    from: Some(s.clone()),
                    ..FieldConfig::default()
                },
                toml::Value::Table(t) => FieldConfig::deserialize(toml::Value::Table(t.clone()))
                    .map_err(|e| at(e.to_string().trim().to_owned()))?,
                other => {
                    return Err(at(format!(
                        "must be where the value is (a text) or a table, not {}",
                        other.type_str()
                    )));
                }
            };
            fields.push(Self::field(&field, &fc, check_locator).map_err(at)?);
        }
        Ok(FactMapping {
            kind,
            kind_name,
            fact,
            case,
            record_id: config.record_id.to_owned(),
            record_id_prefix: config.record_id_prefix.unwrap_or_default().to_owned(),
            as_of: config.as_of.map(str::to_owned),
            fields,
        })
    }

    fn field(
        field: &FieldDescriptor,
        fc: &FieldConfig,
        check_locator: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<FieldMap, String> {
        let name = field.name();
        if field.is_list() || field.is_map() {
            return Err("lists cannot be mapped; serve this fact kind over grpc".into());
        }
        let unit = fc.unit.as_deref();
        let conversion = match field.kind() {
            Kind::String => Conversion::Text,
            Kind::Bool => Conversion::Bool,
            Kind::Enum(e) => Conversion::Enum(e),
            Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 => {
                let (table, what): (&[(&str, i128, i128)], &str) = if name.ends_with("_fen") {
                    (&MONEY_UNITS, "money")
                } else if name.ends_with("_centi_m2") {
                    (&AREA_UNITS, "an area")
                } else {
                    (&[], "")
                };
                match (table.is_empty(), unit) {
                    (true, Some(u)) => {
                        return Err(format!("unit {u:?} given, but the field is a plain number"));
                    }
                    (true, None) => Conversion::Integer {
                        num: 1,
                        den: 1,
                        exact: true,
                        unit: "",
                    },
                    (false, u) => {
                        let u = u.unwrap_or(table[0].0);
                        let &(unit, num, den) =
                            table.iter().find(|x| x.0 == u).ok_or_else(|| {
                                format!(
                                    "unit {u:?} is not a unit of {what}; expected {}",
                                    unit_names(table)
                                )
                            })?;
                        Conversion::Integer {
                            num,
                            den,
                            // Money must come out as whole fen; mu do not
                            // divide into hundredths of a square metre.
                            exact: den == 1,
                            unit,
                        }
                    }
                }
            }
            Kind::Message(m) if m.full_name() == "hedui.v1.CivilDate" => {
                Conversion::Date(fc.format.clone())
            }
            _ => return Err("this field cannot be mapped; serve this fact kind over grpc".into()),
        };
        if unit.is_some() && !matches!(conversion, Conversion::Integer { .. }) {
            return Err("unit applies to money and area fields only".into());
        }
        if fc.format.is_some() && !matches!(conversion, Conversion::Date(_)) {
            return Err("format applies to date fields only".into());
        }
        let source = match (&fc.from, &fc.value) {
            (Some(_), Some(_)) => return Err("give from or value, not both".into()),
            (None, None) => return Err("give from (where the value is) or value".into()),
            (Some(f), None) => {
                check_locator(f).map_err(|e| format!("from: {e}"))?;
                Source::From(f.clone())
            }
            (None, Some(v)) => {
                Source::Const(Scalar::from_toml(v).map_err(|e| format!("value: {e}"))?)
            }
        };
        let mut map = BTreeMap::new();
        for (code, target) in &fc.map {
            let t = Scalar::from_toml(target).map_err(|e| format!("map.{code}: {e}"))?;
            map.insert(code.trim().to_owned(), t);
        }
        let default = fc
            .default
            .as_ref()
            .map(Scalar::from_toml)
            .transpose()
            .map_err(|e| format!("default: {e}"))?;
        let fm = FieldMap {
            name: name.to_owned(),
            field: field.clone(),
            source,
            conversion,
            map,
            default,
        };
        // Every constant, code-table target and default must convert, so
        // that a wrong one is found at start-up, not on a lookup.
        for (what, v) in fm
            .map
            .iter()
            .map(|(c, v)| (format!("map.{c}"), v))
            .chain(fm.default.iter().map(|v| ("default".to_owned(), v)))
            .chain(match &fm.source {
                Source::Const(v) => Some(("value".to_owned(), v)),
                Source::From(_) => None,
            })
        {
            fm.convert(v).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(fm)
    }

    /// The fact kind mapped.
    pub fn kind(&self) -> FactKind {
        self.kind
    }

    /// The fact kind's name without prefix, e.g. `FINANCIAL_ACCOUNT`.
    pub fn kind_name(&self) -> &str {
        &self.kind_name
    }

    /// Every locator the mapping reads (record id, as-of, fields), e.g. to
    /// check that a view has these columns.
    pub fn locators(&self) -> Vec<&str> {
        let mut v = vec![self.record_id.as_str()];
        v.extend(self.as_of.as_deref());
        v.extend(self.fields.iter().filter_map(|f| match &f.source {
            Source::From(l) => Some(l.as_str()),
            Source::Const(_) => None,
        }));
        v
    }

    /// Maps one record to a fact, as of `as_of` unless the record says.
    ///
    /// # Errors
    /// [`MapError`] naming the field and the value that does not fit.
    pub fn fact(&self, record: &dyn Record, as_of: DateTime<Utc>) -> Result<Fact, MapError> {
        let err = |field: &str, message: String| MapError {
            kind: self.kind_name.clone(),
            field: field.to_owned(),
            message,
        };
        let record_id = match record
            .get(&self.record_id)
            .map_err(|e| err("record_id", format!("{}: {e}", self.record_id)))?
        {
            Scalar::Null => {
                return Err(err("record_id", format!("{} is missing", self.record_id)));
            }
            v => v
                .key()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| err("record_id", format!("{} is empty", self.record_id)))?,
        };
        let as_of = match &self.as_of {
            None => as_of,
            Some(loc) => {
                let v = record
                    .get(loc)
                    .map_err(|e| err("as_of", format!("{loc}: {e}")))?;
                if v == Scalar::Null {
                    as_of
                } else {
                    instant_of(&v).ok_or_else(|| {
                        err("as_of", format!("{loc}: {} is not a time", v.describe()))
                    })?
                }
            }
        };
        let mut value = DynamicMessage::new(
            self.case
                .kind()
                .as_message()
                .expect("fact cases are messages")
                .clone(),
        );
        for f in &self.fields {
            let (raw, at) = match &f.source {
                Source::Const(v) => (v.clone(), "value".to_owned()),
                Source::From(loc) => (
                    record
                        .get(loc)
                        .map_err(|e| err(&f.name, format!("{loc}: {e}")))?,
                    loc.clone(),
                ),
            };
            let raw = match (raw, &f.default) {
                (Scalar::Null, Some(d)) => d.clone(),
                (Scalar::Null, None) => {
                    return Err(err(&f.name, format!("{at} is missing")));
                }
                (v, _) => v,
            };
            let mapped = f
                .lookup(&raw)
                .map_err(|e| err(&f.name, format!("{at}: {e}")))?;
            let v = f
                .convert(&mapped)
                .map_err(|e| err(&f.name, format!("{at}: {e}")))?;
            value.set_field(&f.field, v);
        }
        let mut fact = DynamicMessage::new(self.fact.clone());
        fact.set_field_by_name(
            "record_id",
            Dyn::String(format!("{}{record_id}", self.record_id_prefix)),
        );
        fact.set_field(&self.case, Dyn::Message(value));
        let mut out: Fact = fact
            .transcode_to()
            .map_err(|e| err("value", format!("cannot be encoded: {e}")))?;
        out.as_of = Some(timestamp(as_of));
        Ok(out)
    }
}

impl FieldMap {
    /// The value after the code table, when there is one.
    fn lookup(&self, v: &Scalar) -> Result<Scalar, String> {
        if self.map.is_empty() {
            return Ok(v.clone());
        }
        let key = v.key().unwrap_or_default();
        self.map.get(&key).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.map.keys().map(String::as_str).collect();
            format!(
                "unknown code {}; the code table knows {}",
                v.describe(),
                known.join(", ")
            )
        })
    }

    /// The value converted to the field's type and unit.
    fn convert(&self, v: &Scalar) -> Result<Dyn, String> {
        let wrong = |what: &str| format!("{} is not {what}", v.describe());
        match &self.conversion {
            Conversion::Text => match v {
                Scalar::Text(t) => Ok(Dyn::String(t.clone())),
                Scalar::Int(_) | Scalar::Decimal(_) | Scalar::Date(_) => {
                    Ok(Dyn::String(v.key().unwrap_or_default()))
                }
                Scalar::Null | Scalar::Bool(_) | Scalar::Time(_) => Err(wrong("a text")),
            },
            Conversion::Bool => match v {
                Scalar::Bool(b) => Ok(Dyn::Bool(*b)),
                Scalar::Int(0) => Ok(Dyn::Bool(false)),
                Scalar::Int(1) => Ok(Dyn::Bool(true)),
                Scalar::Text(t) if t.trim().eq_ignore_ascii_case("true") => Ok(Dyn::Bool(true)),
                Scalar::Text(t) if t.trim().eq_ignore_ascii_case("false") => Ok(Dyn::Bool(false)),
                _ => Err(wrong("true or false (use map for the source's codes)")),
            },
            Conversion::Enum(e) => {
                let value = match v {
                    Scalar::Int(n) => i32::try_from(*n).ok().and_then(|n| e.get_value(n)),
                    Scalar::Text(t) => {
                        let t = t.trim();
                        e.get_value_by_name(t).or_else(|| {
                            let prefix = enum_prefix(e);
                            e.get_value_by_name(&format!("{prefix}{t}"))
                        })
                    }
                    _ => None,
                };
                value
                    .map(|x| Dyn::EnumNumber(x.number()))
                    .ok_or_else(|| format!("{} is not a value of {}", v.describe(), e.name()))
            }
            Conversion::Date(format) => {
                let d = match v {
                    Scalar::Date(d) => Some(*d),
                    Scalar::Time(t) => Some(t.with_timezone(&china()).date_naive()),
                    Scalar::Text(t) => date_of(t, format.as_deref()),
                    Scalar::Int(n) if format.is_none() => date_of(&n.to_string(), None),
                    _ => None,
                };
                let d = d.ok_or_else(|| wrong("a date"))?;
                let m = self
                    .field
                    .kind()
                    .as_message()
                    .expect("dates are messages")
                    .clone();
                let mut date = DynamicMessage::new(m);
                date.set_field_by_name("year", Dyn::I32(d.year()));
                date.set_field_by_name("month", Dyn::I32(d.month() as i32));
                date.set_field_by_name("day", Dyn::I32(d.day() as i32));
                Ok(Dyn::Message(date))
            }
            Conversion::Integer {
                num,
                den,
                exact,
                unit,
            } => {
                let d = match v {
                    Scalar::Int(i) => Decimal {
                        digits: i128::from(*i),
                        scale: 0,
                    },
                    Scalar::Decimal(d) => *d,
                    Scalar::Text(t) => Decimal::parse(t).ok_or_else(|| wrong("a number"))?,
                    _ => return Err(wrong("a number")),
                };
                let n = match d.scale_to_int(*num, *den, *exact) {
                    None => return Err(format!("{d} is out of range")),
                    Some(Err(())) if unit.is_empty() => return Err(wrong("a whole number")),
                    Some(Err(())) => {
                        return Err(format!(
                            "{d} {unit} is not a whole number of {}",
                            if self.name.ends_with("_fen") {
                                "fen"
                            } else {
                                "hundredths of a square metre"
                            }
                        ));
                    }
                    Some(Ok(n)) => n,
                };
                Ok(match self.field.kind() {
                    Kind::Int32 => {
                        Dyn::I32(i32::try_from(n).map_err(|_| format!("{n} is out of range"))?)
                    }
                    Kind::Uint32 => {
                        Dyn::U32(u32::try_from(n).map_err(|_| format!("{n} is out of range"))?)
                    }
                    Kind::Uint64 => {
                        Dyn::U64(u64::try_from(n).map_err(|_| format!("{n} is negative"))?)
                    }
                    _ => Dyn::I64(n),
                })
            }
        }
    }
}

/// The common prefix of an enum's value names, e.g. `ACCOUNT_TYPE_`.
fn enum_prefix(e: &EnumDescriptor) -> String {
    let mut out = String::new();
    for c in e.name().chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{FinancialAccount, fact::Value};

    use super::*;

    #[test]
    fn decimals_are_exact() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("1234.56").to_string(), "1234.56");
        assert_eq!(d("-0.5").to_string(), "-0.5");
        assert_eq!(d("1e3").to_string(), "1000");
        assert_eq!(d("1.5e-3").to_string(), "0.0015");
        assert!(Decimal::parse("12a").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse(".").is_none());
        assert_eq!(d("1234.56").scale_to_int(100, 1, true), Some(Ok(123_456)));
        assert_eq!(d("0.001").scale_to_int(100, 1, true), Some(Err(())));
        // 1 mu = 666.67 m2 (rounded).
        assert_eq!(d("1").scale_to_int(1_000_000, 15, false), Some(Ok(66_667)));
        assert_eq!(
            d("-1").scale_to_int(1_000_000, 15, false),
            Some(Ok(-66_667))
        );
        // Six decimals of mu come back to the exact hundredth.
        for centi in [1_u32, 66_667, 123_456, 999_999] {
            let mu = Decimal {
                digits: (i128::from(centi) * 15 * 1_000_000 + 500_000) / 1_000_000,
                scale: 6,
            };
            assert_eq!(
                mu.scale_to_int(1_000_000, 15, false),
                Some(Ok(i64::from(centi)))
            );
        }
    }

    fn fields(text: &str) -> BTreeMap<String, toml::Value> {
        toml::from_str::<toml::Table>(text)
            .unwrap()
            .into_iter()
            .collect()
    }

    fn mapping(kind: &str, f: &str) -> Result<FactMapping, String> {
        let f = fields(f);
        FactMapping::new(
            &FactConfig {
                kind,
                record_id: "/id",
                record_id_prefix: Some("X-"),
                as_of: Some("/asOf"),
                fields: &f,
            },
            &check_json_pointer,
        )
    }

    #[test]
    fn maps_a_json_record_with_units_and_codes() {
        let m = mapping(
            "FINANCIAL_ACCOUNT",
            r#"
            institution = { value = "Dachuan Rural Commercial Bank" }
            account_ref = "/acct"
            account_type = { from = "/type", map = { "01" = "DEPOSIT", "05" = "WEALTH_MANAGEMENT" } }
            balance_fen = { from = "/bal", unit = "yuan" }
            income_12m_fen = { from = "/int", unit = "yuan", default = 0 }
            "#,
        )
        .unwrap();
        let rec = serde_json::json!({
            "id": 17, "acct": "6230****0017", "type": "01", "bal": "1234.56",
            "asOf": "2026-11-23 08:00:00"
        });
        let fact = m.fact(&JsonRecord(&rec), Utc::now()).unwrap();
        assert_eq!(fact.record_id, "X-17");
        assert_eq!(fact.as_of.unwrap().seconds, 1_795_392_000);
        assert_eq!(
            fact.value,
            Some(Value::FinancialAccount(FinancialAccount {
                institution: "Dachuan Rural Commercial Bank".into(),
                account_ref: "6230****0017".into(),
                account_type: 1,
                balance_fen: 123_456,
                income_12m_fen: 0,
            }))
        );
        // A JSON number is read exactly too.
        let rec = serde_json::json!({"id": "a", "acct": 1, "type": "05", "bal": 0.1, "int": 2.5});
        let fact = m.fact(&JsonRecord(&rec), Utc::now()).unwrap();
        let Some(Value::FinancialAccount(a)) = fact.value else {
            panic!()
        };
        assert_eq!(
            (a.balance_fen, a.income_12m_fen, a.account_type),
            (10, 250, 5)
        );
    }

    #[test]
    fn values_that_do_not_fit_name_the_field() {
        let m = mapping(
            "FINANCIAL_ACCOUNT",
            r#"
            account_type = { from = "/type", map = { "01" = "DEPOSIT" } }
            balance_fen = { from = "/bal", unit = "yuan" }
            "#,
        )
        .unwrap();
        let e = |rec: serde_json::Value| {
            m.fact(&JsonRecord(&rec), Utc::now())
                .unwrap_err()
                .to_string()
        };
        let msg = e(serde_json::json!({"id": 1, "type": "99", "bal": "1"}));
        assert!(
            msg.starts_with("FINANCIAL_ACCOUNT field account_type: /type: unknown code \"99\""),
            "{msg}"
        );
        let msg = e(serde_json::json!({"id": 1, "type": "01", "bal": "12.345"}));
        assert!(
            msg.contains("balance_fen") && msg.contains("whole number of fen"),
            "{msg}"
        );
        let msg = e(serde_json::json!({"id": 1, "type": "01", "bal": "abc"}));
        assert!(
            msg.contains("balance_fen: /bal: \"abc\" is not a number"),
            "{msg}"
        );
        let msg = e(serde_json::json!({"id": 1, "type": "01", "bal": [1]}));
        assert!(msg.contains("is a list"), "{msg}");
        let msg = e(serde_json::json!({"id": 1, "type": "01"}));
        assert!(msg.contains("/bal is missing"), "{msg}");
        let msg = e(serde_json::json!({"type": "01", "bal": "1"}));
        assert!(msg.contains("record_id"), "{msg}");
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let e = |kind: &str, f: &str| mapping(kind, f).unwrap_err();
        assert!(e("SPACESHIP", "").starts_with("kind: \"SPACESHIP\""));
        let m = e("DWELLING", "colour = \"/c\"");
        assert!(
            m.starts_with(
                "fields.colour: DWELLING has no such field; its fields: certificate_number"
            ),
            "{m}"
        );
        let m = e(
            "DWELLING",
            "area_centi_m2 = { from = \"/a\", unit = \"jin\" }",
        );
        assert!(m.contains("fields.area_centi_m2: unit \"jin\" is not a unit of an area; expected centi_m2, m2, mu, hectare"), "{m}");
        let m = e(
            "DWELLING",
            "use = { from = \"/u\", map = { R = \"PALACE\" } }",
        );
        assert!(
            m.contains("fields.use: map.R: \"PALACE\" is not a value of DwellingUse"),
            "{m}"
        );
        let m = e("DWELLING", "share_bp = { from = \"/s\", unit = \"yuan\" }");
        assert!(m.contains("plain number"), "{m}");
        let m = e("DWELLING", "area_centi_m2 = { from = \"a\" }");
        assert!(
            m.contains("fields.area_centi_m2: from: \"a\" is not a JSON pointer"),
            "{m}"
        );
        let m = e("DWELLING", "area_centi_m2 = { from = \"/a\", scale = 2 }");
        assert!(
            m.contains("fields.area_centi_m2: unknown field `scale`"),
            "{m}"
        );
        let m = e("HOUSEHOLD_REGISTRATION", "members = \"/m\"");
        assert!(m.contains("lists cannot be mapped"), "{m}");
    }

    #[test]
    fn areas_in_mu_and_dates() {
        let m = mapping(
            "LAND_CONTRACT",
            r#"
            contract_number = "/no"
            area_centi_m2 = { from = "/mu", unit = "mu" }
            large_machinery = { from = "/mach", map = { Y = true, N = false } }
            "#,
        )
        .unwrap();
        let rec = serde_json::json!({"id": 1, "no": "C1", "mu": "2.5", "mach": "Y"});
        let f = m.fact(&JsonRecord(&rec), Utc::now()).unwrap();
        let Some(Value::LandContract(l)) = f.value else {
            panic!()
        };
        assert_eq!((l.area_centi_m2, l.large_machinery), (166_667, true));

        let m = mapping(
            "SOCIAL_ASSISTANCE",
            "since = \"/since\"\nassistance_type = \"/t\"",
        )
        .unwrap();
        let rec = serde_json::json!({"id": 1, "since": "20180301", "t": "DIBAO"});
        let f = m.fact(&JsonRecord(&rec), Utc::now()).unwrap();
        let Some(Value::SocialAssistance(s)) = f.value else {
            panic!()
        };
        assert_eq!(s.since, Some(hedui_proto::v1::CivilDate::ymd(2018, 3, 1)));
        assert_eq!(s.assistance_type, 1);
        let rec = serde_json::json!({"id": 1, "since": "2018-02-30", "t": 1});
        assert!(m.fact(&JsonRecord(&rec), Utc::now()).is_err());
    }
}
