//! The algorithm suites of the audit log: the hash of the Merkle tree, the
//! chain and the report digests; the keyed hash (HMAC) that stands for an
//! identity number; the signature of checkpoints.
//!
//! Two suites: `sha256-ed25519` (the default) and `sm3-sm2` (the Chinese
//! commercial algorithms, for deployments assessed under GB/T 39786). A log
//! is written with one suite for its whole life; the suite is stored in the
//! database and a broker configured with another refuses to open it.

use std::{fmt, path::Path};

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sm3::Sm3;

/// A 32-byte hash of the suite.
pub type Hash = [u8; 32];

/// Distinguishing identifier of SM2 signatures (GM/T 0009-2012's default).
const SM2_DIST_ID: &str = "1234567812345678";

/// DEMO ONLY, NOT FOR PRODUCTION: the HMAC key used when the configuration
/// names none. Anyone who has this source can test a guessed identity number
/// against the log; production sets `audit.hmac_key_file`.
pub const DEMO_HMAC_KEY: &[u8] = b"hedui demo audit hmac key -- NOT FOR PRODUCTION";

/// DEMO ONLY, NOT FOR PRODUCTION: the checkpoint signing key (hex) used when
/// the configuration names none. Anyone can forge checkpoints with it;
/// production sets `audit.signing_key_file`.
pub const DEMO_SIGNING_KEY_HEX: &str =
    "6865647569206465 6d6f206b6579202d 2d206e6f7420666f 722070726f642121";

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        /// The configuration key naming the file.
        field: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key is not what the suite needs.
    #[error("{field}: {message}")]
    Invalid {
        /// The configuration key.
        field: &'static str,
        /// What is wrong (never the key itself).
        message: String,
    },
}

/// An algorithm suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Suite {
    /// SHA-256 and Ed25519 (RFC 8032); HMAC-SHA256 for identity numbers.
    #[default]
    #[serde(rename = "sha256-ed25519")]
    Sha256Ed25519,
    /// SM3 (GB/T 32905) and SM2 (GB/T 32918); HMAC-SM3 for identity
    /// numbers.
    #[serde(rename = "sm3-sm2")]
    Sm3Sm2,
}

impl Suite {
    /// The suite's name as written in configuration and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Sha256Ed25519 => "sha256-ed25519",
            Suite::Sm3Sm2 => "sm3-sm2",
        }
    }

    /// The suite with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256-ed25519" => Some(Suite::Sha256Ed25519),
            "sm3-sm2" => Some(Suite::Sm3Sm2),
            _ => None,
        }
    }

    /// The hash of the concatenation of `parts`.
    pub fn hash(self, parts: &[&[u8]]) -> Hash {
        match self {
            Suite::Sha256Ed25519 => {
                let mut h = Sha256::new();
                for p in parts {
                    h.update(p);
                }
                h.finalize().into()
            }
            Suite::Sm3Sm2 => {
                let mut h = Sm3::new();
                for p in parts {
                    h.update(p);
                }
                h.finalize().into()
            }
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a secret given inline or in a file: the file wins; neither means
/// `None`. Surrounding whitespace of the file is ignored.
///
/// # Errors
/// [`KeyError::Read`] when the file cannot be read.
pub fn read_secret(
    field: &'static str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, KeyError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            field,
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(inline.map(|s| s.trim().to_owned()))
}

// === SubjectKey ===

/// The keyed hash that stands for an identity number in the log: the same
/// number always gives the same 64 hex digits (so a query by the number
/// finds its records), and without the key nothing gives the number back.
#[derive(Clone)]
pub struct SubjectKey {
    suite: Suite,
    keyed: Keyed,
    demo: bool,
}

/// The HMAC state with the key already absorbed: each subject clones it
/// instead of hashing the key's two padded blocks again (a verification
/// hashes every member of the household).
#[derive(Clone)]
enum Keyed {
    Sha256(Hmac<Sha256>),
    Sm3(Hmac<Sm3>),
}

impl Keyed {
    fn new(suite: Suite, key: &[u8]) -> Self {
        match suite {
            Suite::Sha256Ed25519 => {
                Self::Sha256(Hmac::new_from_slice(key).expect("any key length"))
            }
            Suite::Sm3Sm2 => Self::Sm3(Hmac::new_from_slice(key).expect("any key length")),
        }
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKey")
            .field("suite", &self.suite)
            .field("demo", &self.demo)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// A key from its secret text (at least 32 bytes); `None` means the
    /// embedded demo key.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the secret is shorter than 32 bytes.
    pub fn new(suite: Suite, secret: Option<&str>) -> Result<Self, KeyError> {
        match secret {
            None => Ok(Self {
                suite,
                keyed: Keyed::new(suite, DEMO_HMAC_KEY),
                demo: true,
            }),
            Some(s) if s.len() < 32 => Err(KeyError::Invalid {
                field: "audit.hmac_key",
                message: format!("must be at least 32 bytes, got {}", s.len()),
            }),
            Some(s) => Ok(Self {
                suite,
                keyed: Keyed::new(suite, s.as_bytes()),
                demo: false,
            }),
        }
    }

    /// Whether this is the embedded demo key.
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// The keyed hash of an identity number, as 64 lower-case hex digits.
    pub fn subject(&self, id: &str) -> String {
        match &self.keyed {
            Keyed::Sha256(keyed) => {
                let mut m = keyed.clone();
                m.update(id.as_bytes());
                hex::encode(m.finalize().into_bytes())
            }
            Keyed::Sm3(keyed) => {
                let mut m = keyed.clone();
                m.update(id.as_bytes());
                hex::encode(m.finalize().into_bytes())
            }
        }
    }
}

// === Signer ===

/// Signs and verifies checkpoints with the suite's signature algorithm.
#[derive(Clone)]
pub struct Signer {
    suite: Suite,
    key: SigningKey,
    demo: bool,
}

#[derive(Clone)]
enum SigningKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Sm2(Box<sm2::dsa::SigningKey>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("suite", &self.suite)
            .field("public_key", &self.public_key_hex())
            .field("demo", &self.demo)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a 32-byte secret key written as 64 hex digits
    /// (whitespace ignored); `None` means the embedded demo key.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the text is not 32 bytes of hex or not a
    /// valid key of the suite.
    pub fn new(suite: Suite, secret_hex: Option<&str>) -> Result<Self, KeyError> {
        let demo = secret_hex.is_none();
        let text: String = secret_hex
            .unwrap_or(DEMO_SIGNING_KEY_HEX)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let invalid = |message: &str| KeyError::Invalid {
            field: "audit.signing_key",
            message: message.to_owned(),
        };
        let bytes: [u8; 32] = hex::decode(&text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("must be 32 bytes written as 64 hex digits"))?;
        let key = match suite {
            Suite::Sha256Ed25519 => {
                SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&bytes)))
            }
            Suite::Sm3Sm2 => SigningKey::Sm2(Box::new(
                sm2::dsa::SigningKey::from_slice(SM2_DIST_ID, &bytes)
                    .map_err(|_| invalid("is not a valid SM2 private key"))?,
            )),
        };
        Ok(Self { suite, key, demo })
    }

    /// Whether this is the embedded demo key.
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The public key, hex: 32 bytes for Ed25519, the uncompressed SEC1
    /// point for SM2.
    pub fn public_key_hex(&self) -> String {
        match &self.key {
            SigningKey::Ed25519(k) => hex::encode(k.verifying_key().to_bytes()),
            SigningKey::Sm2(k) => hex::encode(k.verifying_key().to_sec1_bytes()),
        }
    }

    /// The signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use sm2::dsa::signature::Signer as _;
        match &self.key {
            SigningKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            SigningKey::Sm2(k) => {
                let s: sm2::dsa::Signature = k.sign(message);
                s.to_bytes().to_vec()
            }
        }
    }
}

/// Checks a signature of `message` by the public key `public_hex`.
pub fn verify_signature(suite: Suite, public_hex: &str, message: &[u8], sig: &[u8]) -> bool {
    use sm2::dsa::signature::Verifier as _;
    let Ok(public) = hex::decode(public_hex) else {
        return false;
    };
    match suite {
        Suite::Sha256Ed25519 => {
            let (Ok(pk), Ok(sig)) = (
                <[u8; 32]>::try_from(public.as_slice()),
                ed25519_dalek::Signature::from_slice(sig),
            ) else {
                return false;
            };
            ed25519_dalek::VerifyingKey::from_bytes(&pk)
                .is_ok_and(|vk| vk.verify_strict(message, &sig).is_ok())
        }
        Suite::Sm3Sm2 => {
            let (Ok(vk), Ok(sig)) = (
                sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DIST_ID, &public),
                sm2::dsa::Signature::from_slice(sig),
            ) else {
                return false;
            };
            vk.verify(message, &sig).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        // FIPS 180-2 "abc"; GB/T 32905-2016 appendix A.1 "abc".
        assert_eq!(
            hex::encode(Suite::Sha256Ed25519.hash(&[b"abc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(Suite::Sm3Sm2.hash(&[b"a", b"bc"])),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn subjects_are_keyed_and_stable() {
        for suite in [Suite::Sha256Ed25519, Suite::Sm3Sm2] {
            let a = SubjectKey::new(suite, Some(&"k".repeat(32))).unwrap();
            let b = SubjectKey::new(suite, Some(&"j".repeat(32))).unwrap();
            let id = "11010519491231002X";
            assert_eq!(a.subject(id), a.subject(id));
            assert_ne!(a.subject(id), b.subject(id));
            assert_eq!(a.subject(id).len(), 64);
            assert!(!a.subject(id).contains(id));
        }
        // HMAC-SHA256 as RFC 4231 test case 2 defines it.
        let m = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            m.update(b"what do ya want for nothing?");
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(
            m,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(SubjectKey::new(Suite::Sha256Ed25519, Some("short")).is_err());
    }

    /// The key absorbed once gives what an HMAC keyed anew for each
    /// subject gives, call after call (the keyed state is cloned, not
    /// used up), with the demo key and a configured one.
    #[test]
    fn a_subject_is_the_hmac_of_the_id_under_the_key() {
        let secret = "s".repeat(40);
        for (secret, raw) in [
            (None, DEMO_HMAC_KEY),
            (Some(secret.as_str()), secret.as_bytes()),
        ] {
            let sha = SubjectKey::new(Suite::Sha256Ed25519, secret).unwrap();
            let sm3 = SubjectKey::new(Suite::Sm3Sm2, secret).unwrap();
            for id in ["11010519491231002X", "513021198001011234", ""] {
                let mut m = Hmac::<Sha256>::new_from_slice(raw).unwrap();
                m.update(id.as_bytes());
                let want = hex::encode(m.finalize().into_bytes());
                assert_eq!(sha.subject(id), want);
                assert_eq!(sha.subject(id), want, "the second call too");
                let mut m = Hmac::<Sm3>::new_from_slice(raw).unwrap();
                m.update(id.as_bytes());
                assert_eq!(sm3.subject(id), hex::encode(m.finalize().into_bytes()));
            }
        }
    }

    #[test]
    fn signatures_verify_and_detect_changes() {
        for suite in [Suite::Sha256Ed25519, Suite::Sm3Sm2] {
            let s = Signer::new(suite, None).unwrap();
            assert!(s.is_demo());
            let sig = s.sign(b"checkpoint");
            let pk = s.public_key_hex();
            assert!(verify_signature(suite, &pk, b"checkpoint", &sig));
            assert!(!verify_signature(suite, &pk, b"checkpoinT", &sig));
            let other = Signer::new(suite, Some(&"11".repeat(32))).unwrap();
            assert!(!verify_signature(
                suite,
                &other.public_key_hex(),
                b"checkpoint",
                &sig
            ));
        }
        let e = Signer::new(Suite::Sha256Ed25519, Some("abcd")).unwrap_err();
        assert!(e.to_string().starts_with("audit.signing_key"), "{e}");
    }
}
