//! Checks the values of facts, whoever made them: a source's answer is
//! outside the broker's control, and a value no department can hold
//! (negative money, an enum value the contract does not define, a date
//! that is not a date) must become a named error, not a wrong report.

use std::{cell::RefCell, collections::HashMap, sync::OnceLock};

use chrono::NaiveDate;
use hedui_proto::v1::Fact;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as Dyn,
};

use crate::mapping::descriptor_pool;

/// Checks the values of a fact: money and areas are not negative, every enum
/// value is one the contract defines, every date is a real date.
///
/// # Errors
/// A message naming the field and the value.
pub fn check_fact_values(fact: &Fact) -> Result<(), String> {
    thread_local! {
        /// The encoding of the fact being checked, its capacity kept
        /// from one fact to the next.
        static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    // Every answer's every fact comes here: the encoded fact is walked
    // first, with the table of the contract's types and no allocation;
    // only a fact that walk finds wrong (or cannot read) is decoded into a
    // dynamic message, whose walk names the field.
    let shapes = shapes();
    let holds = ENCODED.with_borrow_mut(|buf| {
        buf.clear();
        let holds =
            prost::Message::encode(fact, buf).is_ok() && values_hold(shapes, shapes.fact, buf, 0);
        if buf.capacity() > KEPT_CAPACITY {
            *buf = Vec::new();
        }
        holds
    });
    if holds {
        return Ok(());
    }
    what_is_wrong(&shapes.fact_descriptor, fact)
}

/// Largest encoding buffer a thread keeps between facts.
const KEPT_CAPACITY: usize = 64 * 1024;

/// The dynamic-message walk of [`check_fact_values`], naming the field.
fn what_is_wrong(desc: &MessageDescriptor, fact: &Fact) -> Result<(), String> {
    let mut m = DynamicMessage::new(desc.clone());
    m.transcode_from(fact)
        .map_err(|e| format!("the fact does not encode: {e}"))?;
    check_message(&m, "", 0)
}

/// What the encoded walk needs to know of the message types a fact can
/// hold, read once from the descriptors: looking a field up by number is
/// a binary search in a short slice, not a descriptor lookup.
struct Shapes {
    /// Every message type reachable from `hedui.v1.Fact`; a
    /// [`Check::Message`] is an index into it.
    all: Vec<Shape>,
    /// The index of `hedui.v1.Fact`.
    fact: usize,
    /// `hedui.v1.Fact`, for the dynamic walk.
    fact_descriptor: MessageDescriptor,
}

/// One message type of [`Shapes`].
struct Shape {
    /// `hedui.v1.CivilDate`: its year, month and day make a real date.
    date: bool,
    /// The type's fields by number, sorted; a number not here is an
    /// unknown field, skipped as the dynamic walk skips it.
    fields: Vec<(u32, Rule)>,
}

/// What holds of one field's values.
struct Rule {
    check: Check,
    /// A repeated field of numbers, which may come packed: how each
    /// number is written.
    packed: Option<Packed>,
    /// Money (`*_fen`) or an area (`*_centi_m2`): never negative.
    non_negative: bool,
    /// In a `CivilDate`: which part of the date.
    date_part: Option<DatePart>,
}

/// How the numbers of a packed list are written.
#[derive(Clone, Copy)]
enum Packed {
    Varints,
    /// Little-endian, this many bytes each (4 or 8).
    Fixed(usize),
}

#[derive(Clone, Copy)]
enum DatePart {
    Year,
    Month,
    Day,
}

/// How one value of a field is checked.
enum Check {
    /// `int64`: negative as a two's complement 64-bit varint.
    Int64,
    /// `int32`: negative as its low 32 bits.
    Int32,
    /// `sint32`, `sint64`: negative when the zigzag varint's low bit is set.
    Zigzag,
    Sfixed32,
    Sfixed64,
    /// An enum, with the numbers it defines, sorted.
    Enum(Vec<i32>),
    /// A message, by its index in [`Shapes::all`].
    Message(usize),
    /// Nothing to check (strings, bytes, unsigned and floating numbers,
    /// booleans).
    Any,
}

fn shapes() -> &'static Shapes {
    static SHAPES: OnceLock<Shapes> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let fact_descriptor = descriptor_pool()
            .get_message_by_name("hedui.v1.Fact")
            .expect("hedui.v1.Fact is described");
        let mut all = Vec::new();
        let mut index = HashMap::new();
        let fact = shape_of(&fact_descriptor, &mut all, &mut index);
        Shapes {
            all,
            fact,
            fact_descriptor,
        }
    })
}

/// The index of `desc`'s shape in `all`, read (with the shapes of the
/// messages it holds) on first sight.
fn shape_of(
    desc: &MessageDescriptor,
    all: &mut Vec<Shape>,
    index: &mut HashMap<String, usize>,
) -> usize {
    if let Some(&i) = index.get(desc.full_name()) {
        return i;
    }
    let i = all.len();
    let date = desc.full_name() == "hedui.v1.CivilDate";
    all.push(Shape {
        date,
        fields: Vec::new(),
    });
    index.insert(desc.full_name().to_owned(), i);
    let mut fields = Vec::new();
    for field in desc.fields() {
        let kind = field.kind();
        let check = match &kind {
            Kind::Int64 => Check::Int64,
            Kind::Int32 => Check::Int32,
            Kind::Sint32 | Kind::Sint64 => Check::Zigzag,
            Kind::Sfixed32 => Check::Sfixed32,
            Kind::Sfixed64 => Check::Sfixed64,
            Kind::Enum(e) => {
                let mut numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
                numbers.sort_unstable();
                numbers.dedup();
                Check::Enum(numbers)
            }
            Kind::Message(m) => Check::Message(shape_of(m, all, index)),
            _ => Check::Any,
        };
        let packed = (field.is_list()
            && !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_)))
        .then_some(match kind {
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Packed::Fixed(4),
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Packed::Fixed(8),
            _ => Packed::Varints,
        });
        let date_part = match (date, field.name()) {
            (true, "year") => Some(DatePart::Year),
            (true, "month") => Some(DatePart::Month),
            (true, "day") => Some(DatePart::Day),
            _ => None,
        };
        let rule = Rule {
            check,
            packed,
            non_negative: non_negative(&field),
            date_part,
        };
        fields.push((field.number(), rule));
    }
    fields.sort_unstable_by_key(|(number, _)| *number);
    all[i].fields = fields;
    i
}

/// Whether the message of shape `shape` encoded in `buf` holds to what
/// [`check_message`] checks: no negative money or area, no undefined enum
/// value, every `CivilDate` a real date. `false` also for what it cannot
/// read; [`check_message`] then says what is wrong.
fn values_hold(shapes: &Shapes, shape: usize, mut buf: &[u8], depth: usize) -> bool {
    use prost::encoding::decode_varint;
    if depth > 8 {
        return false;
    }
    let shape = &shapes.all[shape];
    let (mut year, mut month, mut day) = (0i64, 0i64, 0i64);
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else {
            return false;
        };
        let Ok(number) = u32::try_from(key >> 3) else {
            return false;
        };
        let rule = shape
            .fields
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|at| &shape.fields[at].1);
        match key & 7 {
            0 => {
                let Ok(v) = decode_varint(&mut buf) else {
                    return false;
                };
                if shape.date {
                    match rule.and_then(|r| r.date_part) {
                        Some(DatePart::Year) => year = i64::from(v as i32),
                        Some(DatePart::Month) => month = i64::from(v as i32),
                        Some(DatePart::Day) => day = i64::from(v as i32),
                        None => {}
                    }
                } else if let Some(r) = rule
                    && !scalar_holds(r, v)
                {
                    return false;
                }
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                let Some(b) = take(&mut buf, width) else {
                    return false;
                };
                if let Some(r) = rule
                    && !fixed_holds(r, b)
                {
                    return false;
                }
            }
            2 => {
                let Ok(len) = decode_varint(&mut buf) else {
                    return false;
                };
                let Some((bytes, rest)) = usize::try_from(len)
                    .ok()
                    .and_then(|len| buf.split_at_checked(len))
                else {
                    return false;
                };
                buf = rest;
                let Some(r) = rule else { continue };
                if let Check::Message(m) = r.check {
                    if !values_hold(shapes, m, bytes, depth + 1) {
                        return false;
                    }
                } else if let Some(written) = r.packed {
                    let mut packed = bytes;
                    while !packed.is_empty() {
                        let holds = match written {
                            Packed::Fixed(width) => {
                                take(&mut packed, width).is_some_and(|b| fixed_holds(r, b))
                            }
                            Packed::Varints => {
                                decode_varint(&mut packed).is_ok_and(|v| scalar_holds(r, v))
                            }
                        };
                        if !holds {
                            return false;
                        }
                    }
                }
            }
            // Groups are not in the contract.
            _ => return false,
        }
    }
    if shape.date {
        return (1..=9999).contains(&year)
            && day > 0
            && u32::try_from(month)
                .is_ok_and(|mo| NaiveDate::from_ymd_opt(year as i32, mo, day as u32).is_some());
    }
    true
}

/// The next `n` bytes of `buf`, taken off it.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = buf.split_at_checked(n)?;
    *buf = rest;
    Some(head)
}

/// Whether the fixed-width value `b` (4 or 8 little-endian bytes) of a
/// field holds: not negative where it must not be.
fn fixed_holds(rule: &Rule, b: &[u8]) -> bool {
    let negative = match rule.check {
        Check::Sfixed32 => b.try_into().is_ok_and(|b| i32::from_le_bytes(b) < 0),
        Check::Sfixed64 => b.try_into().is_ok_and(|b| i64::from_le_bytes(b) < 0),
        _ => false,
    };
    !(negative && rule.non_negative)
}

/// Whether money and areas are named so: never negative.
fn non_negative(field: &FieldDescriptor) -> bool {
    let name = field.name();
    name.ends_with("_fen") || name.ends_with("_centi_m2")
}

/// Whether the varint `v` of a field holds: not negative where it must
/// not be, a defined value of an enum.
fn scalar_holds(rule: &Rule, v: u64) -> bool {
    let negative = match &rule.check {
        Check::Int64 => (v as i64) < 0,
        Check::Int32 => (v as i32) < 0,
        Check::Zigzag => v & 1 == 1,
        Check::Enum(numbers) => return numbers.binary_search(&(v as i32)).is_ok(),
        _ => false,
    };
    !(negative && rule.non_negative)
}

fn check_message(m: &DynamicMessage, path: &str, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err(format!("{path}: nested too deeply"));
    }
    if m.descriptor().full_name() == "hedui.v1.CivilDate" {
        let get = |n: &str| m.get_field_by_name(n).and_then(|v| v.as_i32()).unwrap_or(0);
        let (y, mo, d) = (get("year"), get("month"), get("day"));
        let ok = (1..=9999).contains(&y)
            && u32::try_from(mo).is_ok_and(|mo| NaiveDate::from_ymd_opt(y, mo, d as u32).is_some())
            && d > 0;
        if !ok {
            return Err(format!("{path}: {y:04}-{mo:02}-{d:02} is not a date"));
        }
        return Ok(());
    }
    for (field, value) in m.fields() {
        let at = if path.is_empty() {
            field.name().to_owned()
        } else {
            format!("{path}.{}", field.name())
        };
        check_value(&field, value, &at, depth)?;
    }
    Ok(())
}

fn check_value(field: &FieldDescriptor, v: &Dyn, at: &str, depth: usize) -> Result<(), String> {
    let name = field.name();
    let non_negative = non_negative(field);
    match v {
        Dyn::List(items) => {
            for (i, x) in items.iter().enumerate() {
                check_value(field, x, &format!("{at}[{i}]"), depth)?;
            }
            Ok(())
        }
        Dyn::I64(n) if non_negative && *n < 0 => Err(format!(
            "{at} is negative ({n}); {} cannot be",
            if name.ends_with("_fen") {
                "money"
            } else {
                "an area"
            }
        )),
        Dyn::I32(n) if non_negative && *n < 0 => Err(format!("{at} is negative ({n})")),
        Dyn::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) if e.get_value(*n).is_none() => {
                Err(format!("{at} is {n}, which is not a value of {}", e.name()))
            }
            _ => Ok(()),
        },
        Dyn::Message(m) => check_message(m, at, depth + 1),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{FinancialAccount, fact::Value};

    use super::*;

    #[test]
    fn fact_values_are_checked() {
        let fact = |v: Value| Fact {
            record_id: "r".into(),
            as_of: None,
            value: Some(v),
        };
        let ok = fact(Value::FinancialAccount(FinancialAccount {
            balance_fen: 5,
            account_type: 1,
            ..Default::default()
        }));
        check_fact_values(&ok).unwrap();
        let neg = fact(Value::FinancialAccount(FinancialAccount {
            balance_fen: -5,
            ..Default::default()
        }));
        let e = check_fact_values(&neg).unwrap_err();
        assert_eq!(
            e,
            "financial_account.balance_fen is negative (-5); money cannot be"
        );
        let bad_enum = fact(Value::FinancialAccount(FinancialAccount {
            account_type: 42,
            ..Default::default()
        }));
        let e = check_fact_values(&bad_enum).unwrap_err();
        assert_eq!(
            e,
            "financial_account.account_type is 42, which is not a value of AccountType"
        );
        let bad_date = fact(Value::SocialAssistance(hedui_proto::v1::SocialAssistance {
            since: Some(hedui_proto::v1::CivilDate::ymd(2018, 2, 30)),
            ..Default::default()
        }));
        assert!(
            check_fact_values(&bad_date)
                .unwrap_err()
                .contains("not a date")
        );
    }

    /// The table holds every message type a fact can hold, each once, with
    /// every field and every enum's numbers.
    #[test]
    fn the_table_knows_every_field_a_fact_can_hold() {
        let shapes = shapes();
        let mut seen = HashMap::new();
        let mut stack = vec![(shapes.fact_descriptor.clone(), shapes.fact)];
        while let Some((desc, at)) = stack.pop() {
            if let Some(before) = seen.insert(desc.full_name().to_owned(), at) {
                assert_eq!(before, at, "{} has two shapes", desc.full_name());
                continue;
            }
            let shape = &shapes.all[at];
            assert_eq!(shape.date, desc.full_name() == "hedui.v1.CivilDate");
            assert_eq!(
                shape.fields.len(),
                desc.fields().len(),
                "{}",
                desc.full_name()
            );
            for field in desc.fields() {
                let (_, rule) = shape
                    .fields
                    .iter()
                    .find(|(n, _)| *n == field.number())
                    .unwrap_or_else(|| panic!("{} is not in the table", field.full_name()));
                assert_eq!(rule.non_negative, non_negative(&field), "{}", field.name());
                assert_eq!(rule.date_part.is_some(), shape.date, "{}", field.name());
                match (field.kind(), &rule.check) {
                    (Kind::Message(m), Check::Message(i)) => stack.push((m, *i)),
                    (Kind::Enum(e), Check::Enum(numbers)) => {
                        assert_eq!(numbers.len(), e.values().count(), "{}", e.name());
                        assert!(numbers.iter().all(|n| e.get_value(*n).is_some()));
                    }
                    (Kind::Int64, Check::Int64)
                    | (Kind::Int32, Check::Int32)
                    | (Kind::Sint32 | Kind::Sint64, Check::Zigzag)
                    | (Kind::Sfixed32, Check::Sfixed32)
                    | (Kind::Sfixed64, Check::Sfixed64) => {}
                    (
                        Kind::String
                        | Kind::Bytes
                        | Kind::Bool
                        | Kind::Uint32
                        | Kind::Uint64
                        | Kind::Fixed32
                        | Kind::Fixed64
                        | Kind::Float
                        | Kind::Double,
                        Check::Any,
                    ) => {}
                    (kind, _) => panic!("{} of kind {kind:?} has the wrong check", field.name()),
                }
            }
        }
        assert_eq!(seen.len(), shapes.all.len());
        assert!(seen.contains_key("hedui.v1.CivilDate"));
        assert!(seen.len() > 20, "{} message types", seen.len());
    }

    /// The walk over the encoded fact accepts exactly what the dynamic
    /// message walk accepts.
    #[test]
    fn the_encoded_walk_agrees_with_the_dynamic_one() {
        use hedui_proto::v1::{
            CivilDate, HouseholdRegistration, RegisteredPerson, SocialAssistance,
        };
        let shapes = shapes();
        let desc = &shapes.fact_descriptor;
        let fact = |v: Value| Fact {
            record_id: "r".into(),
            as_of: Some(prost_types::Timestamp {
                seconds: -5,
                nanos: 3,
            }),
            value: Some(v),
        };
        let account = |balance_fen, account_type| {
            fact(Value::FinancialAccount(FinancialAccount {
                balance_fen,
                account_type,
                ..Default::default()
            }))
        };
        let assistance = |since: Option<CivilDate>, monthly_fen| {
            fact(Value::SocialAssistance(SocialAssistance {
                since,
                monthly_fen,
                ..Default::default()
            }))
        };
        let person = |status, birth_date| RegisteredPerson {
            person_id: "p".into(),
            relation: 1,
            status,
            birth_date,
            ..Default::default()
        };
        let household = |members| {
            fact(Value::HouseholdRegistration(HouseholdRegistration {
                household_number: "1".into(),
                hukou_type: 2,
                members,
                ..Default::default()
            }))
        };
        let date = |y, m, d| Some(CivilDate::ymd(y, m, d));
        let cases = [
            (account(5, 1), true),
            (account(0, 0), true),
            (account(i64::MAX, 2), true),
            (account(-5, 1), false),
            (account(i64::MIN, 1), false),
            (account(5, 42), false),
            (account(5, -1), false),
            (assistance(date(2018, 2, 28), 100), true),
            (assistance(date(2024, 2, 29), 100), true),
            (assistance(date(2018, 2, 30), 100), false),
            (assistance(date(0, 1, 1), 100), false),
            (assistance(date(2018, 0, 1), 100), false),
            (assistance(date(2018, 1, -1), 100), false),
            (assistance(Some(CivilDate::default()), 100), false),
            (assistance(None, -1), false),
            (household(vec![person(1, date(1980, 1, 1)); 3]), true),
            (
                household(vec![person(1, date(1980, 1, 1)), person(99, None)]),
                false,
            ),
            (
                household(vec![person(1, None), person(1, date(1980, 13, 1))]),
                false,
            ),
            (Fact::default(), true),
        ];
        for (i, (f, holds)) in cases.iter().enumerate() {
            let encoded = prost::Message::encode_to_vec(f);
            assert_eq!(
                values_hold(shapes, shapes.fact, &encoded, 0),
                *holds,
                "case {i}"
            );
            assert_eq!(what_is_wrong(desc, f).is_ok(), *holds, "case {i}");
            assert_eq!(check_fact_values(f).is_ok(), *holds, "case {i}");
        }
        // What it cannot read is not taken as holding.
        assert!(!values_hold(shapes, shapes.fact, &[0x0a, 0x05, b'r'], 0));
        // Mutants of the cases: every byte string that decodes as a fact
        // gets the same verdict from both walks (a fixed xorshift, so the
        // same mutants every run).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0;
        for round in 0..20_000 {
            let (f, _) = &cases[round % cases.len()];
            let mut bytes = prost::Message::encode_to_vec(f);
            for _ in 0..=(next() % 3) {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let Ok(mutant) = <Fact as prost::Message>::decode(bytes.as_slice()) else {
                continue;
            };
            decoded += 1;
            let encoded = prost::Message::encode_to_vec(&mutant);
            assert_eq!(
                values_hold(shapes, shapes.fact, &encoded, 0),
                what_is_wrong(desc, &mutant).is_ok(),
                "{mutant:?}"
            );
        }
        assert!(decoded > 1_000, "{decoded} mutants decoded");
    }
}
