//! Encryption at rest and blind indexing for identity numbers.
//!
//! * [`IdentityCipher`]: AES-256-GCM under a key ring (one current key for new ciphertexts,
//!   any number of previous keys still accepted for decryption), so keys rotate without
//!   downtime: deploy the new key as current with the old one as previous, re-encrypt the rows
//!   for which [`IdentityCipher::needs_reencryption`] is true, then drop the old key.
//!   Blob format: `key_id(4) || nonce(12) || ciphertext || tag(16)`, where `key_id` is the first
//!   four bytes of SHA-256 of the key and the nonce is random. The caller's context (e.g. the
//!   tenant id) is the associated data, so a ciphertext cannot be moved to another tenant.
//! * [`BlindIndex`]: HMAC-SHA256 over `tenant_id || 0x00 || digits`, a deterministic lookup key
//!   that needs no decryption, and that differs between tenants for the same number, so
//!   tenants cannot be linked through it. Its key must be a different key from the encryption
//!   keys; changing it means recomputing every index from the decrypted numbers.
//!
//! Keys are configured as standard base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`).
//! Neither the errors nor the `Debug` output of anything here contains key material or
//! plaintext.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD;
use base64::{DecodeSliceError, Engine};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::identity::{IdentityNumber, SyntheticPolicy};

const KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = KEY_ID_LEN + NONCE_LEN;
/// Bytes that [`IdentityCipher::encrypt`] adds to a plaintext: key id, nonce and tag.
pub(crate) const BLOB_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Which configured key a [`CryptoError::InvalidKey`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The current encryption key.
    Current,
    /// The n-th (1-based) entry of the comma-separated previous encryption keys.
    Previous(usize),
    /// The blind-index key.
    BlindIndex,
}

impl fmt::Display for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("the current encryption key"),
            Self::Previous(n) => write!(f, "previous encryption key number {n}"),
            Self::BlindIndex => f.write_str("the blind-index key"),
        }
    }
}

/// What is wrong with a configured key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Not standard base64.
    NotBase64,
    /// Decodes to something other than 32 bytes.
    WrongLength,
    /// Decodes to 32 zero bytes (a placeholder, not a key).
    AllZero,
}

/// Errors of key configuration, encryption and decryption. Never contains key material or
/// plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    /// A configured key is unusable.
    InvalidKey { slot: KeySlot, problem: KeyProblem },
    /// Two different configured encryption keys have the same key id.
    KeyIdCollision,
    /// The blob is too short to hold a key id, nonce and tag.
    Malformed,
    /// The blob was encrypted under a key that is not configured (any more).
    UnknownKey,
    /// Authentication failed: wrong associated data (context), wrong key, or tampered blob.
    Decryption,
    /// The blob decrypted, but not to a well-formed identity number.
    NotAnIdentityNumber,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidKey { slot, problem } => {
                let why = match problem {
                    KeyProblem::NotBase64 => "is not valid standard base64",
                    KeyProblem::WrongLength => "must decode to exactly 32 bytes",
                    KeyProblem::AllZero => "must not be all zero bytes",
                };
                write!(f, "{slot} {why}")
            }
            Self::KeyIdCollision => {
                f.write_str("two different encryption keys have the same key id; generate a new key")
            }
            Self::Malformed => f.write_str("ciphertext is too short to be valid"),
            Self::UnknownKey => f.write_str("ciphertext was encrypted with a key that is not configured"),
            Self::Decryption => {
                f.write_str("ciphertext failed authentication (wrong key or context, or it was altered)")
            }
            Self::NotAnIdentityNumber => f.write_str("decrypted value is not a well-formed identity number"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// Decodes one configured key: trimmed, standard base64, exactly 32 bytes, not all zero.
fn decode_key(b64: &str, slot: KeySlot) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let invalid = |problem| CryptoError::InvalidKey { slot, problem };
    // Room for a little more than a key, so "too long" is told apart from "not base64".
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 16]);
    let written = STANDARD.decode_slice(b64.trim(), &mut buf[..]).map_err(|e| match e {
        DecodeSliceError::OutputSliceTooSmall => invalid(KeyProblem::WrongLength),
        DecodeSliceError::DecodeError(_) => invalid(KeyProblem::NotBase64),
    })?;
    if written != KEY_LEN {
        return Err(invalid(KeyProblem::WrongLength));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&buf[..KEY_LEN]);
    if key.iter().all(|&b| b == 0) {
        return Err(invalid(KeyProblem::AllZero));
    }
    Ok(key)
}

fn key_id(key: &[u8; KEY_LEN]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(key);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One key of the ring. `Aes256Gcm` zeroes its key schedule on drop (`zeroize` feature).
#[derive(Clone)]
struct RingKey {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

impl RingKey {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        Self { id: key_id(key), cipher: Aes256Gcm::new_from_slice(key).expect("AES-256 key is 32 bytes") }
    }
}

/// AES-256-GCM encryption of identity numbers (or other small secrets) under a rotating key
/// ring. See the module docs for the blob format and the rotation procedure.
#[derive(Clone)]
pub struct IdentityCipher {
    current: RingKey,
    previous: Vec<RingKey>,
}

impl IdentityCipher {
    /// Builds the key ring from the current key and a comma-separated list of previous keys
    /// (may be empty; blank entries are ignored). Each key is standard base64 of 32 bytes.
    /// A previous key identical to the current one (or to another previous key) is ignored.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] naming the bad key (never showing it), or
    /// [`CryptoError::KeyIdCollision`] if two different keys share an id.
    pub fn from_config(current_key: &str, previous_keys: &str) -> Result<Self, CryptoError> {
        let current_key = decode_key(current_key, KeySlot::Current)?;
        let current = RingKey::new(&current_key);
        // Keys kept only while configuring, to tell a repeated key from an id collision.
        let mut seen = vec![(current.id, current_key)];
        let mut previous = Vec::new();
        for (n, entry) in previous_keys.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let key = decode_key(entry, KeySlot::Previous(n + 1))?;
            let ring_key = RingKey::new(&key);
            match seen.iter().find(|(id, _)| *id == ring_key.id) {
                Some((_, other)) if other[..] == key[..] => continue, // the same key again
                Some(_) => return Err(CryptoError::KeyIdCollision),
                None => {}
            }
            seen.push((ring_key.id, key));
            previous.push(ring_key);
        }
        Ok(Self { current, previous })
    }

    /// A ring of one key given as bytes (a key derived in code, such as the cursor key of
    /// [`crate::cursor`], rather than one configured as base64).
    /// A cipher over one raw key (derived keys, per-subject keys), with no earlier keys.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        Self { current: RingKey::new(key), previous: Vec::new() }
    }

    /// Encrypts `plaintext` under the current key, bound to the context `aad` (e.g. the tenant
    /// id's bytes): decrypting needs the same `aad`.
    ///
    /// # Panics
    /// If the operating system's random number generator fails: without a fresh random nonce
    /// AES-GCM must not be used at all.
    #[must_use]
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).expect("the system random number generator failed");
        let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(&self.current.id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = self
            .current
            .cipher
            .encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(nonce), aad, (&mut blob[HEADER_LEN..]).into())
            .expect("AES-GCM length limits are far above identity numbers");
        blob.extend_from_slice(&tag);
        blob
    }

    /// Decrypts a blob made by [`IdentityCipher::encrypt`] with any key of the ring, checking
    /// that it was made for the context `aad`.
    ///
    /// # Errors
    /// [`CryptoError::Malformed`], [`CryptoError::UnknownKey`] (its key is not in the ring) or
    /// [`CryptoError::Decryption`] (wrong context, wrong key or altered blob).
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if blob.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (header, body) = blob.split_at(HEADER_LEN);
        let (id, nonce) = header.split_at(KEY_ID_LEN);
        let key = self.key(id).ok_or(CryptoError::UnknownKey)?;
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
        let tag = Tag::<Aes256Gcm>::try_from(tag).map_err(|_| CryptoError::Malformed)?;
        let mut plaintext = ciphertext.to_vec();
        let result = key.cipher.decrypt_inout_detached(&nonce, aad, (&mut plaintext[..]).into(), &tag);
        if result.is_err() {
            plaintext.zeroize();
            return Err(CryptoError::Decryption);
        }
        Ok(plaintext)
    }

    /// True when the blob was not encrypted under the current key (or is not a blob at all),
    /// i.e. a rotation job should decrypt and re-encrypt it.
    #[must_use]
    pub fn needs_reencryption(&self, blob: &[u8]) -> bool {
        blob.len() < HEADER_LEN + TAG_LEN || blob[..KEY_ID_LEN] != self.current.id
    }

    /// Encrypts an identity number's digits; see [`IdentityCipher::encrypt`].
    ///
    /// # Panics
    /// As [`IdentityCipher::encrypt`].
    #[must_use]
    pub fn encrypt_identity(&self, id: &IdentityNumber, aad: &[u8]) -> Vec<u8> {
        self.encrypt(id.expose().as_bytes(), aad)
    }

    /// Decrypts a blob made by [`IdentityCipher::encrypt_identity`] back into an
    /// [`IdentityNumber`], wiping the intermediate plaintext. The deployment's synthetic-number
    /// policy was applied when the number was stored, so any well-formed number is accepted
    /// here (a deployment that later tightens its policy can still read its old rows).
    ///
    /// # Errors
    /// As [`IdentityCipher::decrypt`], or [`CryptoError::NotAnIdentityNumber`].
    pub fn decrypt_identity(&self, blob: &[u8], aad: &[u8]) -> Result<IdentityNumber, CryptoError> {
        let plaintext = Zeroizing::new(self.decrypt(blob, aad)?);
        std::str::from_utf8(&plaintext)
            .ok()
            .and_then(|s| IdentityNumber::parse(s, SyntheticPolicy::Accept).ok())
            .ok_or(CryptoError::NotAnIdentityNumber)
    }

    /// The id (first four bytes of SHA-256 of the key) of the current key.
    #[must_use]
    pub fn current_key_id(&self) -> [u8; KEY_ID_LEN] {
        self.current.id
    }

    fn key(&self, id: &[u8]) -> Option<&RingKey> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id[..] == *id)
    }
}

impl fmt::Debug for IdentityCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids are public (they prefix every blob); the keys are not printed.
        f.debug_struct("IdentityCipher")
            .field("current_key_id", &hex(&self.current.id))
            .field("previous_key_ids", &self.previous.iter().map(|k| hex(&k.id)).collect::<Vec<_>>())
            .finish()
    }
}

/// Deterministic, tenant-scoped lookup key for identity numbers: HMAC-SHA256 under a secret key
/// of `tenant_id || 0x00 || digits`. The digits are always eleven bytes at the end, so the
/// encoding is unambiguous whatever the tenant id holds.
#[derive(Clone)]
pub struct BlindIndex {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl BlindIndex {
    /// Builds the index from its key: standard base64 of 32 bytes, separate from the
    /// encryption keys.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if the key is not base64 of 32 bytes, not all zero.
    pub fn from_config(key_b64: &str) -> Result<Self, CryptoError> {
        Ok(Self { key: decode_key(key_b64, KeySlot::BlindIndex)? })
    }

    /// The 32-byte blind index of `id` within `tenant_id`.
    #[must_use]
    pub fn index(&self, tenant_id: &str, id: &IdentityNumber) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("HMAC takes any key size");
        mac.update(tenant_id.as_bytes());
        mac.update(&[0]);
        mac.update(id.expose().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The tombstone of an erased pupil known by the blind index `index`: HMAC-SHA256 under
    /// this key of a label that no blind-index input can begin with (those begin with a tenant
    /// uuid), the tenant and the index. It says "was erased" for a number a source sends, and
    /// nothing else: it is not the index, and finds no row.
    #[must_use]
    pub fn tombstone_of_index(&self, tenant_id: &str, index: &[u8]) -> Vec<u8> {
        self.tombstone(tenant_id, b"index", index)
    }

    /// The tombstone of an erased pupil known by their Feide username (lower-cased as stored).
    #[must_use]
    pub fn tombstone_of_feide(&self, tenant_id: &str, feide_username: &str) -> Vec<u8> {
        self.tombstone(tenant_id, b"feide", feide_username.as_bytes())
    }

    fn tombstone(&self, tenant_id: &str, kind: &[u8], value: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("HMAC takes any key size");
        mac.update(b"tavle erased pupil v1\0");
        mac.update(tenant_id.as_bytes());
        mac.update(&[0]);
        mac.update(kind);
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes().to_vec()
    }
}

/// A fresh random 32-byte key (per-subject keys).
#[must_use]
pub fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::getrandom(&mut key[..]).expect("the system random number generator failed");
    key
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// A deterministic test key; never a production key.
    fn key(seed: u8) -> String {
        b64(&[seed; KEY_LEN])
    }

    fn cipher(current: u8, previous: &[u8]) -> IdentityCipher {
        let prev: Vec<String> = previous.iter().map(|&s| key(s)).collect();
        IdentityCipher::from_config(&key(current), &prev.join(",")).unwrap()
    }

    fn some_id(serial: u32) -> IdentityNumber {
        IdentityNumber::synthetic((2015, 3, 14), serial).unwrap()
    }

    #[test]
    fn round_trip_and_format() {
        let c = cipher(1, &[]);
        let blob = c.encrypt(b"secret", b"tenant-a");
        assert_eq!(blob.len(), 4 + 12 + 6 + 16);
        assert_eq!(blob[..4], c.current_key_id());
        assert_eq!(c.current_key_id()[..], Sha256::digest([1u8; 32])[..4]);
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.decrypt(&blob, b"tenant-a").unwrap(), b"secret");
        assert!(!c.needs_reencryption(&blob));
        // Empty plaintext works too.
        assert_eq!(c.decrypt(&c.encrypt(b"", b""), b"").unwrap(), b"");
    }

    #[test]
    fn nonces_are_fresh() {
        let c = cipher(1, &[]);
        let a = c.encrypt(b"same", b"t");
        let b = c.encrypt(b"same", b"t");
        assert_ne!(a[4..16], b[4..16]);
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_aad_fails() {
        let c = cipher(1, &[]);
        let blob = c.encrypt(b"secret", b"tenant-a");
        assert_eq!(c.decrypt(&blob, b"tenant-b"), Err(CryptoError::Decryption));
        assert_eq!(c.decrypt(&blob, b""), Err(CryptoError::Decryption));
    }

    #[test]
    fn tampering_fails() {
        let c = cipher(1, &[]);
        let blob = c.encrypt(b"secret", b"t");
        for i in KEY_ID_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(c.decrypt(&bad, b"t"), Err(CryptoError::Decryption), "byte {i}");
        }
        let mut bad_id = blob.clone();
        bad_id[0] ^= 0x01;
        assert_eq!(c.decrypt(&bad_id, b"t"), Err(CryptoError::UnknownKey));
        let truncated = &blob[..blob.len() - 1];
        assert_eq!(c.decrypt(truncated, b"t"), Err(CryptoError::Decryption));
        assert_eq!(c.decrypt(&blob[..HEADER_LEN + TAG_LEN - 1], b"t"), Err(CryptoError::Malformed));
        assert_eq!(c.decrypt(&[], b"t"), Err(CryptoError::Malformed));
        let mut extended = blob.clone();
        extended.push(0);
        assert_eq!(c.decrypt(&extended, b"t"), Err(CryptoError::Decryption));
    }

    #[test]
    fn rotation_without_downtime() {
        let old = cipher(1, &[]);
        let blob = old.encrypt(b"secret", b"t");

        let rotated = cipher(2, &[1]);
        assert_eq!(rotated.decrypt(&blob, b"t").unwrap(), b"secret");
        assert!(rotated.needs_reencryption(&blob));
        let fresh = rotated.encrypt(b"secret", b"t");
        assert!(!rotated.needs_reencryption(&fresh));
        // The old deployment cannot read the new blob; it still reads its own.
        assert_eq!(old.decrypt(&fresh, b"t"), Err(CryptoError::UnknownKey));

        // After the old key is dropped, old blobs are unknown.
        let done = cipher(2, &[]);
        assert_eq!(done.decrypt(&blob, b"t"), Err(CryptoError::UnknownKey));
        assert_eq!(done.decrypt(&fresh, b"t").unwrap(), b"secret");

        // Several previous keys.
        let many = cipher(3, &[2, 1]);
        assert_eq!(many.decrypt(&blob, b"t").unwrap(), b"secret");
        assert_eq!(many.decrypt(&fresh, b"t").unwrap(), b"secret");
        assert!(many.needs_reencryption(&blob) && many.needs_reencryption(&fresh));
        assert!(many.needs_reencryption(b"short"));
    }

    #[test]
    fn unknown_key_id_fails() {
        let blob = cipher(1, &[]).encrypt(b"secret", b"t");
        assert_eq!(cipher(9, &[8]).decrypt(&blob, b"t"), Err(CryptoError::UnknownKey));
    }

    #[test]
    fn previous_key_list_parsing() {
        let blob = cipher(1, &[]).encrypt(b"x", b"t");
        let list = format!(" {} , ,{},\n", key(2), key(1));
        let c = IdentityCipher::from_config(&format!("{}\n", key(3)), &list).unwrap();
        assert_eq!(c.decrypt(&blob, b"t").unwrap(), b"x");
        // Repeating the current key (or a previous one) is harmless.
        let c = IdentityCipher::from_config(&key(3), &format!("{},{},{}", key(3), key(1), key(1))).unwrap();
        assert_eq!(c.previous.len(), 1);
        assert!(IdentityCipher::from_config(&key(3), "   ").unwrap().previous.is_empty());
    }

    #[test]
    fn bad_keys_rejected() {
        let cases: Vec<(String, KeyProblem)> = vec![
            (String::new(), KeyProblem::WrongLength),
            ("not base64!!".into(), KeyProblem::NotBase64),
            (b64(&[7u8; 31]), KeyProblem::WrongLength),
            (b64(&[7u8; 33]), KeyProblem::WrongLength),
            (b64(&[7u8; 64]), KeyProblem::WrongLength),
            (b64(&[7u8; 16]), KeyProblem::WrongLength),
            (b64(&[0u8; 32]), KeyProblem::AllZero),
            (key(7).trim_end_matches('=').to_owned(), KeyProblem::NotBase64),
            (base64::engine::general_purpose::URL_SAFE.encode([0xfbu8; 32]), KeyProblem::NotBase64),
        ];
        for (bad, problem) in &cases {
            let problem = *problem;
            assert_eq!(
                IdentityCipher::from_config(bad, "").unwrap_err(),
                CryptoError::InvalidKey { slot: KeySlot::Current, problem },
                "{bad:?}"
            );
            if !bad.is_empty() {
                // (An empty entry in the previous-key list is skipped, not an error.)
                let list = format!("{},{bad}", key(2));
                assert_eq!(
                    IdentityCipher::from_config(&key(1), &list).unwrap_err(),
                    CryptoError::InvalidKey { slot: KeySlot::Previous(2), problem },
                );
            }
            assert_eq!(
                BlindIndex::from_config(bad).unwrap_err(),
                CryptoError::InvalidKey { slot: KeySlot::BlindIndex, problem },
            );
        }
    }

    #[test]
    fn errors_and_debug_do_not_leak() {
        let secret_key = [0x5au8; 32];
        let secret_b64 = b64(&secret_key);
        let c = IdentityCipher::from_config(&secret_b64, &key(2)).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(&secret_b64) && !debug.contains("5a5a"), "{debug}");
        assert!(debug.contains(&hex(&c.current_key_id())));
        let bi = BlindIndex::from_config(&secret_b64).unwrap();
        assert_eq!(format!("{bi:?}"), "BlindIndex(<redacted>)");

        let id = some_id(0);
        let blob = c.encrypt_identity(&id, b"t");
        let errors = [
            c.decrypt(&blob, b"u").unwrap_err(),
            c.decrypt(&blob[..3], b"t").unwrap_err(),
            cipher(1, &[]).decrypt(&blob, b"t").unwrap_err(),
            IdentityCipher::from_config(&b64(&[0x5a; 31]), "").unwrap_err(),
            IdentityCipher::from_config(&b64(&[0; 32]), "").unwrap_err(),
            CryptoError::KeyIdCollision,
            CryptoError::NotAnIdentityNumber,
        ];
        for e in errors {
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(id.expose()), "{text}");
                assert!(!text.contains("5a") && !text.contains("Wl"), "{text}");
            }
        }
    }

    #[test]
    fn identity_round_trip() {
        let c = cipher(1, &[]);
        let id = some_id(3);
        let blob = c.encrypt_identity(&id, b"tenant-a");
        assert_eq!(c.decrypt_identity(&blob, b"tenant-a").unwrap(), id);
        assert_eq!(c.decrypt_identity(&blob, b"tenant-b"), Err(CryptoError::Decryption));
        let junk = c.encrypt(b"not an id", b"t");
        assert_eq!(c.decrypt_identity(&junk, b"t"), Err(CryptoError::NotAnIdentityNumber));
    }

    #[test]
    fn blind_index_is_deterministic_per_tenant_and_key() {
        let bi = BlindIndex::from_config(&key(1)).unwrap();
        let (a, b) = (some_id(0), some_id(100));
        assert_ne!(a, b);
        let ia = bi.index("tenant-a", &a);
        assert_eq!(ia.len(), 32);
        assert_eq!(ia, bi.index("tenant-a", &a.clone()));
        assert_eq!(ia, BlindIndex::from_config(&key(1)).unwrap().index("tenant-a", &a));
        assert_ne!(ia, bi.index("tenant-b", &a));
        assert_ne!(ia, bi.index("tenant-a", &b));
        assert_ne!(ia, BlindIndex::from_config(&key(2)).unwrap().index("tenant-a", &a));

        // Matches HMAC-SHA256(key, tenant || 0x00 || digits) computed independently.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1u8; 32]).unwrap();
        mac.update(format!("tenant-a\0{}", a.expose()).as_bytes());
        assert_eq!(ia, mac.finalize().into_bytes().to_vec());
        assert!(!ia.windows(11).any(|w| w == a.expose().as_bytes()));
    }
}
