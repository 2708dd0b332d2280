//! Time in the broker: reports use UTC timestamps; dates that rules compare
//! (acquisitions, licence validity, birth dates) are China civil dates
//! (UTC+8).

use std::time::SystemTime;

use chrono::{Datelike, FixedOffset, NaiveDate, Utc};

/// China Standard Time, UTC+8, without daylight saving.
pub fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

/// Today's date in China.
pub fn china_date() -> NaiveDate {
    Utc::now().with_timezone(&china()).date_naive()
}

/// Today's date in China as `(year, month, day)`.
pub fn china_today() -> (i32, u32, u32) {
    let d = china_date();
    (d.year(), d.month(), d.day())
}

/// A protobuf timestamp of a system time.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}
