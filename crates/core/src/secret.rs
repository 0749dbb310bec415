//! Encryption of secrets kept at rest: webhook signing secrets are stored sealed with
//! AES-256-GCM under the server's key, so a copy of the data directory or of the database
//! does not let anyone forge a tenant's webhooks.
//!
//! Sealed values read `enc:v1:<base64 of nonce || ciphertext || tag>`; a value without the
//! `enc:` prefix is a secret stored before encryption existed and is read as it is. The
//! additional data binds a sealed secret to its owner (the destination id), so a sealed value
//! copied onto another record does not open. Nonces are random (96 bits): safe far beyond the
//! number of destinations one key will ever seal.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const SEALED_PREFIX: &str = "enc:";
const SEALED_V1: &str = "enc:v1:";

/// The 32-byte key that seals secrets at rest. Never printed.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

/// A key that is not 32 bytes in hex or base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a secret key must be 32 bytes written as 64 hex digits or as base64")]
pub struct SecretKeyError;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the sealed secret is not valid base64 of a nonce and a ciphertext")]
    Malformed,
    #[error("the sealed secret uses an encryption version this build does not know")]
    UnknownVersion,
    #[error("the sealed secret does not open with this key (was PULSESTREAM_SECRET_KEY changed?)")]
    WrongKey,
    #[error("the system's random number generator failed")]
    Random,
}

impl SecretKey {
    /// Parses 64 hex digits or standard base64 of 32 bytes (surrounding whitespace ignored).
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(text: &str) -> Result<Self, SecretKeyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            (0..32)
                .map(|index| u8::from_str_radix(&text[index * 2..index * 2 + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| SecretKeyError)?
        } else {
            BASE64.decode(text).map_err(|_| SecretKeyError)?
        };
        Ok(Self(bytes.try_into().map_err(|_| SecretKeyError)?))
    }

    /// Makes a new random key.
    ///
    /// # Errors
    /// The system's random number generator failed.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(Self(bytes))
    }

    /// Returns the key as 64 hex digits, the form [`SecretKey::parse`] reads back.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Seals and opens secrets with one key (AES-256-GCM).
pub struct SecretCipher {
    key: LessSafeKey,
    random: SystemRandom,
}

impl SecretCipher {
    /// A cipher using `key`.
    pub fn new(key: &SecretKey) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0)
            .expect("AES-256-GCM takes exactly the 32 bytes a SecretKey holds");
        Self {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        }
    }

    /// Returns `secret` sealed for storage, bound to `owner` (opening needs the same owner).
    ///
    /// # Errors
    /// The system's random number generator failed.
    pub fn seal(&self, secret: &str, owner: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner),
                &mut sealed,
            )
            .map_err(|_| SecretError::Random)?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(format!("{SEALED_V1}{}", BASE64.encode(stored)))
    }

    /// Returns the secret a stored value holds: opened if sealed, as it is otherwise.
    ///
    /// # Errors
    /// A sealed value that is malformed, of an unknown version, sealed under another key or
    /// for another owner.
    pub fn open<'a>(&self, stored: &'a str, owner: &[u8]) -> Result<Cow<'a, str>, SecretError> {
        if !stored.starts_with(SEALED_PREFIX) {
            return Ok(Cow::Borrowed(stored));
        }
        let encoded = stored
            .strip_prefix(SEALED_V1)
            .ok_or(SecretError::UnknownVersion)?;
        let mut bytes = BASE64.decode(encoded).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SecretError::Malformed)?;
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(owner), &mut sealed)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(opened.to_vec())
            .map(Cow::Owned)
            .map_err(|_| SecretError::Malformed)
    }
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCipher(AES-256-GCM, [redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn cipher() -> SecretCipher {
        SecretCipher::new(&SecretKey::generate().unwrap())
    }

    #[test]
    fn sealed_secrets_hide_the_secret_and_open_to_it() {
        let cipher = cipher();

        let sealed = cipher.seal(SECRET, b"owner-1").unwrap();

        assert!(sealed.starts_with("enc:v1:"));
        assert!(!sealed.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_ne!(
            sealed,
            cipher.seal(SECRET, b"owner-1").unwrap(),
            "fresh nonce"
        );
        assert_eq!(cipher.open(&sealed, b"owner-1").unwrap(), SECRET);
    }

    #[test]
    fn secrets_stored_before_encryption_are_read_as_they_are() {
        assert_eq!(cipher().open(SECRET, b"owner-1").unwrap(), SECRET);
    }

    #[test]
    fn another_key_another_owner_or_a_changed_byte_does_not_open() {
        let cipher = cipher();
        let sealed = cipher.seal(SECRET, b"owner-1").unwrap();

        assert_eq!(
            self::cipher().open(&sealed, b"owner-1"),
            Err(SecretError::WrongKey)
        );
        assert_eq!(cipher.open(&sealed, b"owner-2"), Err(SecretError::WrongKey));
        let mut bytes = BASE64.decode(&sealed["enc:v1:".len()..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("enc:v1:{}", BASE64.encode(bytes));
        assert_eq!(
            cipher.open(&tampered, b"owner-1"),
            Err(SecretError::WrongKey)
        );
        assert_eq!(
            cipher.open("enc:v2:AAAA", b"owner-1"),
            Err(SecretError::UnknownVersion)
        );
        assert_eq!(
            cipher.open("enc:v1:!!", b"owner-1"),
            Err(SecretError::Malformed)
        );
    }

    #[test]
    fn keys_parse_from_hex_and_base64_and_nothing_else() {
        let key = SecretKey::generate().unwrap();

        let from_hex = SecretKey::parse(&key.to_hex()).unwrap();
        let from_base64 = SecretKey::parse(&BASE64.encode(key.0)).unwrap();

        assert_eq!(from_hex.0, key.0);
        assert_eq!(from_base64.0, key.0);
        assert_eq!(format!("{key:?}"), "SecretKey([redacted])");
        for bad in ["", "00", &"g".repeat(64), &BASE64.encode([0u8; 16])] {
            assert_eq!(SecretKey::parse(bad).unwrap_err(), SecretKeyError, "{bad}");
        }
    }
}
