//! Request templates: where a lookup's values go in the department's
//! request. Placeholders are `{person_id}`, `{person_ids}` (batch requests,
//! a JSON body value only), `{request_id}`, `{purpose}`,
//! `{consent_reference}` and `{source_id}`. Values are always encoded for
//! where they go (percent-encoded in the URL, JSON-escaped in the body):
//! a person id can never change the request's shape.

use serde_json::Value as Json;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 6] = [
    "person_id",
    "person_ids",
    "request_id",
    "purpose",
    "consent_reference",
    "source_id",
];

/// The values of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vars<'a> {
    /// The person, in per-person requests.
    pub(crate) person_id: Option<&'a str>,
    /// The persons, in batch requests.
    pub(crate) person_ids: &'a [String],
    pub(crate) request_id: &'a str,
    pub(crate) purpose: &'a str,
    pub(crate) consent_reference: &'a str,
    pub(crate) source_id: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> &str {
        match name {
            "person_id" => self.person_id.unwrap_or_default(),
            "request_id" => self.request_id,
            "purpose" => self.purpose,
            "consent_reference" => self.consent_reference,
            "source_id" => self.source_id,
            _ => "",
        }
    }
}

/// The placeholders in `text`, in order.
///
/// # Errors
/// A message naming an unknown placeholder or an unclosed brace.
pub(crate) fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: '{{' without '}}'"))?;
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "{text:?}: unknown placeholder {{{name}}}; known: {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// `text` with every placeholder replaced by its value passed through
/// `encode`.
pub(crate) fn render(text: &str, vars: &Vars<'_>, encode: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&encode(vars.get(&after[..end])));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but the unreserved characters of RFC 3986,
/// so a value stays one path segment or one query value.
pub(crate) fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The placeholders used anywhere in a JSON body template.
pub(crate) fn body_placeholders(body: &Json) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    walk(body, &mut |s| {
        for p in placeholders(s)? {
            if p == "person_ids" && s != "{person_ids}" {
                return Err(format!(
                    "{s:?}: {{person_ids}} is a list and must be a whole value, \"{{person_ids}}\""
                ));
            }
            out.push(p.to_owned());
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(v: &Json, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match v {
        Json::String(s) => f(s),
        Json::Array(items) => items.iter().try_for_each(|x| walk(x, f)),
        Json::Object(m) => m.values().try_for_each(|x| walk(x, f)),
        Json::Null | Json::Bool(_) | Json::Number(_) => Ok(()),
    }
}

/// The body for one request: the template with every placeholder replaced
/// by a JSON string (the whole value `"{person_ids}"` by a list of them).
pub(crate) fn render_body(body: &Json, vars: &Vars<'_>) -> Json {
    match body {
        Json::String(s) if s == "{person_ids}" => Json::Array(
            vars.person_ids
                .iter()
                .map(|p| Json::String(p.clone()))
                .collect(),
        ),
        Json::String(s) => Json::String(render(s, vars, &|v| v.to_owned())),
        Json::Array(items) => Json::Array(items.iter().map(|x| render_body(x, vars)).collect()),
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), render_body(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(person: &'a str, ids: &'a [String]) -> Vars<'a> {
        Vars {
            person_id: Some(person),
            person_ids: ids,
            request_id: "r-1",
            purpose: "PURPOSE_DIBAO_APPLICATION",
            consent_reference: "SQ 1",
            source_id: "bank",
        }
    }

    #[test]
    fn placeholders_are_checked_and_encoded() {
        assert_eq!(
            placeholders("/a/{person_id}?r={request_id}").unwrap(),
            ["person_id", "request_id"]
        );
        let e = placeholders("/a/{personid}").unwrap_err();
        assert!(e.contains("unknown placeholder {personid}"), "{e}");
        assert!(placeholders("/a/{person_id").is_err());
        let injected = "' OR 1=1 --/../x";
        let out = render("/c/{person_id}/a", &vars(injected, &[]), &percent_encode);
        assert_eq!(out, "/c/%27%20OR%201%3D1%20--%2F..%2Fx/a");
    }

    #[test]
    fn bodies_take_values_as_json() {
        let ids = vec!["1".to_owned(), "2\"}".to_owned()];
        let body = serde_json::json!({
            "head": {"seq": "{request_id}", "why": "{purpose}"},
            "id": "{person_id}", "ids": "{person_ids}", "n": 3
        });
        assert_eq!(
            body_placeholders(&body).unwrap().len(),
            4,
            "person_id, person_ids, purpose, request_id"
        );
        let out = render_body(&body, &vars("x\"y", &ids));
        assert_eq!(out["id"], "x\"y");
        assert_eq!(out["ids"], serde_json::json!(["1", "2\"}"]));
        assert_eq!(out["head"]["seq"], "r-1");
        assert!(body_placeholders(&serde_json::json!({"x": "a{person_ids}"})).is_err());
    }
}
