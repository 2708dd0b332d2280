//! HMAC request signing (`hedui-hmac-sha256`): how the broker proves to a
//! department's REST endpoint that a request comes from it and was not
//! changed or replayed, without sending the shared secret.
//!
//! The broker sends four headers:
//! - `X-Hedui-Key-Id`: which shared secret signed (the department may have
//!   several, e.g. while rotating);
//! - `X-Hedui-Timestamp`: seconds since the Unix epoch;
//! - `X-Hedui-Nonce`: a random value, never used twice;
//! - `X-Hedui-Signature`: the lower-case hex HMAC-SHA256, under the secret,
//!   of the string to sign:
//!
//! ```text
//! METHOD \n PATH?QUERY \n TIMESTAMP \n NONCE \n hex(SHA-256(body))
//! ```
//!
//! e.g. `POST\n/esb/query?x=1\n1795392000\n0b6c…\ne3b0c442…` (an empty body
//! hashes to `e3b0c442…b855`). The department recomputes it with its copy
//! of the secret, compares in constant time, and refuses timestamps more
//! than a few minutes off and nonces it has seen ([`verify`] does the first
//! two).

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Header naming the key that signed.
pub const KEY_ID_HEADER: &str = "x-hedui-key-id";
/// Header with the signing time, in seconds since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-hedui-timestamp";
/// Header with the request's nonce.
pub const NONCE_HEADER: &str = "x-hedui-nonce";
/// Header with the signature.
pub const SIGNATURE_HEADER: &str = "x-hedui-signature";

/// The string a request's signature is computed over.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}")
}

/// The lower-case hex HMAC-SHA256 of `text` under `secret`.
pub fn signature(secret: &[u8], text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A signing header is absent or not text.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// The key id is not the one expected.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// The timestamp is not a number or too far from now.
    #[error("timestamp is missing, malformed or more than {0} s from now")]
    Stale(i64),
    /// The signature does not match.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a request signed with [`signature`]: the key id is `key_id`, the
/// timestamp within `max_skew_secs` of `now`, and the signature matches
/// (compared in constant time). A department also remembers the nonces it
/// has seen within the skew window and refuses a second use.
///
/// # Errors
/// [`SignatureError`] saying what does not hold.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    key_id: &str,
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    max_skew_secs: i64,
) -> Result<(), SignatureError> {
    let get = |h: &'static str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureError::Missing(h))
    };
    let got_key = get(KEY_ID_HEADER)?;
    if got_key != key_id {
        return Err(SignatureError::UnknownKey(got_key.to_owned()));
    }
    let ts: i64 = get(TIMESTAMP_HEADER)?
        .parse()
        .map_err(|_| SignatureError::Stale(max_skew_secs))?;
    if (now - ts).abs() > max_skew_secs {
        return Err(SignatureError::Stale(max_skew_secs));
    }
    let nonce = get(NONCE_HEADER)?;
    let sig = hex::decode(get(SIGNATURE_HEADER)?).map_err(|_| SignatureError::Mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(string_to_sign(method, path_and_query, ts, nonce, body).as_bytes());
    mac.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn known_vector_and_round_trip() {
        let text = string_to_sign("POST", "/q?a=1", 1_795_392_000, "n1", b"");
        assert_eq!(
            text,
            "POST\n/q?a=1\n1795392000\nn1\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut h = HeaderMap::new();
        h.insert(KEY_ID_HEADER, HeaderValue::from_static("k"));
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_static("1795392000"));
        h.insert(NONCE_HEADER, HeaderValue::from_static("n1"));
        let sig = signature(b"s3cret", &text);
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(&sig).unwrap());
        let check = |h: &HeaderMap, secret: &[u8], now: i64| {
            verify("k", secret, "POST", "/q?a=1", h, b"", now, 300)
        };
        check(&h, b"s3cret", 1_795_392_100).unwrap();
        assert_eq!(
            check(&h, b"other", 1_795_392_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&h, b"s3cret", 1_795_393_000),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify(
                "k",
                b"s3cret",
                "POST",
                "/q?a=2",
                &h,
                b"",
                1_795_392_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        h.remove(NONCE_HEADER);
        assert_eq!(
            check(&h, b"s3cret", 1_795_392_000),
            Err(SignatureError::Missing(NONCE_HEADER))
        );
    }
}
