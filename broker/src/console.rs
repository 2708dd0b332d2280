//! The web console: static pages built into the binary (no CDN, no
//! framework, no build step) that call the HTTP/JSON API from the browser,
//! under `/console/`:
//! - `audit.html`, for auditors: search the access log, open a record and
//!   its inclusion proof, check the chain, export CSV;
//! - `report.html`, for case workers: a household's report as a printable
//!   page that follows late answers;
//! - `history.html`, "who looked at my data", for a platform's
//!   self-service front.
//!
//! Every page is in Chinese and English. The pages pass the same gate as
//! any call: under mTLS the browser presents its client certificate, and
//! the API answers as it would to that client.

use std::sync::LazyLock;

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use sha2::Digest as _;
use tonic::Status;

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../console/", $name)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("audit.html", HTML),
    asset!("report.html", HTML),
    asset!("history.html", HTML),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("i18n.js", JS),
    asset!("common.js", JS),
    asset!("index.js", JS),
    asset!("audit.js", JS),
    asset!("report.js", JS),
    asset!("history.js", JS),
];

/// The entity tag of each asset: a hash of its bytes.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", &hex::encode(sha2::Sha256::digest(a.body))[..20]))
        .collect()
});

/// The console's routes: `/` and `/console` lead to `/console/`, which is
/// the index; `/console/{file}` the other files.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(to_console))
        .route("/console", axum::routing::get(to_console))
        .route(
            "/console/",
            axum::routing::get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            "/console/{file}",
            axum::routing::get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

async fn to_console() -> Redirect {
    Redirect::permanent("/console/")
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let status = Status::not_found(format!("console: no file {name:?}"));
        return crate::http::problem::response(&status);
    };
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_script_it_names_is_served() {
        for a in ASSETS
            .iter()
            .filter(|a| a.content_type == HTML || a.content_type == JS)
        {
            let text = std::str::from_utf8(a.body).unwrap();
            for piece in text
                .split("/console/")
                .skip(1)
                .chain(text.split("from './").skip(1))
            {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                if name.is_empty() {
                    continue;
                }
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} refers to {name}, which is not served",
                    a.name
                );
            }
            // The content security policy allows no inline script.
            assert!(
                !text.contains("<script>"),
                "{} has an inline script",
                a.name
            );
        }
    }

    #[test]
    fn files_have_their_type_a_tag_and_a_policy() {
        let response = serve("audit.js", &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], JS);
        let etag = response.headers()[header::ETAG].clone();
        assert!(
            response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'")
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("audit.js", &headers).status(),
            StatusCode::NOT_MODIFIED
        );
        let missing = serve("../Cargo.toml", &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing.headers()[header::CONTENT_TYPE],
            crate::http::problem::PROBLEM_JSON
        );
    }
}
