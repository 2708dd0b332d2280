//! The HTTP/JSON mapping on arbitrary bodies and query strings, for every
//! request message of the API's routes: it never panics; an accepted
//! request encodes a message that decodes again; a refusal is
//! INVALID_ARGUMENT naming a field or `body`/`query`. And arbitrary bytes
//! turned into JSON as each answer message never panic.
#![no_main]

use hedui::http::{ROUTES, json};
use libfuzzer_sys::fuzz_target;
use prost_reflect::DynamicMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let route = &ROUTES[usize::from(pick) % ROUTES.len()];
    let Some(method) = json::method(route.rpc) else {
        panic!("{} has no method", route.rpc);
    };
    // The body, then (after a NUL) a query string.
    let (body, query) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (
            &rest[..i],
            std::str::from_utf8(&rest[i + 1..]).unwrap_or(""),
        ),
        None => (rest, ""),
    };
    let input = method.input();
    match json::request(&input, body, &[], query) {
        Ok(bytes) => {
            DynamicMessage::decode(input, bytes.as_slice()).expect("an accepted request decodes");
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            let head = status.message().split(": ").next().unwrap_or_default();
            assert!(!head.is_empty(), "{status:?}");
        }
    }
    let _ = json::to_json(&method.output(), rest);
});
