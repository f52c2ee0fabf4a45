//! Data keys and key-encryption keys.

use std::fmt;
use std::future::Future;
use std::path::Path;

use base64::Engine as _;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use super::PersonalError;

/// Bytes of an AES-256-GCM nonce, stored before each ciphertext.
pub(crate) const NONCE_BYTES: usize = 12;

/// A subject's data key: 32 random bytes, zeroed when dropped, never shown
/// by `Debug`.
#[derive(Clone)]
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_BYTES],
}

/// Bytes of a data key's id (see [`DataKey::id`]).
pub(crate) const KEY_ID_BYTES: usize = 4;

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        DataKey::from_bytes(bytes)
    }

    fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(bytes.as_slice());
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        DataKey { bytes, id }
    }

    /// One key made from several (in order): what a snapshot holding
    /// several subjects' data is sealed with, so that forgetting any one
    /// of them makes it unreadable.
    pub(crate) fn combine<'k>(keys: impl IntoIterator<Item = &'k DataKey>) -> DataKey {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"annals combined data key");
        for key in keys {
            hasher.update(key.bytes.as_slice());
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&hasher.finalize());
        DataKey::from_bytes(bytes)
    }

    /// A short id of this key (the first bytes of its SHA-256), stored with
    /// each value it seals: a value sealed by an earlier key of the same
    /// subject (forgotten, then started again) is told from a damaged one.
    pub(crate) fn id(&self) -> [u8; KEY_ID_BYTES] {
        self.id
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey::from_bytes(Zeroizing::new(array)))
    }

    // AES-256-GCM, not ChaCha20-Poly1305: with AES-NI a small value
    // decrypts in 0.25 µs against 1 µs (a one-off timing on this machine),
    // and opening 10 two-field events went from 47 to 25 µs: most of the
    // "load 10 events" overhead in benches/personal.rs.
    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.bytes.as_slice()))
    }

    /// `plaintext` encrypted under a fresh nonce, with `aad` bound to it:
    /// nonce followed by ciphertext and tag.
    pub(crate) fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // encryption fails only for messages beyond 256 GiB
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of what [`encrypt`](Self::encrypt) made, or `None`
    /// when it does not authenticate (another key, other `aad`, damage).
    pub(crate) fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, msg) = sealed.split_at(NONCE_BYTES);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg, aad })
            .ok()
            .map(Zeroizing::new)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key as stored: encrypted by a key-encryption key, bound to its
/// subject.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The key-encryption key that wrapped it.
    pub kek_id: String,
    /// Nonce, ciphertext and tag.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_id", &self.kek_id)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Wraps and unwraps data keys with a key-encryption key (KEK). annals
/// ships [`LocalKeyProvider`] (a KEK from an environment variable or a key
/// file, or a random one for tests); an application implements this trait
/// for Vault, a cloud KMS or an HSM.
pub trait KeyProvider: Send + Sync + 'static {
    /// The KEK's id, stored with every key it wraps (rotation finds the
    /// keys wrapped by an older KEK by it).
    fn kek_id(&self) -> &str;

    /// Wraps `key`, bound to `subject` (a wrapped key moved to another
    /// subject does not unwrap).
    fn wrap(
        &self,
        subject: &str,
        key: &DataKey,
    ) -> impl Future<Output = Result<WrappedKey, PersonalError>> + Send;

    /// Unwraps a key [`wrap`](Self::wrap) made for `subject`; a key
    /// wrapped by another KEK, or damaged, is [`PersonalError::WrongKek`].
    fn unwrap(
        &self,
        subject: &str,
        wrapped: &WrappedKey,
    ) -> impl Future<Output = Result<DataKey, PersonalError>> + Send;
}

/// A KEK held by the process: 32 bytes from base64 text (an environment
/// variable, a key file), or random ([`generate`](Self::generate), for
/// tests). Wraps with AES-256-GCM.
#[derive(Clone)]
pub struct LocalKeyProvider {
    id: String,
    kek: DataKey,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("kek_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    /// A random KEK (an in-memory provider: what it wraps is lost with it).
    pub fn generate(id: impl Into<String>) -> Self {
        LocalKeyProvider {
            id: id.into(),
            kek: DataKey::generate(),
        }
    }

    /// A KEK from 32 bytes in standard base64 (`openssl rand -base64 32`).
    pub fn from_base64(id: impl Into<String>, text: &str) -> Result<Self, PersonalError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| PersonalError::Kek(format!("not base64: {e}")))?,
        );
        let kek = DataKey::from_slice(&bytes).ok_or_else(|| {
            PersonalError::Kek(format!("a KEK is 32 bytes; this one is {}", bytes.len()))
        })?;
        Ok(LocalKeyProvider { id: id.into(), kek })
    }

    /// A KEK from the environment variable `var` (base64).
    pub fn from_env(id: impl Into<String>, var: &str) -> Result<Self, PersonalError> {
        let text = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| PersonalError::Kek(format!("the variable `{var}` is not set")))?,
        );
        Self::from_base64(id, &text)
    }

    /// A KEK from a key file (base64).
    pub fn from_file(id: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, PersonalError> {
        let path = path.as_ref();
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                PersonalError::Kek(format!("cannot read `{}`: {e}", path.display()))
            })?);
        Self::from_base64(id, &text)
    }
}

impl KeyProvider for LocalKeyProvider {
    fn kek_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, subject: &str, key: &DataKey) -> Result<WrappedKey, PersonalError> {
        Ok(WrappedKey {
            kek_id: self.id.clone(),
            bytes: self.kek.encrypt(key.bytes.as_slice(), subject.as_bytes()),
        })
    }

    async fn unwrap(&self, subject: &str, wrapped: &WrappedKey) -> Result<DataKey, PersonalError> {
        let wrong = || PersonalError::WrongKek {
            subject: subject.to_owned(),
            kek_id: self.id.clone(),
        };
        if wrapped.kek_id != self.id {
            return Err(wrong());
        }
        let plain = self
            .kek
            .decrypt(&wrapped.bytes, subject.as_bytes())
            .ok_or_else(wrong)?;
        DataKey::from_slice(&plain).ok_or_else(wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wraps_for_one_subject_and_one_kek() {
        let kek = LocalKeyProvider::generate("kek-1");
        let key = DataKey::generate();
        let wrapped = kek.wrap("patient-1", &key).await.expect("wrap");
        let back = kek.unwrap("patient-1", &wrapped).await.expect("unwrap");
        let sealed = key.encrypt(b"Ana", b"aad");
        assert_eq!(
            back.decrypt(&sealed, b"aad").as_deref().map(Vec::as_slice),
            Some(&b"Ana"[..])
        );
        // another subject, another KEK with the same id, damage: WrongKek
        assert!(matches!(
            kek.unwrap("patient-2", &wrapped).await,
            Err(PersonalError::WrongKek { .. })
        ));
        let other = LocalKeyProvider::generate("kek-1");
        assert!(matches!(
            other.unwrap("patient-1", &wrapped).await,
            Err(PersonalError::WrongKek { .. })
        ));
        let mut damaged = wrapped.clone();
        damaged.bytes[20] ^= 1;
        assert!(kek.unwrap("patient-1", &damaged).await.is_err());
    }

    #[test]
    fn key_material_is_never_shown() {
        let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let kek = LocalKeyProvider::from_base64("kek-1", text).expect("32 bytes");
        let shown = format!("{kek:?} {:?}", DataKey::generate());
        assert!(!shown.contains("AAEC") && !shown.contains('['), "{shown}");
        assert!(matches!(
            LocalKeyProvider::from_base64("k", "c2hvcnQ="),
            Err(PersonalError::Kek(m)) if m.contains("32 bytes")
        ));
        assert!(LocalKeyProvider::from_env("k", "ANNALS_TEST_NO_SUCH_VARIABLE").is_err());
    }

    #[test]
    fn each_seal_has_a_fresh_nonce() {
        let key = DataKey::generate();
        let (a, b) = (key.encrypt(b"same", b""), key.encrypt(b"same", b""));
        assert_ne!(a, b);
        assert!(key.decrypt(&a[..5], b"").is_none());
    }
}
