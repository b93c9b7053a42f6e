//! Secrets in memory and at rest.
//!
//! In memory, every password, token and key the broker holds is a [`Secret`]: `Debug` and
//! `Display` print `[redacted]`, so a secret cannot reach a log line or an error by
//! accident; [`Secret::expose`] marks each place the value is really used. It serializes as
//! the plain string, for the wire (cells, etcd's API) and for the sealed records below.
//!
//! At rest: what the broker keeps in etcd that opens a database is encrypted.
//!
//! Why: etcd holds the superuser and replication passwords of every instance and the
//! credentials of every binding. Anyone who can read etcd (a backup of it, a snapshot, a
//! process on one of its machines, a leaked etcd password) would otherwise hold every
//! database. So those values are sealed with an AEAD (ChaCha20-Poly1305, from aws-lc-rs, the
//! crypto library the TLS stack already uses) under a key that is never stored beside them:
//! it comes from a file or an environment variable of the broker ([`SecretsConfig`]).
//!
//! * Each sealed value names its key (`wa1:<key id>:<nonce and ciphertext, base64url>`), so
//!   keys can be rotated: the new key seals, old keys (`old_key_files`) still open, and
//!   `walarchive-broker rotate-secrets` re-seals everything with the new key, after which
//!   the old ones can go.
//! * Each value is bound to where it belongs (the AEAD's associated data is its purpose, e.g.
//!   `secrets/<instance id>`): a sealed value copied to another instance's record does not
//!   open there, so write access to etcd does not hand one tenant another's credentials.
//! * Values written in clear by earlier versions are still read, and `rotate-secrets` seals
//!   them.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A secret string (password, token): serialized as the plain string, but `Debug` and
/// `Display` print `[redacted]`; use [`Secret::expose`] where the value is needed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// A fresh random secret (32 bytes from the OS, base64url without padding).
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator is available");
        Secret(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ
/// (tokens, password digests: no early exit on the first differing byte). The one such
/// comparison of the workspace, from the crypto library the TLS stack already uses.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// What every sealed value starts with (format version 1).
pub const PREFIX: &str = "wa1:";

/// Errors of the keyring. Messages never hold a key or a plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// A key cannot be read or is not 32 bytes of base64.
    #[error("{0}")]
    Key(String),
    /// The value was sealed with a key this broker does not have.
    #[error("sealed with key {0}, which is neither secrets.key_file/key_env nor in secrets.old_key_files")]
    UnknownKey(String),
    /// Not a sealed value of this format.
    #[error("not a sealed value")]
    Malformed,
    /// The value does not open: altered, or sealed for another place.
    #[error(
        "the sealed value does not open with key {0}: it was altered, or sealed for another record"
    )]
    Tampered(String),
}

/// `[secrets]`: the key that seals the secrets the broker keeps in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the current key: 32 random bytes in base64 (`head -c 32 /dev/urandom |
    /// base64`); one trailing newline is ignored.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the current key instead.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Earlier keys, still accepted for opening (until `rotate-secrets` re-sealed everything).
    #[serde(default)]
    pub old_key_files: Vec<PathBuf>,
}

struct Key {
    id: String,
    key: LessSafeKey,
    /// A MAC key derived from this key (never the sealing key itself): [`Keyring::mac`].
    mac: hmac::Key,
}

impl Key {
    fn new(bytes: &[u8]) -> Result<Key, SecretsError> {
        if bytes.len() != 32 {
            return Err(SecretsError::Key(format!(
                "a key must be 32 bytes, not {}",
                bytes.len()
            )));
        }
        let mut h = Sha256::new();
        h.update(b"walarchive-broker secrets key id\0");
        h.update(bytes);
        let id: String = h.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| SecretsError::Key("the key is not a ChaCha20-Poly1305 key".into()))?;
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"walarchive-broker mac key\0",
        );
        Ok(Key {
            id,
            key: LessSafeKey::new(key),
            mac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }
}

/// The current key and the earlier ones. `Debug` shows key ids only.
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// Decodes a key as written in a key file or variable (base64 of 32 bytes).
fn decode_key(text: &str, origin: &str) -> Result<Key, SecretsError> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let t = t.strip_suffix('\r').unwrap_or(t).trim();
    let bytes = STANDARD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| SecretsError::Key(format!("{origin} is not base64 (expected 32 random bytes in base64: head -c 32 /dev/urandom | base64)")))?;
    Key::new(&bytes).map_err(|e| SecretsError::Key(format!("{origin}: {e}")))
}

fn read_key_file(path: &Path) -> Result<Key, SecretsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SecretsError::Key(format!("cannot read {}: {e}", path.display())))?;
    decode_key(&text, &path.display().to_string())
}

impl Keyring {
    /// The keyring of `[secrets]`: exactly one of `key_file` and `key_env`, and the old keys.
    pub fn load(config: &SecretsConfig) -> Result<Keyring, SecretsError> {
        let current = match (&config.key_file, &config.key_env) {
            (Some(path), None) => read_key_file(path)?,
            (None, Some(var)) => {
                let v = std::env::var(var).map_err(|_| {
                    SecretsError::Key(format!(
                        "environment variable {var} (secrets.key_env) is not set"
                    ))
                })?;
                decode_key(&v, &format!("environment variable {var}"))?
            }
            _ => {
                return Err(SecretsError::Key(
                    "set exactly one of secrets.key_file and secrets.key_env".into(),
                ))
            }
        };
        let old = config
            .old_key_files
            .iter()
            .map(|p| read_key_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { current, old })
    }

    /// A keyring of one key given as its base64 text (tests, tools).
    pub fn from_base64(key: &str) -> Result<Keyring, SecretsError> {
        Ok(Keyring {
            current: decode_key(key, "the key")?,
            old: Vec::new(),
        })
    }

    /// Adds an old key (given as its base64 text) accepted for opening.
    pub fn with_old(mut self, key: &str) -> Result<Keyring, SecretsError> {
        self.old.push(decode_key(key, "the old key")?);
        Ok(self)
    }

    /// A fresh key: 32 random bytes, in base64 (what a key file holds).
    pub fn generate_key() -> String {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS random number generator");
        STANDARD.encode(b)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext` for `purpose` (where it is stored, e.g. `secrets/<instance id>`).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator");
        let mut buf = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail for inputs this small");
        let mut out = nonce.to_vec();
        out.extend(buf);
        format!(
            "{PREFIX}{}:{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// A MAC (HMAC-SHA256, with a key derived from the current key) of `message` for
    /// `purpose`: tokens the broker hands out and checks later without storing them (the
    /// dashboard's per-instance links and its session cookies). `purpose` separates them, so
    /// one kind of token is never valid as another.
    pub fn mac(&self, purpose: &str, message: &[u8]) -> [u8; 32] {
        mac_with(&self.current, purpose, message)
    }

    /// Whether `tag` is [`Keyring::mac`] of `message` for `purpose` under the current key or
    /// an old one (tokens made before a key rotation stay valid until `old_key_files` drops
    /// the key), compared in constant time.
    pub fn verify_mac(&self, purpose: &str, message: &[u8], tag: &[u8]) -> bool {
        std::iter::once(&self.current)
            .chain(&self.old)
            .any(|k| constant_time_eq(&mac_with(k, purpose, message), tag))
    }

    /// Whether `value` looks like a sealed value (else it was written in clear).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// The id of the key `sealed` was sealed with.
    pub fn key_id(sealed: &str) -> Option<&str> {
        sealed.strip_prefix(PREFIX)?.split(':').next()
    }

    /// Opens `sealed` (sealed for `purpose`): the plaintext, and whether the current key sealed
    /// it (else it should be sealed again).
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<(Vec<u8>, bool), SecretsError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SecretsError::Malformed)?;
        let (id, data) = rest.split_once(':').ok_or(SecretsError::Malformed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?;
        let mut buf = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretsError::Malformed)?;
        if buf.len() < NONCE_LEN {
            return Err(SecretsError::Malformed);
        }
        let ct = buf.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&buf).map_err(|_| SecretsError::Malformed)?;
        let mut ct = ct;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut ct)
            .map_err(|_| SecretsError::Tampered(id.to_string()))?
            .to_vec();
        Ok((plain, id == self.current.id))
    }
}

fn mac_with(key: &Key, purpose: &str, message: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&key.mac);
    ctx.update(&(purpose.len() as u64).to_be_bytes());
    ctx.update(purpose.as_bytes());
    ctx.update(message);
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_redacted_when_shown_and_plain_on_the_wire() {
        let s = Secret::new("pa$$word");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let wire = serde_json::to_string(&s).unwrap();
        assert_eq!(wire, r#""pa$$word""#);
        assert_eq!(serde_json::from_str::<Secret>(&wire).unwrap(), s);
        let g = Secret::generate();
        assert_eq!(g.expose().len(), 43);
        assert_ne!(g, Secret::generate());
    }

    #[test]
    fn seal_open_bind_and_rotate() {
        let k1 = Keyring::generate_key();
        let k2 = Keyring::generate_key();
        let ring1 = Keyring::from_base64(&k1).unwrap();
        let sealed = ring1.seal("secrets/a", b"hunter2");
        assert!(Keyring::is_sealed(&sealed));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(Keyring::key_id(&sealed), Some(ring1.current_id()));
        assert_eq!(
            ring1.open("secrets/a", &sealed).unwrap(),
            (b"hunter2".to_vec(), true)
        );
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, ring1.seal("secrets/a", b"hunter2"));
        // Bound to its place: another instance's record does not open it.
        assert_eq!(
            ring1.open("secrets/b", &sealed),
            Err(SecretsError::Tampered(ring1.current_id().to_string()))
        );
        // Altered: refused.
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(matches!(
            ring1.open("secrets/a", &bad),
            Err(SecretsError::Tampered(_) | SecretsError::Malformed)
        ));
        // A new key: old values open with the old key (not current: to be re-sealed), and
        // a broker without the old key cannot open them.
        let ring2 = Keyring::from_base64(&k2).unwrap().with_old(&k1).unwrap();
        assert_eq!(
            ring2.open("secrets/a", &sealed).unwrap(),
            (b"hunter2".to_vec(), false)
        );
        let resealed = ring2.seal("secrets/a", b"hunter2");
        assert_eq!(Keyring::key_id(&resealed), Some(ring2.current_id()));
        let only2 = Keyring::from_base64(&k2).unwrap();
        assert_eq!(
            only2.open("secrets/a", &sealed),
            Err(SecretsError::UnknownKey(ring1.current_id().to_string()))
        );
        assert_eq!(
            only2.open("secrets/a", "hunter2"),
            Err(SecretsError::Malformed)
        );
        // Debug shows key ids only.
        let dbg = format!("{ring2:?}");
        assert!(!dbg.contains(&k1) && !dbg.contains(&k2), "{dbg}");
    }

    #[test]
    fn keys_come_from_a_file_or_a_variable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, Keyring::generate_key() + "\n").unwrap();
        let c = SecretsConfig {
            key_file: Some(f.clone()),
            key_env: None,
            old_key_files: vec![],
        };
        Keyring::load(&c).unwrap();
        std::fs::write(&f, "c2hvcnQ=\n").unwrap();
        let e = Keyring::load(&c).unwrap_err().to_string();
        assert!(e.ends_with("key: a key must be 32 bytes, not 5"), "{e}");
        std::fs::write(&f, "not base64!\n").unwrap();
        let e = Keyring::load(&c).unwrap_err().to_string();
        assert!(e.contains("is not base64"), "{e}");
        assert!(
            !e.contains("not base64!"),
            "the key's text is never echoed: {e}"
        );
        let e = Keyring::load(&SecretsConfig {
            key_file: None,
            key_env: Some("WALARCHIVE_TEST_NO_SUCH_KEY_VARIABLE".into()),
            old_key_files: vec![],
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "environment variable WALARCHIVE_TEST_NO_SUCH_KEY_VARIABLE (secrets.key_env) is not set"
        );
        let e = Keyring::load(&SecretsConfig {
            key_file: None,
            key_env: None,
            old_key_files: vec![],
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "set exactly one of secrets.key_file and secrets.key_env");
    }

    #[test]
    fn macs_are_bound_to_their_purpose_and_survive_a_key_rotation() {
        let k1 = Keyring::generate_key();
        let ring1 = Keyring::from_base64(&k1).unwrap();
        let tag = ring1.mac("link", b"instance-a");
        assert!(ring1.verify_mac("link", b"instance-a", &tag));
        assert!(!ring1.verify_mac("link", b"instance-b", &tag));
        assert!(!ring1.verify_mac("session", b"instance-a", &tag));
        assert!(!ring1.verify_mac("link", b"instance-a", &tag[..31]));
        let ring2 = Keyring::from_base64(&Keyring::generate_key())
            .unwrap()
            .with_old(&k1)
            .unwrap();
        assert!(ring2.verify_mac("link", b"instance-a", &tag));
        assert_ne!(ring2.mac("link", b"instance-a"), tag);
        let other = Keyring::from_base64(&Keyring::generate_key()).unwrap();
        assert!(!other.verify_mac("link", b"instance-a", &tag));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"token", b""));
    }
}
