//! Secrets a tenant gives Tally (a payment provider's webhook signing secret
//! and API token) sealed at rest: AES-256-GCM under a key derived from the
//! server key that also derives webhook secrets (ADR 0008, ADR 0011). What
//! Tally generates itself is derived, never stored; what a tenant hands over
//! cannot be derived, so it is stored sealed. Neither is logged or shown again.

use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Sha256;

/// The format tag of a sealed value.
const VERSION: &str = "v1";

fn key(server_key: &[u8]) -> LessSafeKey {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(server_key).expect("HMAC takes keys of any length");
    mac.update(b"tally.sealed.secret.v1\0");
    let bytes = mac.finalize().into_bytes();
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key"))
}

/// Seals `plaintext`, bound to `context` (e.g. `tenant\0provider\0field`, so a
/// sealed value copied to another row does not open): `v1.<hex nonce ‖
/// ciphertext ‖ tag>`.
pub fn seal(server_key: &[u8], context: &str, plaintext: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut in_out = plaintext.as_bytes().to_vec();
    key(server_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut in_out,
        )
        .expect("sealing a bounded secret");
    let mut out = nonce.to_vec();
    out.extend(in_out);
    format!("{VERSION}.{}", hex::encode(out))
}

/// Opens a value [`seal`] made with the same key and context; `None` when it
/// was made otherwise or altered.
pub fn open(server_key: &[u8], context: &str, sealed: &str) -> Option<String> {
    let bytes = hex::decode(sealed.strip_prefix("v1.")?).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = rest.to_vec();
    let plain = key(server_key)
        .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_context() {
        let k = b"0123456789abcdef0123456789abcdef";
        let sealed = seal(k, "acme\0stripe", "whsec_abc");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            open(k, "acme\0stripe", &sealed).as_deref(),
            Some("whsec_abc")
        );
        assert_eq!(open(k, "other\0stripe", &sealed), None);
        assert_eq!(
            open(
                b"another key, also thirty-two byte",
                "acme\0stripe",
                &sealed
            ),
            None
        );
        let mut altered = sealed.clone();
        altered.pop();
        altered.push('0');
        assert!(open(k, "acme\0stripe", &altered).is_none() || altered == sealed);
        // Two seals of one secret differ (a fresh nonce each).
        assert_ne!(seal(k, "c", "s"), seal(k, "c", "s"));
    }
}
