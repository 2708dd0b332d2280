//! Checks the values of facts, whoever made them: a source's answer is
//! outside the broker's control, and a value no department can hold
//! (negative money, an enum value the contract does not define, a date
//! that is not a date) must become a named error, not a wrong report.

use std::sync::OnceLock;

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
    static FACT: OnceLock<MessageDescriptor> = OnceLock::new();
    let desc = FACT.get_or_init(|| {
        descriptor_pool()
            .get_message_by_name("hedui.v1.Fact")
            .expect("hedui.v1.Fact is described")
    });
    // Every answer's every fact comes here: the encoded fact is walked
    // first, with no allocation; only a fact that walk finds wrong (or
    // cannot read) is decoded into a dynamic message, whose walk names
    // the field.
    if values_hold(desc, &prost::Message::encode_to_vec(fact), 0) {
        return Ok(());
    }
    what_is_wrong(desc, fact)
}

/// The dynamic-message walk of [`check_fact_values`], naming the field.
fn what_is_wrong(desc: &MessageDescriptor, fact: &Fact) -> Result<(), String> {
    let mut m = DynamicMessage::new(desc.clone());
    m.transcode_from(fact)
        .map_err(|e| format!("the fact does not encode: {e}"))?;
    check_message(&m, "", 0)
}

/// Whether the message of type `desc` encoded in `buf` holds to what
/// [`check_message`] checks: no negative money or area, no undefined enum
/// value, every `CivilDate` a real date. `false` also for what it cannot
/// read; [`check_message`] then says what is wrong.
fn values_hold(desc: &MessageDescriptor, mut buf: &[u8], depth: usize) -> bool {
    use prost::encoding::decode_varint;
    if depth > 8 {
        return false;
    }
    let date = desc.full_name() == "hedui.v1.CivilDate";
    let (mut year, mut month, mut day) = (0i64, 0i64, 0i64);
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else {
            return false;
        };
        let Ok(number) = u32::try_from(key >> 3) else {
            return false;
        };
        let field = desc.get_field(number);
        let kind = field.as_ref().map(FieldDescriptor::kind);
        match key & 7 {
            0 => {
                let Ok(v) = decode_varint(&mut buf) else {
                    return false;
                };
                if date {
                    match field.as_ref().map(FieldDescriptor::name) {
                        Some("year") => year = i64::from(v as i32),
                        Some("month") => month = i64::from(v as i32),
                        Some("day") => day = i64::from(v as i32),
                        _ => {}
                    }
                } else if let (Some(f), Some(k)) = (&field, &kind)
                    && !scalar_holds(f, k, v)
                {
                    return false;
                }
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                let Some(b) = take(&mut buf, width) else {
                    return false;
                };
                if let (Some(f), Some(k)) = (&field, &kind)
                    && !fixed_holds(f, k, b)
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
                match (&field, &kind) {
                    (Some(_), Some(Kind::Message(m))) if !values_hold(m, bytes, depth + 1) => {
                        return false;
                    }
                    (Some(_), Some(Kind::Message(_))) => {}
                    // A packed list of numbers.
                    (Some(f), Some(k))
                        if f.is_list() && !matches!(k, Kind::String | Kind::Bytes) =>
                    {
                        let width = match k {
                            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Some(4),
                            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Some(8),
                            _ => None,
                        };
                        let mut packed = bytes;
                        while !packed.is_empty() {
                            let holds =
                                match width {
                                    Some(width) => take(&mut packed, width)
                                        .is_some_and(|b| fixed_holds(f, k, b)),
                                    None => decode_varint(&mut packed)
                                        .is_ok_and(|v| scalar_holds(f, k, v)),
                                };
                            if !holds {
                                return false;
                            }
                        }
                    }
                    _ => {}
                }
            }
            // Groups are not in the contract.
            _ => return false,
        }
    }
    if date {
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

/// Whether the fixed-width value `b` (4 or 8 little-endian bytes) of
/// `field` holds: not negative where it must not be.
fn fixed_holds(field: &FieldDescriptor, kind: &Kind, b: &[u8]) -> bool {
    let negative = match kind {
        Kind::Sfixed32 => b.try_into().is_ok_and(|b| i32::from_le_bytes(b) < 0),
        Kind::Sfixed64 => b.try_into().is_ok_and(|b| i64::from_le_bytes(b) < 0),
        _ => false,
    };
    !(negative && non_negative(field))
}

/// Whether money and areas are named so: never negative.
fn non_negative(field: &FieldDescriptor) -> bool {
    let name = field.name();
    name.ends_with("_fen") || name.ends_with("_centi_m2")
}

/// Whether the varint `v` of `field` (of kind `kind`) holds: not negative
/// where it must not be, a defined value of an enum.
fn scalar_holds(field: &FieldDescriptor, kind: &Kind, v: u64) -> bool {
    let negative = match kind {
        Kind::Int64 => (v as i64) < 0,
        Kind::Int32 => (v as i32) < 0,
        Kind::Sint64 | Kind::Sint32 => v & 1 == 1,
        Kind::Enum(e) => return e.get_value(v as i32).is_some(),
        _ => false,
    };
    !(negative && non_negative(field))
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

    /// The walk over the encoded fact accepts exactly what the dynamic
    /// message walk accepts.
    #[test]
    fn the_encoded_walk_agrees_with_the_dynamic_one() {
        use hedui_proto::v1::{
            CivilDate, HouseholdRegistration, RegisteredPerson, SocialAssistance,
        };
        let desc = descriptor_pool()
            .get_message_by_name("hedui.v1.Fact")
            .unwrap();
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
            assert_eq!(values_hold(&desc, &encoded, 0), *holds, "case {i}");
            assert_eq!(what_is_wrong(&desc, f).is_ok(), *holds, "case {i}");
            assert_eq!(check_fact_values(f).is_ok(), *holds, "case {i}");
        }
        // What it cannot read is not taken as holding.
        assert!(!values_hold(&desc, &[0x0a, 0x05, b'r'], 0));
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
                values_hold(&desc, &encoded, 0),
                what_is_wrong(&desc, &mutant).is_ok(),
                "{mutant:?}"
            );
        }
        assert!(decoded > 1_000, "{decoded} mutants decoded");
    }
}
