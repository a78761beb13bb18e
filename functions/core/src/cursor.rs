//! Page cursors: opaque, and bound to what issued them.
//!
//! A cursor is the position of the last item of a page (ids, a sort key such as a username),
//! as JSON, encrypted with AES-256-GCM ([`IdentityCipher`]'s blob: key id, a fresh random
//! 96-bit nonce, ciphertext, tag) and written as base64url without padding. The associated data
//! is a canonical binding of what issued it ([`Cursors`]): the tenant, the caller's user id, the
//! list (a stable name per route, such as `pupils.list`), and every filter that shapes the list
//! (`school_id`, the terms of a name search, …; the filter values themselves are never inside
//! the cursor). So a client can neither read a cursor, nor forge one (say, naming a pupil
//! outside its scope to learn where that child's name sorts among its own pupils), nor use one
//! in another tenant, as another user, on another list or with other filters: every cursor that
//! does not open under the binding of the request (forged, tampered, truncated, issued to
//! someone or for something else, of an older format, or made under a key since rotated) is
//! answered exactly as a malformed one (`web::malformed_cursor`).
//!
//! Each component derives its cursor key from a secret it already holds
//! ([`CursorKey::from_var`]), so no secret has to be provisioned for cursors. Rotating that
//! secret rotates the cursor key: cursors handed out before are then refused like malformed
//! ones, and a client starts again from the first page.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hkdf::Hkdf;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::auth::Principal;
use crate::crypto::{IdentityCipher, BLOB_OVERHEAD};
use crate::problem::Problem;
use crate::vars::Variables;

/// Longest cursor accepted (characters of base64url); every cursor handed out is shorter.
pub const MAX_CURSOR_LEN: usize = 512;

/// The HKDF `info` of the cursor key: used for nothing else, in any component.
const KEY_INFO: &[u8] = b"tavle cursor key v1";

/// First field of every binding (the associated data): the format of the cursor.
const BINDING_LABEL: &[u8] = b"tavle cursor binding v1";

/// A component's key for its cursors.
#[derive(Clone)]
pub struct CursorKey(IdentityCipher);

impl CursorKey {
    /// The cursor key derived from `secret` with HKDF-SHA256 (RFC 5869; no salt, info
    /// `tavle cursor key v1`).
    ///
    /// Why the derived key is independent of the secret's own use: HKDF with an info label
    /// that nothing else uses is a pseudorandom function of the secret, so the cursor key tells
    /// nothing about the secret, and what the secret's own use makes public (token signatures,
    /// blind indexes, ciphertexts of webhook secrets) tells nothing about the cursor key: none of
    /// those computes HKDF, let alone with this label. The secret stays what it was, and a
    /// leaked cursor key would not leak it.
    #[must_use]
    pub fn derive(secret: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, secret)
            .expand(KEY_INFO, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        CursorKey(IdentityCipher::from_key(&key))
    }

    /// The cursor key derived ([`CursorKey::derive`]) from the configured secret `name`: standard
    /// base64 of at least 32 bytes (the component's own key, checked as such where it is used
    /// for its main purpose). Missing or unusable: an operator error, a 500, logged by name only.
    ///
    /// # Errors
    /// [`Problem::internal`] if the variable is missing, not base64, shorter than 32 bytes or all
    /// zero bytes.
    pub fn from_var(vars: &impl Variables, name: &str) -> Result<Self, Problem> {
        let value = Zeroizing::new(vars.require(name)?);
        let secret = Zeroizing::new(STANDARD.decode(value.trim()).unwrap_or_default());
        if secret.len() < 32 || secret.iter().all(|&b| b == 0) {
            eprintln!("error: configuration variable `{name}` is not base64 of a key of at least 32 bytes");
            return Err(Problem::internal());
        }
        Ok(Self::derive(&secret))
    }

    /// The cursors of the list `list` (a stable name, e.g. `pupils.list`) as `who` reads it; add
    /// the list's filters with [`Cursors::filter`].
    #[must_use]
    pub fn bind(self, list: &str, who: &Principal) -> Cursors {
        self.bind_to(list, &who.tenant_id, &who.user_id)
    }

    /// As [`CursorKey::bind`], with the tenant and the user given by id.
    #[must_use]
    pub fn bind_to(self, list: &str, tenant_id: &str, user_id: &str) -> Cursors {
        let mut binding = Vec::with_capacity(128);
        for part in [BINDING_LABEL, tenant_id.as_bytes(), user_id.as_bytes(), list.as_bytes()] {
            put(&mut binding, part);
        }
        Cursors { key: self, binding }
    }
}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(<redacted>)")
    }
}

/// One length-prefixed field of a binding: the encoding is unambiguous whatever the fields hold.
fn put(binding: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("binding fields are far below 4 GiB");
    binding.extend_from_slice(&len.to_be_bytes());
    binding.extend_from_slice(field);
}

/// The cursors of one list for one caller: seals the positions it hands out and opens only
/// cursors sealed under the same binding (tenant, user, list, filters, in that order).
pub struct Cursors {
    key: CursorKey,
    binding: Vec<u8>,
}

impl Cursors {
    /// Binds a filter that shapes the list: its name and its value, or that it is absent. Each
    /// list adds all of its filters, always in the same order, each in one canonical form (ids
    /// as parsed and reformatted, names in NFC).
    #[must_use]
    pub fn filter(mut self, name: &str, value: Option<&str>) -> Self {
        put(&mut self.binding, name.as_bytes());
        match value {
            None => self.binding.push(0),
            Some(v) => {
                self.binding.push(1);
                put(&mut self.binding, v.as_bytes());
            }
        }
        self
    }

    /// The cursor for `position` (the JSON a page continues after).
    ///
    /// # Panics
    /// If the system random number generator fails (no nonce, no encryption).
    #[must_use]
    pub fn seal(&self, position: &serde_json::Value) -> String {
        let blob = self.key.0.encrypt(position.to_string().as_bytes(), &self.binding);
        let cursor = URL_SAFE_NO_PAD.encode(blob);
        debug_assert!(cursor.len() <= MAX_CURSOR_LEN, "a cursor handed out is accepted back");
        cursor
    }

    /// The position of a cursor sealed under this binding; `None` for every other cursor.
    #[must_use]
    pub fn open<T: DeserializeOwned>(&self, cursor: &SealedCursor) -> Option<T> {
        let plaintext = Zeroizing::new(self.key.0.decrypt(&cursor.0, &self.binding).ok()?);
        serde_json::from_slice(&plaintext).ok()
    }
}

/// A cursor as it arrived, of the form of one (base64url of at least a sealed empty position,
/// at most [`MAX_CURSOR_LEN`] characters), not yet opened: this much is checked with the rest
/// of a request, before the caller is known; [`Cursors::open`] checks the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCursor(Vec<u8>);

impl SealedCursor {
    /// `None` for anything that cannot be a cursor.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() > MAX_CURSOR_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw.as_bytes()).ok()?;
        (bytes.len() > BLOB_OVERHEAD).then_some(SealedCursor(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use serde_json::{json, Value};

    const TENANT: &str = "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11";
    const OTHER_TENANT: &str = "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e12";
    const USER: &str = "5d7c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
    const OTHER_USER: &str = "5d7c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e60";

    fn key(seed: u8) -> CursorKey {
        CursorKey::derive(&[seed; 32])
    }

    fn pupils(key: CursorKey, tenant: &str, user: &str, school: Option<&str>) -> Cursors {
        key.bind_to("pupils.list", tenant, user).filter("school_id", school).filter("group_id", None)
    }

    fn open(cursors: &Cursors, cursor: &str) -> Option<Value> {
        cursors.open(&SealedCursor::parse(cursor)?)
    }

    #[test]
    fn a_cursor_opens_under_its_binding_only() {
        let position = json!({"after": USER});
        let cursor = pupils(key(1), TENANT, USER, Some(TENANT)).seal(&position);
        assert_eq!(open(&pupils(key(1), TENANT, USER, Some(TENANT)), &cursor), Some(position));
        let others = [
            ("another key", pupils(key(2), TENANT, USER, Some(TENANT))),
            ("another tenant", pupils(key(1), OTHER_TENANT, USER, Some(TENANT))),
            ("another user", pupils(key(1), TENANT, OTHER_USER, Some(TENANT))),
            ("another school", pupils(key(1), TENANT, USER, Some(OTHER_TENANT))),
            ("no school", pupils(key(1), TENANT, USER, None)),
            ("an empty school", pupils(key(1), TENANT, USER, Some(""))),
            ("another list", key(1).bind_to("pupils.search_by_name", TENANT, USER).filter("school_id", Some(TENANT))),
            ("a filter less", key(1).bind_to("pupils.list", TENANT, USER).filter("school_id", Some(TENANT))),
            ("a filter more", pupils(key(1), TENANT, USER, Some(TENANT)).filter("year_level", None)),
        ];
        for (what, cursors) in others {
            assert_eq!(open(&cursors, &cursor), None, "{what}");
        }
    }

    #[test]
    fn the_binding_is_unambiguous() {
        let binding = |c: Cursors| c.binding;
        let k = || key(1);
        assert_ne!(binding(k().bind_to("ab", "c", "d")), binding(k().bind_to("a", "bc", "d")));
        assert_ne!(
            binding(k().bind_to("l", "t", "u").filter("ab", Some("c"))),
            binding(k().bind_to("l", "t", "u").filter("a", Some("bc")))
        );
        assert_ne!(
            binding(k().bind_to("l", "t", "u").filter("a", None)),
            binding(k().bind_to("l", "t", "u").filter("a", Some("")))
        );
        assert_ne!(
            binding(k().bind_to("l", "t", "u").filter("a", None).filter("b", None)),
            binding(k().bind_to("l", "t", "u").filter("b", None).filter("a", None))
        );
    }

    #[test]
    fn tampered_truncated_extended_and_foreign_cursors_do_not_open() {
        let cursors = pupils(key(1), TENANT, USER, None);
        let cursor = cursors.seal(&json!({"after": USER}));
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&cursors, &URL_SAFE_NO_PAD.encode(bad)), None, "byte {i}");
        }
        for len in 0..bytes.len() {
            assert_eq!(open(&cursors, &URL_SAFE_NO_PAD.encode(&bytes[..len])), None, "{len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(open(&cursors, &URL_SAFE_NO_PAD.encode(longer)), None);
        // The old format: base64url of the bare JSON.
        let old = URL_SAFE_NO_PAD.encode(json!({"after": USER}).to_string());
        assert!(SealedCursor::parse(&old).is_some(), "long enough to be looked at");
        assert_eq!(open(&cursors, &old), None);
        for junk in ["", "x", "not-a-cursor", "%%%", "A===", &"A".repeat(MAX_CURSOR_LEN + 1)] {
            assert_eq!(SealedCursor::parse(junk), None, "{junk}");
        }
        // Padded or standard base64 of a real cursor is not one either.
        assert_eq!(SealedCursor::parse(&format!("{cursor}=")), None);
    }

    #[test]
    fn cursors_are_opaque_fresh_and_short() {
        let cursors = key(1).bind_to("users.list", TENANT, USER);
        let username = "a".repeat(64);
        let position = json!({"u": username, "id": USER});
        let (a, b) = (cursors.seal(&position), cursors.seal(&position));
        assert_ne!(a, b, "a fresh nonce every time");
        for cursor in [&a, &b] {
            assert!(cursor.len() <= MAX_CURSOR_LEN, "{}", cursor.len());
            assert!(cursor.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{cursor}");
            let bytes = URL_SAFE_NO_PAD.decode(cursor).unwrap();
            assert!(serde_json::from_slice::<Value>(&bytes).is_err());
            for clear in [&b"aaaaaaaa"[..], USER.as_bytes(), b"\"u\"", TENANT.as_bytes()] {
                assert!(!bytes.windows(clear.len()).any(|w| w == clear), "{cursor}");
            }
        }
        assert_eq!(open(&cursors, &a), Some(position));
    }

    #[test]
    fn the_key_is_hkdf_sha256_of_the_secret_with_its_own_label() {
        // RFC 5869 by hand: PRK = HMAC(0^32, IKM); OKM = HMAC(PRK, info || 0x01).
        let secret = [7u8; 32];
        let mut extract = <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap();
        extract.update(&secret);
        let prk = extract.finalize().into_bytes();
        let mut expand = <Hmac<Sha256> as Mac>::new_from_slice(&prk).unwrap();
        expand.update(b"tavle cursor key v1\x01");
        let okm: [u8; 32] = expand.finalize().into_bytes().into();
        let cursor = CursorKey(IdentityCipher::from_key(&okm)).bind_to("l", TENANT, USER).seal(&json!(1));
        assert_eq!(open(&CursorKey::derive(&secret).bind_to("l", TENANT, USER), &cursor), Some(json!(1)));
        // The secret itself is not the key.
        let raw = CursorKey(IdentityCipher::from_key(&secret)).bind_to("l", TENANT, USER);
        assert_eq!(open(&raw, &cursor), None);
    }

    #[test]
    fn the_key_comes_from_a_configured_secret() {
        use std::collections::HashMap;
        let secret = STANDARD.encode([9u8; 32]);
        let vars = |v: &str| HashMap::from([("k".to_owned(), v.to_owned())]);
        let cursor = CursorKey::derive(&[9u8; 32]).bind_to("l", TENANT, USER).seal(&json!(1));
        for ok in [secret.clone(), format!(" {secret}\n"), STANDARD.encode([9u8; 64])] {
            let k = CursorKey::from_var(&vars(&ok), "k").unwrap();
            let opened = open(&k.bind_to("l", TENANT, USER), &cursor);
            assert_eq!(opened.is_some(), ok.trim() == secret, "{ok}");
        }
        for bad in [String::new(), "not base64!".to_owned(), STANDARD.encode([9u8; 31]), STANDARD.encode([0u8; 32])] {
            let p = CursorKey::from_var(&vars(&bad), "k").unwrap_err();
            assert_eq!(p.status, http::StatusCode::INTERNAL_SERVER_ERROR, "{bad}");
        }
        assert!(CursorKey::from_var(&HashMap::new(), "k").is_err());
        assert_eq!(format!("{:?}", CursorKey::derive(&[9u8; 32])), "CursorKey(<redacted>)");
    }
}
