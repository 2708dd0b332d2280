//! Errors of the HTTP/JSON API as `application/problem+json` (RFC 9457):
//! the gRPC status's code and message, word for word, with the HTTP
//! status it maps to, the field the message names and a retry hint. Never
//! a stack trace or SQL: the message is the one the gRPC client gets.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tonic::{Code, Status};

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status of a gRPC code (as grpc-gateway maps them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code as gRPC spells it (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The field a status message names: the text before its first `": "`
/// when that is a field path (`request.applicant_id`, `subjects[0]`,
/// `page_size`, or a header such as `content-type`).
pub fn field_of(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(": ")?;
    let first = head.chars().next()?;
    let fits = first.is_ascii_lowercase()
        && head
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]-".contains(c));
    fits.then_some(head)
}

/// The problem body of `status`, with `http` as its status.
pub fn body(status: &Status, http: StatusCode) -> Value {
    let code = code_name(status.code());
    let mut problem = json!({
        "type": format!("urn:hedui:problem:{}", code.to_ascii_lowercase().replace('_', "-")),
        "title": http.canonical_reason().unwrap_or(code),
        "status": http.as_u16(),
        "code": code,
        "detail": status.message(),
    });
    if let Some(field) = field_of(status.message()) {
        problem["field"] = Value::String(field.to_owned());
    }
    if let Some(ms) = retry_after_ms(status) {
        problem["retry_after_ms"] = json!(ms);
    }
    problem
}

fn retry_after_ms(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `status` as an HTTP answer with a problem body (HTTP status from its
/// code).
pub fn response<B>(status: &Status) -> http::Response<B>
where
    B: From<Bytes>,
{
    response_with(status, http_status(status.code()))
}

/// `status` as an HTTP answer with a problem body and HTTP status `http`
/// (413, 415 and 405 have no gRPC code of their own).
pub fn response_with<B>(status: &Status, http: StatusCode) -> http::Response<B>
where
    B: From<Bytes>,
{
    let body = body(status, http);
    let mut response = http::Response::new(B::from(Bytes::from(body.to_string())));
    *response.status_mut() = http;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(ms) = retry_after_ms(status)
        && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_only_where_named() {
        assert_eq!(
            field_of("request.applicant_id: must be 18 characters"),
            Some("request.applicant_id")
        );
        assert_eq!(field_of("subjects[0]: bad"), Some("subjects[0]"));
        assert_eq!(field_of("the audit log is unavailable: x"), None);
        assert_eq!(field_of("Report r: x"), None);
        assert_eq!(field_of("no colon"), None);
    }

    #[test]
    fn a_problem_carries_code_detail_field_and_retry() {
        let mut status = Status::resource_exhausted("client p is over its call rate");
        status
            .metadata_mut()
            .insert("retry-after-ms", "1500".parse().unwrap());
        let response: http::Response<axum::body::Body> = response(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let b = body(
            &Status::invalid_argument("request.purpose: required"),
            StatusCode::BAD_REQUEST,
        );
        assert_eq!(b["code"], "INVALID_ARGUMENT");
        assert_eq!(b["status"], 400);
        assert_eq!(b["field"], "request.purpose");
        assert_eq!(b["detail"], "request.purpose: required");
        assert_eq!(b["type"], "urn:hedui:problem:invalid-argument");
        assert_eq!(b["title"], "Bad Request");
    }
}
