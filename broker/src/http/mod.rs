//! The HTTP/JSON API: every RPC of the broker's services as a resource
//! (`POST /v1/verifications`, `GET /v1/reports/{report_id}`, ...), on the
//! same listener as gRPC, for platforms that speak REST and for browsers.
//!
//! One implementation underneath: a JSON request is checked against the
//! RPC's request message ([`json`]), encoded, and handed to the very gRPC
//! service a gRPC client reaches, with the [`Caller`](crate::verify::Caller)
//! the security gate admitted (the gate maps each route to its RPC, so
//! roles, quotas and refusals are the RPC's own). The gRPC answer is
//! turned back into JSON; a stream into server-sent events; an error
//! into `application/problem+json` ([`problem`]) carrying the gRPC code
//! and message word for word. The routes ([`ROUTES`]) also generate the
//! OpenAPI description ([`openapi`]).

pub mod json;
pub mod openapi;
pub mod problem;

use std::{convert::Infallible, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response, sse},
};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message as _;
use tonic::{Status, service::Routes};
use tower_service::Service as _;

/// What an RPC answers over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// One JSON document.
    Json,
    /// Server-sent events, one per message of the gRPC stream.
    Events,
    /// A file (the audit export), as the stream's bytes.
    File,
}

/// One resource: an HTTP method and path for one RPC.
#[derive(Debug)]
pub struct Route {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path, with `{field}` for a path parameter.
    pub path: &'static str,
    /// The gRPC method (`/package.Service/Method`).
    pub rpc: &'static str,
    /// What it answers.
    pub answer: Answer,
    /// Whether the request's fields come in a JSON body (else in the
    /// path and query).
    pub body: bool,
    /// One line for the OpenAPI description.
    pub summary: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    rpc: &'static str,
    answer: Answer,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        rpc,
        answer,
        body: matches!(method.as_bytes(), b"POST"),
        summary,
    }
}

/// Every resource of the API. Resident ID numbers travel in bodies
/// (`POST`), never in URLs, where proxies and logs would keep them.
pub const ROUTES: &[Route] = &[
    route(
        "POST",
        "/v1/verifications",
        "/hedui.v1.VerificationService/Verify",
        Answer::Json,
        "Verify a household: ask every source, return the consolidated report",
    ),
    route(
        "POST",
        "/v1/verifications/stream",
        "/hedui.v1.VerificationService/StreamVerify",
        Answer::Events,
        "Verify a household, with each source's answer as an event as it lands",
    ),
    route(
        "GET",
        "/v1/reports/{report_id}",
        "/hedui.v1.VerificationService/GetReport",
        Answer::Json,
        "A stored report (the caller's own)",
    ),
    route(
        "GET",
        "/v1/reports/{report_id}/watch",
        "/hedui.v1.VerificationService/WatchReport",
        Answer::Events,
        "A report as stored, then its completed revision when late answers land",
    ),
    route(
        "POST",
        "/v1/enrolments",
        "/hedui.v1.WatchService/Enrol",
        Answer::Json,
        "Put a household under management: verified now, re-verified on change",
    ),
    route(
        "DELETE",
        "/v1/enrolments/{enrolment_id}",
        "/hedui.v1.WatchService/Unenrol",
        Answer::Json,
        "End the management of a household",
    ),
    route(
        "GET",
        "/v1/alerts/stream",
        "/hedui.v1.WatchService/StreamAlerts",
        Answer::Events,
        "Alerts of the caller's managed households: unacknowledged ones, then new ones",
    ),
    route(
        "POST",
        "/v1/alerts/{alert_id}/acknowledge",
        "/hedui.v1.WatchService/AcknowledgeAlert",
        Answer::Json,
        "Acknowledge an alert",
    ),
    route(
        "POST",
        "/v1/reviews",
        "/hedui.v1.WatchService/Review",
        Answer::Events,
        "Re-verify every managed household of the caller, with progress events",
    ),
    route(
        "POST",
        "/v1/consents",
        "/hedui.v1.ConsentService/RegisterConsent",
        Answer::Json,
        "Register an authorization letter (授权书)",
    ),
    route(
        "GET",
        "/v1/consents/{reference}",
        "/hedui.v1.ConsentService/GetConsent",
        Answer::Json,
        "An authorization letter",
    ),
    route(
        "POST",
        "/v1/consents/{reference}/revoke",
        "/hedui.v1.ConsentService/RevokeConsent",
        Answer::Json,
        "Revoke an authorization letter",
    ),
    route(
        "POST",
        "/v1/audit/records/search",
        "/hedui.v1.AuditService/QueryRecords",
        Answer::Json,
        "Search the access log (auditors)",
    ),
    route(
        "POST",
        "/v1/audit/records/export",
        "/hedui.v1.AuditService/ExportRecords",
        Answer::File,
        "Export the access log as CSV or JSON lines (auditors)",
    ),
    route(
        "GET",
        "/v1/audit/chain",
        "/hedui.v1.AuditService/GetChainStatus",
        Answer::Json,
        "Verify the access log's hash chain and show its latest signed checkpoint",
    ),
    route(
        "GET",
        "/v1/audit/records/{seq}/proof",
        "/hedui.v1.AuditService/GetInclusionProof",
        Answer::Json,
        "The inclusion proof of one record against the latest signed checkpoint (auditors)",
    ),
    route(
        "POST",
        "/v1/audit/subject-access-history",
        "/hedui.v1.AuditService/GetSubjectAccessHistory",
        Answer::Json,
        "Who looked at a person's data (the household's own page)",
    ),
    route(
        "GET",
        "/v1/sources/health",
        "/hedui.v1.SourceHealthService/ListSourceHealth",
        Answer::Json,
        "How each source has answered lately",
    ),
    route(
        "GET",
        "/v1/sources/health/stream",
        "/hedui.v1.SourceHealthService/WatchSourceHealth",
        Answer::Events,
        "Source health, sent on change and at an interval",
    ),
];

/// Where the OpenAPI description is served.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// Whether a request speaks gRPC (or gRPC-Web, translated before).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The route `method` and `path` name, if any.
pub fn route_of(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method == method.as_str() && params(r.path, path).is_some())
}

/// The path parameters of `path` under `pattern`, or `None` when it does
/// not match.
fn params(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut want = pattern.trim_start_matches('/').split('/');
    let mut got = path.trim_start_matches('/').split('/');
    let mut found = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(found),
            (Some(w), Some(g)) => {
                if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if g.is_empty() {
                        return None;
                    }
                    let value = percent_decode(g)?;
                    found.push((name, value));
                } else if w != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The API's routes, each calling `grpc` (the broker's gRPC services,
/// without the gate: the gate admitted the HTTP request already), and
/// the OpenAPI description.
pub fn router(grpc: Routes) -> axum::Router {
    let mut router = axum::Router::new();
    for r in ROUTES {
        let grpc = grpc.clone();
        let handler = move |request: Request| {
            let grpc = grpc.clone();
            async move { dispatch(r, grpc, request).await }
        };
        let method = match r.method {
            "GET" => axum::routing::get(handler),
            "DELETE" => axum::routing::delete(handler),
            _ => axum::routing::post(handler),
        };
        router = router.route(r.path, method.fallback(method_not_allowed));
    }
    router.route(
        OPENAPI_PATH,
        axum::routing::get(serve_openapi).fallback(method_not_allowed),
    )
}

async fn serve_openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        openapi::document_json(),
    )
        .into_response()
}

async fn method_not_allowed(method: Method, uri: http::Uri) -> Response {
    let status =
        Status::unimplemented(format!("method: {method} is not allowed on {}", uri.path()));
    problem::response_with(&status, StatusCode::METHOD_NOT_ALLOWED)
}

/// What answers a path no route serves: gRPC's `UNIMPLEMENTED` to a gRPC
/// client, a problem to anyone else.
pub async fn fallback(request: Request) -> Response {
    if is_grpc(request.headers()) {
        return Status::unimplemented("").into_http();
    }
    let status = Status::not_found(format!("path: no resource {}", request.uri().path()));
    problem::response(&status)
}

async fn dispatch(route: &'static Route, grpc: Routes, request: Request) -> Response {
    match call(route, grpc, request).await {
        Ok(response) => response,
        Err(Refusal(status, http)) => problem::response_with(&status, http),
    }
}

/// An error answer: a status and the HTTP status it goes out with.
struct Refusal(Status, StatusCode);

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        let http = problem::http_status(status.code());
        Self(status, http)
    }
}

async fn call(
    route: &'static Route,
    mut grpc: Routes,
    request: Request,
) -> Result<Response, Refusal> {
    let method = json::method(route.rpc)
        .ok_or_else(|| Status::internal(format!("no method {} in the contract", route.rpc)))?;
    let (parts, body) = request.into_parts();
    let path = params(route.path, parts.uri.path()).ok_or_else(|| {
        Status::invalid_argument(format!(
            "path: a parameter of {} is not UTF-8 once percent-decoded",
            route.path
        ))
    })?;
    let body = read_body(route, &parts.headers, body).await?;
    let message = json::request(
        &method.input(),
        &body,
        &path,
        parts.uri.query().unwrap_or_default(),
    )?;
    let export_csv = route.answer == Answer::File
        && hedui_proto::v1::ExportRecordsRequest::decode(message.as_slice())
            .is_ok_and(|r| r.format == hedui_proto::v1::ExportFormat::Csv as i32);

    // The gRPC request the service sees: the message, framed; the
    // deadline and trace context of the HTTP request; its extensions,
    // with the caller the gate admitted.
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    let mut inner = http::Request::new(Body::from(framed.freeze()));
    *inner.method_mut() = Method::POST;
    *inner.uri_mut() = http::Uri::from_static(route.rpc);
    *inner.version_mut() = http::Version::HTTP_2;
    let headers = inner.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    for name in ["grpc-timeout", "traceparent", "tracestate"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    if let Some(ms) = parts.headers.get(TIMEOUT_HEADER) {
        let ms = ms
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| (1..=99_999_999).contains(ms))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{TIMEOUT_HEADER}: must be a whole number of milliseconds, 1 to 99999999"
                ))
            })?;
        if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
            headers.insert("grpc-timeout", v);
        }
    }
    *inner.extensions_mut() = parts.extensions;

    let response = match grpc.call(inner).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status.into());
    }
    let mut frames = Frames::new(response.into_body());
    // A refusal before the stream opened came in the headers (above). An
    // answer or a file waits for its first message, so an error before it
    // is an answer with its HTTP status; an event stream opens at once (it
    // may wait long for its first event, an alert say), and an error
    // after that is an `error` event.
    let first = if route.answer == Answer::Events {
        None
    } else {
        frames.next().await.transpose()?
    };
    let output = method.output();
    match route.answer {
        Answer::Json => {
            let Some(first) = first else {
                return Err(Status::internal(format!("{} answered nothing", route.rpc)).into());
            };
            if let Some(more) = frames.next().await {
                more?;
                return Err(
                    Status::internal(format!("{} answered more than once", route.rpc)).into(),
                );
            }
            let json = json::to_json(&output, &first)?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                json.to_string(),
            )
                .into_response())
        }
        Answer::Events => {
            let stream = futures::stream::unfold(
                (first, Some(frames), output),
                |(first, frames, output)| async move {
                    let mut frames = frames?;
                    let next = match first {
                        Some(message) => Ok(message),
                        None => match frames.next().await? {
                            Ok(message) => Ok(message),
                            Err(status) => Err(status),
                        },
                    };
                    let event = match next.and_then(|m| json::to_json(&output, &m)) {
                        Ok(json) => sse::Event::default()
                            .event("message")
                            .data(json.to_string()),
                        Err(status) => {
                            let body = problem::body(&status, problem::http_status(status.code()));
                            let event = sse::Event::default().event("error").data(body.to_string());
                            return Some((Ok::<_, Infallible>(event), (None, None, output)));
                        }
                    };
                    Some((Ok(event), (None, Some(frames), output)))
                },
            );
            let mut response = sse::Sse::new(stream)
                .keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Answer::File => {
            let (kind, name) = if export_csv {
                ("text/csv; charset=utf-8", "hedui-audit.csv")
            } else {
                ("application/x-ndjson", "hedui-audit.jsonl")
            };
            let stream =
                futures::stream::unfold((first, Some(frames)), |(first, frames)| async move {
                    let mut frames = frames?;
                    let next = match first {
                        Some(message) => Ok(message),
                        None => frames.next().await?,
                    };
                    match next.and_then(|m| {
                        hedui_proto::v1::ExportRecordsResponse::decode(m)
                            .map_err(|e| Status::internal(format!("export chunk: {e}")))
                    }) {
                        Ok(chunk) => Some((Ok(Bytes::from(chunk.data)), (None, Some(frames)))),
                        // The status line went out already: the body breaks
                        // off, and the client sees an incomplete transfer.
                        Err(status) => Some((
                            Err(std::io::Error::other(status.message().to_owned())),
                            (None, None),
                        )),
                    }
                });
            Ok((
                [
                    (header::CONTENT_TYPE, kind.to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
    }
}

/// gRPC-Web for browsers, in front of everything else: tonic-web
/// translates a gRPC-Web request into gRPC (and its answer back); any
/// other request (gRPC, HTTP/JSON, the console) passes untouched
/// (tonic-web alone refuses plain HTTP/1.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebLayer;

impl<S> tower_layer::Layer<S> for WebLayer {
    type Service = Web<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Web { plain: inner }
    }
}

/// A service behind [`WebLayer`].
#[derive(Debug, Clone)]
pub struct Web<S> {
    plain: S,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Web<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.plain.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let web = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc-web"));
        // The clone that was made ready serves this call.
        let clone = self.plain.clone();
        let plain = std::mem::replace(&mut self.plain, clone);
        if web {
            let mut service = tower_layer::Layer::layer(&tonic_web::GrpcWebLayer::new(), plain);
            Box::pin(async move { service.call(request).await })
        } else {
            let mut service = plain;
            Box::pin(async move { service.call(request).await })
        }
    }
}

/// The header a plain HTTP client sets its deadline with, in
/// milliseconds (gRPC's `grpc-timeout` is read too).
pub const TIMEOUT_HEADER: &str = "x-hedui-timeout-ms";

/// Reads a request body: JSON (or nothing) where the route takes one, at
/// most [`MAX_REQUEST_BYTES`](crate::server::MAX_REQUEST_BYTES).
async fn read_body(route: &Route, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
    let limit = crate::server::MAX_REQUEST_BYTES;
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Refusal(
                    Status::invalid_argument(format!("body: larger than {limit} bytes")),
                    StatusCode::PAYLOAD_TOO_LARGE,
                )
            } else {
                Status::invalid_argument(format!("body: could not be read: {e}")).into()
            }
        })?
        .to_bytes();
    if collected.is_empty() {
        return Ok(collected);
    }
    if !route.body {
        return Err(Status::invalid_argument(format!(
            "body: {} {} takes no body; its fields go in the path and query",
            route.method, route.path
        ))
        .into());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|v| v.eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refusal(
            Status::invalid_argument("content-type: a body must be application/json"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ));
    }
    Ok(collected)
}

/// The messages of a gRPC answer's body, and the status its trailers end
/// it with.
struct Frames {
    body: tonic::body::Body,
    buffer: BytesMut,
    done: bool,
}

impl Frames {
    fn new(body: tonic::body::Body) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            done: false,
        }
    }

    /// The next message; `None` at an OK end; the status of an error end.
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                ]) as usize;
                if self.buffer[0] != 0 {
                    self.done = true;
                    return Some(Err(Status::internal(
                        "a compressed answer was not expected",
                    )));
                }
                if self.buffer.len() >= 5 + len {
                    self.buffer.advance(5);
                    return Some(Ok(self.buffer.split_to(len).freeze()));
                }
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        self.done = true;
                        let status = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .filter(|s| s.code() != tonic::Code::Ok);
                        if let Some(status) = status {
                            return Some(Err(status));
                        }
                        if !self.buffer.is_empty() {
                            return Some(Err(Status::internal("an answer ended mid-message")));
                        }
                        return None;
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    if !self.buffer.is_empty() {
                        return Some(Err(Status::internal("an answer ended mid-message")));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_contract() {
        for r in ROUTES {
            let m = json::method(r.rpc).unwrap_or_else(|| panic!("{} has no method", r.rpc));
            assert_eq!(
                m.is_server_streaming(),
                r.answer != Answer::Json,
                "{}: streaming",
                r.rpc
            );
            for (name, _) in params(r.path, r.path).unwrap() {
                assert!(
                    m.input().get_field_by_name(name).is_some(),
                    "{}: {name} is not a field",
                    r.path
                );
            }
        }
        // Every RPC a client may call has a resource.
        for service in json::pool().services() {
            if service.full_name() == "hedui.v1.AdapterService" {
                continue;
            }
            for m in service.methods() {
                let rpc = format!("/{}/{}", service.full_name(), m.name());
                assert!(
                    ROUTES.iter().any(|r| r.rpc == rpc),
                    "{rpc} has no HTTP resource"
                );
            }
        }
    }

    #[test]
    fn paths_match_their_routes() {
        let r = route_of(&Method::GET, "/v1/reports/abc").unwrap();
        assert_eq!(r.rpc, "/hedui.v1.VerificationService/GetReport");
        assert_eq!(
            params(r.path, "/v1/reports/a%20b").unwrap(),
            vec![("report_id", "a b".to_owned())]
        );
        let r = route_of(&Method::GET, "/v1/reports/abc/watch").unwrap();
        assert_eq!(r.rpc, "/hedui.v1.VerificationService/WatchReport");
        assert!(route_of(&Method::POST, "/v1/reports/abc").is_none());
        assert!(route_of(&Method::GET, "/v1/reports/").is_none());
        assert!(route_of(&Method::GET, "/v1/reports").is_none());
        assert_eq!(
            route_of(&Method::DELETE, "/v1/enrolments/e1").unwrap().rpc,
            "/hedui.v1.WatchService/Unenrol"
        );
    }
}
