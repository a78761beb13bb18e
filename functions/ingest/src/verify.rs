//! Standard Webhooks verification.
//!
//! `v1` (HMAC-SHA256 with a shared secret) is verified by the
//! `standardwebhooks` crate, which also enforces the 5-minute timestamp
//! tolerance and rejects empty signatures. It accepts an empty secret, so
//! [`SourceKey::secret`] refuses one before the crate sees it.
//! `v1a` (Ed25519, for sources that register a public key) is not in that
//! crate; it is verified with `ed25519-compact`, over the same signed content
//! (`{id}.{timestamp}.{body}`) and with the same tolerance.

use base64::Engine;
use http::HeaderMap;
use standardwebhooks::{Webhook, WebhookError, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};
use tavle_core::web::ClientId;

pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// One verification key of a source.
pub enum SourceKey {
    Secret(Webhook),
    PublicKey(ed25519_compact::PublicKey),
}

impl SourceKey {
    /// A shared secret of at least 16 bytes (ours are 32).
    pub fn secret(raw: Vec<u8>) -> Option<SourceKey> {
        (raw.len() >= 16).then(|| SourceKey::Secret(Webhook::from_bytes(raw).expect("from_bytes is infallible")))
    }

    pub fn public_key(raw: &[u8]) -> Option<SourceKey> {
        ed25519_compact::PublicKey::from_slice(raw).ok().map(SourceKey::PublicKey)
    }
}

/// Why a delivery failed verification; shown to the sender (it is their
/// own request), never including key material.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    MissingHeader(&'static str),
    /// A `webhook-id` outside [`ClientId`]: it would be stored as the
    /// idempotency key and may be an identity number sent by mistake.
    BadWebhookId,
    BadTimestamp,
    Stale,
    Future,
    BadSignature,
}

impl Rejection {
    pub fn message(&self) -> String {
        match self {
            Rejection::MissingHeader(h) => format!("missing or invalid header {h}"),
            Rejection::BadWebhookId => format!("webhook-id must be {}", ClientId::RULE),
            Rejection::BadTimestamp => "webhook-timestamp is not a Unix timestamp".into(),
            Rejection::Stale => "webhook-timestamp is more than 5 minutes old".into(),
            Rejection::Future => "webhook-timestamp is more than 5 minutes in the future".into(),
            Rejection::BadSignature => "no valid signature for this source".into(),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).ok_or(Rejection::MissingHeader(name))
}

/// The webhook id of a delivery (for idempotency), once verified. The id is
/// checked first, before any key: whatever the signature, an id outside
/// [`ClientId`] is never stored or logged.
pub fn verify(keys: &[SourceKey], body: &[u8], headers: &HeaderMap, now: i64) -> Result<ClientId, Rejection> {
    let id = ClientId::parse(header(headers, HEADER_WEBHOOK_ID)?).ok_or(Rejection::BadWebhookId)?;
    let signature = header(headers, HEADER_WEBHOOK_SIGNATURE)?;
    let ts: i64 = header(headers, HEADER_WEBHOOK_TIMESTAMP)?.parse().map_err(|_| Rejection::BadTimestamp)?;
    // Saturating: the sender picks `ts`, and `now - i64::MIN` overflows. The
    // crate's own check subtracts unchecked, so this one must come first.
    if now.saturating_sub(ts) > TOLERANCE_SECONDS {
        return Err(Rejection::Stale);
    }
    if ts.saturating_sub(now) > TOLERANCE_SECONDS {
        return Err(Rejection::Future);
    }
    for key in keys {
        let ok = match key {
            SourceKey::Secret(webhook) => match webhook.verify(body, headers) {
                Ok(()) => true,
                Err(WebhookError::TimestampTooOldError) => return Err(Rejection::Stale),
                Err(WebhookError::FutureTimestampError) => return Err(Rejection::Future),
                Err(_) => false,
            },
            SourceKey::PublicKey(pk) => verify_v1a(pk, id.as_str(), ts, body, signature),
        };
        if ok {
            return Ok(id);
        }
    }
    Err(Rejection::BadSignature)
}

fn verify_v1a(pk: &ed25519_compact::PublicKey, id: &str, ts: i64, body: &[u8], signatures: &str) -> bool {
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    signatures.split(' ').filter_map(|s| s.split_once(',')).filter(|(v, _)| *v == "v1a").any(|(_, sig)| {
        base64::engine::general_purpose::STANDARD
            .decode(sig)
            .ok()
            .and_then(|raw| ed25519_compact::Signature::from_slice(&raw).ok())
            .is_some_and(|sig| pk.verify(&signed, &sig).is_ok())
    })
}

/// A fresh shared secret in Standard Webhooks form (`whsec_` + base64).
pub fn new_secret() -> (Vec<u8>, String) {
    let mut raw = vec![0u8; 32];
    getrandom::getrandom(&mut raw).expect("the platform RNG is available");
    let text = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&raw));
    (raw, text)
}

/// A registered public key: `whpk_` + base64 of 32 bytes (or bare base64).
pub fn parse_public_key(text: &str) -> Option<Vec<u8>> {
    let b64 = text.strip_prefix("whpk_").unwrap_or(text);
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    ed25519_compact::PublicKey::from_slice(&raw).ok()?;
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn client_id(id: &str) -> ClientId {
        ClientId::parse(id).unwrap()
    }

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(&ts.to_string()).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn v1_signatures_verify_and_tampering_fails() {
        let (raw, _) = new_secret();
        let wh = Webhook::from_bytes(raw.clone()).unwrap();
        let ts = now();
        let sig = wh.sign("msg_1", ts, b"{\"a\":1}").unwrap();
        let keys = [SourceKey::secret(raw).unwrap()];
        assert_eq!(verify(&keys, b"{\"a\":1}", &headers("msg_1", ts, &sig), ts), Ok(client_id("msg_1")));
        assert_eq!(verify(&keys, b"{\"a\":2}", &headers("msg_1", ts, &sig), ts), Err(Rejection::BadSignature));
        assert_eq!(verify(&keys, b"{\"a\":1}", &headers("msg_2", ts, &sig), ts), Err(Rejection::BadSignature));
        assert_eq!(verify(&keys, b"{\"a\":1}", &headers("msg_1", ts - 301, &sig), ts), Err(Rejection::Stale));
        assert_eq!(verify(&keys, b"{\"a\":1}", &headers("msg_1", ts + 301, &sig), ts), Err(Rejection::Future));
    }

    #[test]
    fn webhook_ids_outside_the_client_id_rule_are_refused_even_when_signed() {
        let (raw, _) = new_secret();
        let wh = Webhook::from_bytes(raw.clone()).unwrap();
        let keys = [SourceKey::secret(raw).unwrap()];
        let ts = now();
        let signed = |id: &str| verify(&keys, b"{}", &headers(id, ts, &wh.sign(id, ts, b"{}").unwrap()), ts);
        let long = "m".repeat(65);
        for id in ["01017012345", "msg-01017012345", "msg 1", "msg:1", long.as_str()] {
            assert_eq!(signed(id), Err(Rejection::BadWebhookId), "{id}");
        }
        assert!(Rejection::BadWebhookId.message().contains("11 or more digits"));
        let uuid = "01234567-0123-4012-8123-012345678901";
        for id in ["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "1234567890", uuid, &"m".repeat(64)] {
            assert_eq!(signed(id), Ok(client_id(id)), "{id}");
        }
        // Checked before any key: the answer is the same whatever the signature.
        assert_eq!(verify(&keys, b"{}", &headers("01017012345", ts, "v1,x"), ts), Err(Rejection::BadWebhookId));
    }

    #[test]
    fn extreme_timestamps_are_rejected_without_overflow() {
        let (raw, _) = new_secret();
        let keys = [SourceKey::secret(raw).unwrap()];
        let ts = now();
        let mut h = headers("m", ts, "v1,x");
        for (timestamp, why) in [
            ("-9223372036854775808", Rejection::Stale),
            ("9223372036854775807", Rejection::Future),
            ("-9223372036854775809", Rejection::BadTimestamp),
        ] {
            h.insert("webhook-timestamp", HeaderValue::from_static(timestamp));
            assert_eq!(verify(&keys, b"{}", &h, ts), Err(why), "{timestamp}");
        }
        // Nor can an extreme clock overflow.
        assert_eq!(verify(&keys, b"{}", &headers("m", i64::MAX, "v1,x"), i64::MIN), Err(Rejection::Future));
        assert_eq!(verify(&keys, b"{}", &headers("m", i64::MIN, "v1,x"), i64::MAX), Err(Rejection::Stale));
    }

    #[test]
    fn empty_signatures_and_empty_secrets_are_rejected() {
        let (raw, _) = new_secret();
        let keys = [SourceKey::secret(raw).unwrap()];
        let ts = now();
        assert_eq!(verify(&keys, b"{}", &headers("m", ts, "v1,"), ts), Err(Rejection::BadSignature));
        let mut h = headers("m", ts, "x");
        h.insert("webhook-signature", HeaderValue::from_static(""));
        assert_eq!(verify(&keys, b"{}", &h, ts), Err(Rejection::MissingHeader("webhook-signature")));
        // The crate itself accepts an empty key; ours refuses it.
        assert!(SourceKey::secret(Vec::new()).is_none());
        let empty = Webhook::from_bytes(Vec::new()).unwrap();
        let forged = empty.sign("m", ts, b"{}").unwrap();
        assert_eq!(verify(&keys, b"{}", &headers("m", ts, &forged), ts), Err(Rejection::BadSignature));
    }

    #[test]
    fn v1a_ed25519_signatures_verify() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
        let ts = now();
        let sig = kp.sk.sign(format!("m1.{ts}.{{}}").as_bytes(), None);
        let sig = format!("v1a,{}", base64::engine::general_purpose::STANDARD.encode(sig.as_ref()));
        let keys = [SourceKey::public_key(kp.pk.as_ref()).unwrap()];
        assert_eq!(verify(&keys, b"{}", &headers("m1", ts, &sig), ts), Ok(client_id("m1")));
        assert_eq!(verify(&keys, b"{ }", &headers("m1", ts, &sig), ts), Err(Rejection::BadSignature));
        let v1_label = sig.replacen("v1a,", "v1,", 1);
        assert_eq!(verify(&keys, b"{}", &headers("m1", ts, &v1_label), ts), Err(Rejection::BadSignature));
    }
}
