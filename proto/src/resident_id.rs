//! Resident identity numbers (居民身份证号码) per GB 11643-1999: a 6-digit
//! address code, an 8-digit birth date, a 3-digit sequence (odd for men,
//! even for women) and a check character computed with ISO 7064 MOD 11-2.
//!
//! The address code is where the number was first issued; it never says
//! where a person's hukou is now.

use std::fmt;

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// Why a string is not a valid resident identity number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidId {
    /// Not 18 characters long.
    Length(usize),
    /// A character other than a digit in the first 17, or other than a digit
    /// or `X` in the last.
    Character(usize),
    /// The birth date (characters 7 to 14) is not a real date, or is in the
    /// future, or before 1900.
    BirthDate(String),
    /// The check character does not match the other 17.
    CheckCharacter {
        /// The check character the number should end with.
        expected: char,
        /// The check character it ends with.
        found: char,
    },
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidId::Length(n) => write!(f, "must be 18 characters, got {n}"),
            InvalidId::Character(i) => write!(
                f,
                "character {} must be a digit{}",
                i + 1,
                if *i == 17 { " or X" } else { "" }
            ),
            InvalidId::BirthDate(d) => write!(f, "birth date {d} is not a possible date"),
            InvalidId::CheckCharacter { expected, found } => write!(
                f,
                "check character is {found}, GB 11643-1999 requires {expected}"
            ),
        }
    }
}

impl std::error::Error for InvalidId {}

/// The check character for the first 17 digits of a number.
///
/// # Panics
/// If `first17` is not 17 ASCII digits.
pub fn check_character(first17: &str) -> char {
    assert!(first17.len() == 17 && first17.bytes().all(|b| b.is_ascii_digit()));
    let sum: u32 = first17
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize]
}

/// Checks a resident identity number: length, characters, birth date (a
/// real date between 1900-01-01 and `today`, given as `(year, month, day)`)
/// and check character. A lower-case `x` is refused: numbers are compared
/// as strings everywhere, so they must be written one way.
///
/// # Errors
/// The first thing found wrong.
pub fn validate(id: &str, today: (i32, u32, u32)) -> Result<(), InvalidId> {
    let n = id.chars().count();
    if n != 18 {
        return Err(InvalidId::Length(n));
    }
    for (i, c) in id.chars().enumerate() {
        let ok = c.is_ascii_digit() || (i == 17 && c == 'X');
        if !ok {
            return Err(InvalidId::Character(i));
        }
    }
    let year: i32 = id[6..10].parse().expect("digits");
    let month: u32 = id[10..12].parse().expect("digits");
    let day: u32 = id[12..14].parse().expect("digits");
    let date = id[6..14].to_owned();
    if year < 1900 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(InvalidId::BirthDate(date));
    }
    if (year, month, day) > today {
        return Err(InvalidId::BirthDate(date));
    }
    let expected = check_character(&id[..17]);
    let found = id.chars().nth(17).expect("length checked");
    if expected != found {
        return Err(InvalidId::CheckCharacter { expected, found });
    }
    Ok(())
}

/// Number of days in a month of the proleptic Gregorian calendar.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Builds a valid number from an address code, a birth date and a sequence
/// number (0 to 999).
pub fn compose(address_code: &str, year: i32, month: u32, day: u32, sequence: u32) -> String {
    let first17 = format!("{address_code}{year:04}{month:02}{day:02}{sequence:03}");
    let check = check_character(&first17);
    format!("{first17}{check}")
}

/// Masks a number for logs and displays: the address code and the last
/// two characters stay, e.g. `511703**********1X`.
pub fn mask(id: &str) -> String {
    let n = id.chars().count();
    if n < 8 {
        return "*".repeat(n);
    }
    id.chars()
        .enumerate()
        .map(|(i, c)| if i < 6 || i >= n - 2 { c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: (i32, u32, u32) = (2026, 11, 23);

    #[test]
    fn accepts_known_valid_numbers() {
        // The example from GB 11643-1999 itself.
        assert_eq!(validate("11010519491231002X", TODAY), Ok(()));
        assert_eq!(
            validate("440524188001010014", TODAY),
            Err(InvalidId::BirthDate("18800101".into()))
        );
        let id = compose("511703", 1980, 2, 29, 123);
        assert_eq!(validate(&id, TODAY), Ok(()));
    }

    #[test]
    fn refuses_wrong_check_character() {
        let err = validate("110105194912310021", TODAY).unwrap_err();
        assert_eq!(
            err,
            InvalidId::CheckCharacter {
                expected: 'X',
                found: '1'
            }
        );
        assert!(err.to_string().contains("requires X"));
    }

    #[test]
    fn refuses_wrong_length_and_characters() {
        assert_eq!(validate("1234", TODAY), Err(InvalidId::Length(4)));
        assert_eq!(
            validate("11010519491231002x", TODAY),
            Err(InvalidId::Character(17))
        );
        assert_eq!(
            validate("1101051949123100AX", TODAY),
            Err(InvalidId::Character(16))
        );
    }

    #[test]
    fn refuses_impossible_birth_dates() {
        for (y, m, d) in [(1981, 2, 29), (1990, 13, 1), (1990, 4, 31), (2030, 1, 1)] {
            let first17 = format!("511703{y:04}{m:02}{d:02}123");
            let id = format!("{first17}{}", check_character(&first17));
            assert!(
                matches!(validate(&id, TODAY), Err(InvalidId::BirthDate(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn masks_the_middle() {
        assert_eq!(mask("11010519491231002X"), "110105**********2X");
    }
}
