//! JSON in and out of the contract's messages: the proto3 canonical JSON
//! mapping, with the proto field names (`applicant_id`, as the gRPC error
//! messages name them), through the descriptors the gRPC services are
//! generated from (so the JSON face cannot drift from the contract).
//!
//! A request is read as JSON, completed with the path and query
//! parameters, checked against the request message (unknown fields and
//! wrong types are refused naming the field) and encoded as protobuf for
//! the gRPC service; an answer goes the other way.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use tonic::Status;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(hedui_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into hedui-proto decodes")
});

/// The descriptors of every hedui message and service.
pub fn pool() -> &'static DescriptorPool {
    &POOL
}

/// The method of a gRPC path (`/hedui.v1.VerificationService/Verify`).
pub fn method(rpc: &str) -> Option<MethodDescriptor> {
    let (service, method) = rpc.trim_start_matches('/').split_once('/')?;
    pool()
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
}

/// How answers are written: proto field names, 64-bit integers as
/// strings, defaults left out (absent means the default).
fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true)
}

/// The JSON of an encoded `desc` message.
///
/// # Errors
/// `INTERNAL` when the bytes are not a `desc` message (a broker bug).
pub fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Value, Status> {
    let message = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| {
        Status::internal(format!("answer {} does not decode: {e}", desc.full_name()))
    })?;
    message
        .serialize_with_options(serde_json::value::Serializer, &serialize_options())
        .map_err(|e| Status::internal(format!("answer {} as JSON: {e}", desc.full_name())))
}

/// The JSON of a generated message, by its full name (`hedui.v1.Report`).
///
/// # Errors
/// `INTERNAL` when `name` is not a message of the contract.
pub fn message_json<M: prost::Message>(name: &str, message: &M) -> Result<Value, Status> {
    let desc = pool()
        .get_message_by_name(name)
        .ok_or_else(|| Status::internal(format!("no message {name}")))?;
    to_json(&desc, &message.encode_to_vec())
}

/// A request of `desc` from a JSON body (empty: `{}`), path parameters
/// (each fills the top-level field of its name) and a query string
/// (`field=value&nested.field=value`), encoded as protobuf.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field or parameter that does not fit.
pub fn request(
    desc: &MessageDescriptor,
    body: &[u8],
    path: &[(&str, String)],
    query: &str,
) -> Result<Vec<u8>, Status> {
    let mut value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| Status::invalid_argument(format!("body: not JSON: {e}")))?
    };
    let null = match &value {
        Value::Null => Some("body".to_owned()),
        Value::Object(fields) => first_null(desc, fields, ""),
        _ => None,
    };
    if let Some(path) = null {
        return Err(Status::invalid_argument(format!(
            "{path}: null is not accepted; leave the field out for its default"
        )));
    }
    let Value::Object(object) = &mut value else {
        return Err(Status::invalid_argument(format!(
            "body: must be a JSON object (a {})",
            desc.full_name()
        )));
    };
    for (name, given) in path {
        if desc.get_field_by_name(name).is_none() {
            return Err(Status::internal(format!(
                "path parameter {name} is not a field of {}",
                desc.full_name()
            )));
        }
        match object.get(*name) {
            Some(Value::String(s)) if s != given => {
                return Err(Status::invalid_argument(format!(
                    "{name}: the path says {given:?} and the body {s:?}; leave it out of the body"
                )));
            }
            _ => {
                object.insert((*name).to_owned(), Value::String(given.clone()));
            }
        }
    }
    if !query.is_empty() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| Status::invalid_argument(format!("query: cannot be read: {e}")))?;
        for (key, given) in pairs {
            let named = |part: &str| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            if !key.split('.').all(named) {
                return Err(Status::invalid_argument(format!(
                    "query: {key:?} is not a parameter name (field names, dotted for nested fields)"
                )));
            }
            put_query(desc, object, &key, &key, given)?;
        }
    }
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    let message = DynamicMessage::deserialize_with_options(
        desc.clone(),
        deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| {
        let path = track.path().to_string();
        if path == "." || path.is_empty() {
            Status::invalid_argument(format!("body: {e}"))
        } else {
            Status::invalid_argument(format!("{path}: {e}"))
        }
    })?;
    Ok(message.encode_to_vec())
}

/// The path of the first `null` given for a field of `desc` in `fields`
/// (the JSON mapping would read it as the default; the API refuses it, as
/// its schema does). Keys that are not fields of `desc` are left to the
/// deserializer, which refuses them as unknown fields: a path is only
/// ever built from field names.
fn first_null(desc: &MessageDescriptor, fields: &Map<String, Value>, at: &str) -> Option<String> {
    fields.iter().find_map(|(key, value)| {
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))?;
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        let inner = match field.kind() {
            Kind::Message(inner) => Some(inner),
            _ => None,
        };
        let nested = |value: &Value, path: &str| match (value, &inner) {
            (Value::Null, _) => Some(path.to_owned()),
            (Value::Object(fields), Some(inner)) => first_null(inner, fields, path),
            _ => None,
        };
        match value {
            Value::Array(items) if field.is_list() => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| nested(item, &format!("{path}[{i}]"))),
            _ => nested(value, &path),
        }
    })
}

/// Puts the query parameter `key` (the rest of it: `rest`) into `object`,
/// a `desc` message: strings as given (the JSON mapping reads numbers,
/// enums, timestamps and durations from strings), booleans as booleans,
/// repeated fields as lists.
fn put_query(
    desc: &MessageDescriptor,
    object: &mut Map<String, Value>,
    key: &str,
    rest: &str,
    given: String,
) -> Result<(), Status> {
    let (name, deeper) = match rest.split_once('.') {
        Some((name, deeper)) => (name, Some(deeper)),
        None => (rest, None),
    };
    let field = desc
        .get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{key}: no such query parameter of {}",
                desc.full_name()
            ))
        })?;
    if let Some(deeper) = deeper {
        let Kind::Message(inner) = field.kind() else {
            return Err(Status::invalid_argument(format!(
                "{key}: {name} has no fields"
            )));
        };
        if field.is_list() || field.is_map() {
            return Err(Status::invalid_argument(format!(
                "{key}: {name} is a list; send it in a body"
            )));
        }
        let slot = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner_object) = slot else {
            return Err(Status::invalid_argument(format!(
                "{key}: {name} given twice"
            )));
        };
        return put_query(&inner, inner_object, key, deeper, given);
    }
    let value = query_value(&field, key, given)?;
    if field.is_list() {
        match object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            _ => return Err(Status::invalid_argument(format!("{key}: given twice"))),
        }
    } else if object.insert(field.name().to_owned(), value).is_some() {
        return Err(Status::invalid_argument(format!(
            "{key}: given more than once"
        )));
    }
    Ok(())
}

fn query_value(field: &FieldDescriptor, key: &str, given: String) -> Result<Value, Status> {
    match field.kind() {
        Kind::Bool => match given.as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(Status::invalid_argument(format!(
                "{key}: must be true or false, not {given:?}"
            ))),
        },
        Kind::Message(m)
            if !matches!(
                m.full_name(),
                "google.protobuf.Timestamp" | "google.protobuf.Duration"
            ) =>
        {
            Err(Status::invalid_argument(format!(
                "{key}: is a message; name its fields ({key}.<field>=...)"
            )))
        }
        _ => Ok(Value::String(given)),
    }
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{
        GetChainStatusRequest, QueryRecordsRequest, VerifyRequest, WatchSourceHealthRequest,
    };

    use super::*;

    fn desc(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap()
    }

    #[test]
    fn every_service_method_has_a_descriptor() {
        assert!(method("/hedui.v1.VerificationService/Verify").is_some());
        assert!(method("/hedui.v1.AuditService/QueryRecords").is_some());
        assert!(method("/hedui.v1.Nope/Verify").is_none());
        assert!(method("nonsense").is_none());
    }

    #[test]
    fn a_body_becomes_the_message_with_proto_or_json_names() {
        let body = br#"{"request": {"applicant_id": "X", "purpose": "PURPOSE_DIBAO_APPLICATION", "operatorId": "op"}}"#;
        let bytes = request(&desc("hedui.v1.VerifyRequest"), body, &[], "").unwrap();
        let decoded = VerifyRequest::decode(bytes.as_slice()).unwrap();
        let r = decoded.request.unwrap();
        assert_eq!(r.applicant_id, "X");
        assert_eq!(r.operator_id, "op");
        assert_eq!(r.purpose, 1);
    }

    #[test]
    fn a_wrong_field_is_named() {
        let d = desc("hedui.v1.VerifyRequest");
        let e = request(&d, br#"{"request": {"applicant_id": 5}}"#, &[], "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("request.applicant_id: "),
            "{}",
            e.message()
        );
        let e = request(&d, br#"{"request": {"nope": "x"}}"#, &[], "").unwrap_err();
        assert!(e.message().contains("nope"), "{}", e.message());
        let e = request(&d, br#"{"request": {"purpose": "PURPOSE_NONE"}}"#, &[], "").unwrap_err();
        assert!(
            e.message().starts_with("request.purpose: "),
            "{}",
            e.message()
        );
        let e = request(&d, br#"{"request": {"deadline": null}}"#, &[], "").unwrap_err();
        assert!(
            e.message().starts_with("request.deadline: null"),
            "{}",
            e.message()
        );
        let e = request(&d, b"[1]", &[], "").unwrap_err();
        assert!(e.message().starts_with("body: "), "{}", e.message());
        let e = request(&d, b"{", &[], "").unwrap_err();
        assert!(e.message().starts_with("body: not JSON"), "{}", e.message());
    }

    #[test]
    fn query_and_path_parameters_fill_fields() {
        let bytes = request(
            &desc("hedui.v1.GetChainStatusRequest"),
            b"",
            &[],
            "auditor_id=aud%2007",
        )
        .unwrap();
        assert_eq!(
            GetChainStatusRequest::decode(bytes.as_slice())
                .unwrap()
                .auditor_id,
            "aud 07"
        );
        let bytes = request(
            &desc("hedui.v1.QueryRecordsRequest"),
            b"",
            &[],
            "page_size=5&filter.client=p1&filter.kind=AUDIT_RECORD_KIND_DENIED&filter.from_time=2026-01-01T00:00:00Z",
        )
        .unwrap();
        let q = QueryRecordsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(q.page_size, 5);
        let f = q.filter.unwrap();
        assert_eq!(f.client, "p1");
        assert_eq!(f.kind, 2);
        assert!(f.from_time.is_some());
        let bytes = request(
            &desc("hedui.v1.WatchSourceHealthRequest"),
            b"",
            &[],
            "interval=2s",
        )
        .unwrap();
        assert_eq!(
            WatchSourceHealthRequest::decode(bytes.as_slice())
                .unwrap()
                .interval
                .unwrap()
                .seconds,
            2
        );
        // Found by the http_json fuzz target: a nameless parameter.
        for query in ["=1", "filter.=1", "a..b=1", "%3A%20x=1"] {
            let e = request(&desc("hedui.v1.QueryRecordsRequest"), b"", &[], query).unwrap_err();
            assert!(e.message().starts_with("query: "), "{}", e.message());
        }
        let e = request(&desc("hedui.v1.GetChainStatusRequest"), b"", &[], "who=1").unwrap_err();
        assert!(e.message().starts_with("who: "), "{}", e.message());
        let e = request(
            &desc("hedui.v1.QueryRecordsRequest"),
            b"",
            &[],
            "page_size=many",
        )
        .unwrap_err();
        assert!(e.message().starts_with("page_size: "), "{}", e.message());
        let d = desc("hedui.v1.GetReportRequest");
        let bytes = request(&d, b"", &[("report_id", "r1".into())], "").unwrap();
        assert_eq!(
            hedui_proto::v1::GetReportRequest::decode(bytes.as_slice())
                .unwrap()
                .report_id,
            "r1"
        );
        let e = request(
            &d,
            br#"{"report_id": "r2"}"#,
            &[("report_id", "r1".into())],
            "",
        )
        .unwrap_err();
        assert!(e.message().starts_with("report_id: "), "{}", e.message());
    }

    #[test]
    fn answers_use_proto_names_and_string_int64() {
        let response = hedui_proto::v1::GetChainStatusResponse {
            verified: true,
            records: 12,
            ..Default::default()
        };
        let json = message_json("hedui.v1.GetChainStatusResponse", &response).unwrap();
        assert_eq!(json, serde_json::json!({"verified": true, "records": "12"}));
    }

    #[test]
    fn a_null_under_an_unknown_key_is_refused_as_the_unknown_field() {
        // Found by the fuzz target http_json: the null's path was built
        // from the unknown key, so the message began with ": f: 0...".
        let d = desc("hedui.v1.VerifyRequest");
        let e = request(
            &d,
            br#"{": f: 0}}request": {"applicat_id": null}}"#,
            &[],
            "",
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("body: unrecognized field name ': f: 0}}request'"),
            "{}",
            e.message()
        );
        let e = request(&d, br#"{"request": {"applicat_id": null}}"#, &[], "").unwrap_err();
        assert!(
            e.message()
                .starts_with("request: unrecognized field name 'applicat_id'"),
            "{}",
            e.message()
        );
        // Nulls in known fields, nested and in lists, are named.
        let e = request(&d, b"null", &[], "").unwrap_err();
        assert!(e.message().starts_with("body: null"), "{}", e.message());
        let e = request(&d, br#"{"request": null}"#, &[], "").unwrap_err();
        assert!(e.message().starts_with("request: null"), "{}", e.message());
        let e = request(&d, br#"{"request": {"applicantId": null}}"#, &[], "").unwrap_err();
        assert!(
            e.message().starts_with("request.applicantId: null"),
            "{}",
            e.message()
        );
        let body = br#"{"request": {"declared_member_ids": ["a", null]}}"#;
        let e = request(&d, body, &[], "").unwrap_err();
        assert!(
            e.message()
                .starts_with("request.declared_member_ids[1]: null"),
            "{}",
            e.message()
        );
    }
}
