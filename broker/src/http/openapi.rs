//! The OpenAPI 3.1 description of the HTTP/JSON API, generated from the
//! routes ([`ROUTES`]) and the contract's descriptors, the same ones the
//! JSON codec reads: the schemas describe exactly what the broker accepts
//! and answers (proto field names, 64-bit integers as strings, enums as
//! names, timestamps as RFC 3339, durations as `"1.5s"`; fields at their
//! default are left out, so no field is required).
//!
//! Served at [`OPENAPI_PATH`](super::OPENAPI_PATH), printed by
//! `hedui openapi`, committed as `docs/openapi.json`.

use std::{collections::BTreeMap, sync::LazyLock};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::{Answer, ROUTES, json as codec, params};

const TIMESTAMP: &str = "google.protobuf.Timestamp";
const DURATION: &str = "google.protobuf.Duration";

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
});

/// The description as served (pretty-printed JSON, ending in a newline).
pub fn document_json() -> &'static str {
    &DOCUMENT
}

/// The description.
pub fn document() -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = Map::new();
    for route in ROUTES {
        let Some(method) = codec::method(route.rpc) else {
            continue;
        };
        let input = method.input();
        let output = method.output();
        collect(&input, &mut schemas);
        collect(&output, &mut schemas);
        let path_params: Vec<&str> = params(route.path, route.path)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": {"type": "string", "minLength": 1},
                    "description": format!("The request's `{name}`."),
                })
            })
            .collect();
        if !route.body {
            for field in input.fields() {
                if path_params.contains(&field.name()) {
                    continue;
                }
                if let Some(schema) = query_schema(&field) {
                    parameters.push(json!({
                        "name": field.name(),
                        "in": "query",
                        "required": false,
                        "schema": schema,
                    }));
                }
            }
        }
        parameters.push(json!({
            "name": super::TIMEOUT_HEADER,
            "in": "header",
            "required": false,
            "schema": {"type": "integer", "minimum": 1, "maximum": 99_999_999},
            "description": "The caller's deadline in milliseconds (gRPC's `grpc-timeout` is read too).",
        }));
        let service = method.parent_service();
        let mut operation = json!({
            "operationId": method.name(),
            "summary": route.summary,
            "description": format!(
                "The gRPC method `{}` over HTTP: the same checks, roles, quotas and audit.",
                route.rpc.trim_start_matches('/')
            ),
            "tags": [service.name()],
            "parameters": parameters,
            "responses": responses(route.answer, &output, route.body),
        });
        if route.body {
            operation["requestBody"] = json!({
                "required": false,
                "description": format!("A `{}` as JSON; an empty body is `{{}}`.", input.full_name()),
                "content": {"application/json": {"schema": reference(&input)}},
            });
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method.to_ascii_lowercase()] = operation;
    }
    paths.insert(
        super::OPENAPI_PATH.to_owned(),
        json!({"get": {
            "operationId": "GetOpenApi",
            "summary": "This description",
            "tags": ["Meta"],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }}),
    );
    let mut components: Map<String, Value> = schemas.into_iter().collect();
    components.insert("Problem".to_owned(), problem_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hedui HTTP/JSON API",
            "version": "v1",
            "description": "Household economic-status verification (核对). Each resource is one RPC of the gRPC contract (proto/hedui/v1), with the proto3 JSON mapping and proto field names. Errors are application/problem+json carrying the gRPC code and message. Streams are server-sent events: one `message` event per message, an `error` event (a Problem) when the stream fails after it opened. Authentication is the client certificate of the mTLS connection.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components},
    })
}

fn reference(message: &MessageDescriptor) -> Value {
    match message.full_name() {
        TIMESTAMP => json!({"type": "string", "format": "date-time"}),
        DURATION => duration_schema(),
        name => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

fn duration_schema() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$", "description": "Seconds with up to nine decimals and an `s`, e.g. `1.5s`."})
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details with the gRPC status of the same call.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string", "description": "urn:hedui:problem:<code>"},
            "title": {"type": "string"},
            "status": {"type": "integer", "description": "The HTTP status."},
            "code": {"type": "string", "description": "The gRPC code, e.g. INVALID_ARGUMENT."},
            "detail": {"type": "string", "description": "The gRPC status message, word for word."},
            "field": {"type": "string", "description": "The field the message names, e.g. request.applicant_id."},
            "retry_after_ms": {"type": "integer", "minimum": 0, "description": "When to try again (429, 503)."},
        },
    })
}

fn responses(answer: Answer, output: &MessageDescriptor, body: bool) -> Value {
    let ok = match answer {
        Answer::Json => json!({
            "description": format!("A `{}`.", output.full_name()),
            "content": {"application/json": {"schema": reference(output)}},
        }),
        Answer::Events => json!({
            "description": format!("Server-sent events: each `message` event's data is a `{}` as JSON; an `error` event's data is a Problem.", output.full_name()),
            "content": {"text/event-stream": {"schema": {
                "type": "object",
                "description": "One event (OpenAPI 3.1: the schema of a stream's media type describes each event).",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string", "enum": ["message", "error"]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [reference(output), {"$ref": "#/components/schemas/Problem"}]},
                    },
                },
            }}},
        }),
        Answer::File => json!({
            "description": "The records as CSV (format EXPORT_FORMAT_CSV) or JSON lines.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }),
    };
    let problem = |what: &str| {
        json!({
            "description": what,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        })
    };
    let mut responses = json!({
        "200": ok,
        "400": problem("A field does not fit (INVALID_ARGUMENT, FAILED_PRECONDITION)."),
        "401": problem("No known client certificate (UNAUTHENTICATED)."),
        "403": problem("Outside the caller's role, purposes or consent (PERMISSION_DENIED)."),
        "404": problem("No such object, or another client's (NOT_FOUND)."),
        "409": problem("Conflicts with what exists (ALREADY_EXISTS, ABORTED)."),
        "429": problem("Over the caller's quota (RESOURCE_EXHAUSTED)."),
        "503": problem("Shed under load, or the audit log or store unavailable (UNAVAILABLE)."),
        "504": problem("The deadline passed (DEADLINE_EXCEEDED)."),
        "default": problem("Any other error."),
    });
    if body {
        responses["413"] = problem("The body is larger than the broker accepts.");
        responses["415"] = problem("The body is not application/json.");
    }
    responses
}

fn query_schema(field: &FieldDescriptor) -> Option<Value> {
    if field.is_map() {
        return None;
    }
    let scalar = match field.kind() {
        Kind::Message(m) if m.full_name() == TIMESTAMP || m.full_name() == DURATION => {
            reference(&m)
        }
        Kind::Message(_) => return None,
        _ => field_schema(field),
    };
    Some(if field.is_list() {
        json!({"type": "array", "items": scalar})
    } else {
        scalar
    })
}

/// The schema of one value of `field` (an element of a list).
fn field_schema(field: &FieldDescriptor) -> Value {
    match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(m) => reference(&m),
    }
}

/// Adds the schema of `message` and of every message it holds.
fn collect(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) {
    let name = message.full_name();
    if name == TIMESTAMP || name == DURATION || schemas.contains_key(name) {
        return;
    }
    // Placeholder first: recursive messages stop here.
    schemas.insert(name.to_owned(), Value::Null);
    let mut properties = Map::new();
    for field in message.fields() {
        let schema = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let value = entry.map_entry_value_field();
            if let Kind::Message(m) = value.kind() {
                collect(&m, schemas);
            }
            json!({"type": "object", "additionalProperties": field_schema(&value)})
        } else {
            if let Kind::Message(m) = field.kind() {
                collect(&m, schemas);
            }
            let element = field_schema(&field);
            if field.is_list() {
                json!({"type": "array", "items": element})
            } else {
                element
            }
        };
        let schema = match field.containing_oneof() {
            Some(oneof) if !field.field_descriptor_proto().proto3_optional() => {
                let mut s = schema;
                if let Value::Object(o) = &mut s {
                    o.insert(
                        "description".to_owned(),
                        Value::String(format!(
                            "One of `{}`: at most one of its fields is set.",
                            oneof.name()
                        )),
                    );
                }
                s
            }
            _ => schema,
        };
        properties.insert(field.name().to_owned(), schema);
    }
    schemas.insert(
        name.to_owned(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": properties,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_description_is_the_generated_one() {
        let committed = include_str!("../../../docs/openapi.json");
        assert!(
            committed == document_json(),
            "docs/openapi.json is stale: regenerate it with `cargo run -p hedui -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced, not defined"
            );
        }
        assert!(schemas.values().all(|s| !s.is_null()));
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/verifications"]["post"]["requestBody"].is_object());
        assert_eq!(
            doc["paths"]["/v1/reports/{report_id}"]["get"]["parameters"][0]["name"],
            "report_id"
        );
        assert_eq!(
            doc["components"]["schemas"]["hedui.v1.VerificationRequest"]["properties"]["purpose"]["type"],
            "string"
        );
    }
}
