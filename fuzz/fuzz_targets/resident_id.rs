//! The resident ID number parser (GB 11643-1999) on arbitrary text: it
//! never panics; an accepted number has 18 characters, a matching check
//! character, and its mask hides the middle.
#![no_main]

use hedui_proto::resident_id::{check_character, mask, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let today = (2026, 11, 24);
    let masked = mask(text);
    if validate(text, today).is_ok() {
        assert_eq!(text.len(), 18, "{text:?}");
        let check = check_character(&text[..17]);
        assert_eq!(text.chars().last(), Some(check), "{text:?}");
        assert!(
            !masked.contains(&text[6..14]),
            "{masked:?} shows the middle of {text:?}"
        );
    }
});
