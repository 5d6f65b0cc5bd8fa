//! Signatures: the `Tally-Signature` header, its verification, and the
//! per-endpoint secrets derived from the server key.

use super::*;

// ---- signatures ----

pub(super) fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Tally-Signature` value: `t=<unix>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`.
/// The key is the secret exactly as shown at creation (`whsec_…`).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Tally-Signature header is not t=<unix>,v1=<hex>")]
    Malformed,
    #[error("no v1 signature matches the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
}

/// Verifies a `Tally-Signature` header as a receiver should: the HMAC of
/// `"<t>.<body>"` (the raw body bytes, before any JSON parsing) under the
/// endpoint's secret matches one `v1` (compared in constant time), and `t`
/// is within `tolerance_secs` of `now_unix` (replay protection). Returns `t`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => {
                candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if !candidates
        .iter()
        .any(|c| mac(secret, t, body).verify_slice(c).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if now_unix.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Expired);
    }
    Ok(t)
}

/// An endpoint's secret: derived from the server key, the endpoint id and
/// its salt, so that none is stored.
pub(super) fn derive_secret(key: &[u8], endpoint_id: &str, salt: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"tally.webhook.secret.v1\0");
    mac.update(endpoint_id.as_bytes());
    mac.update(b"\0");
    mac.update(salt.as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// The server keys secrets derive from: the configured one, and the
/// database-kept one (used when none is configured, and still needed by
/// endpoints created before one was).
pub(super) struct SigningKeys {
    pub(super) current: String,
    pub(super) keys: HashMap<String, Vec<u8>>,
}

pub(super) const DB_KEY_ID: &str = "db";

impl SigningKeys {
    pub(super) async fn load(
        db: &Db,
        configured: Option<&SecretKey>,
    ) -> Result<SigningKeys, DbError> {
        let mut keys = HashMap::new();
        let current = match configured {
            Some(k) => {
                let id = format!("env:{}", &hex::encode(Sha256::digest(&k.0))[..16]);
                keys.insert(id.clone(), k.0.clone());
                id
            }
            None => {
                let mut bytes = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut bytes);
                let inserted = sqlx::query(
                    "INSERT INTO webhook_signing_keys (id, secret, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(DB_KEY_ID)
                .bind(hex::encode(bytes))
                .bind(time::to_text(Utc::now()))
                .execute(&db.any)
                .await?;
                if inserted.rows_affected() == 1 {
                    tracing::warn!(
                        "TALLY_SECRET_KEY is not set: webhook secrets derive from a key kept in the database"
                    );
                }
                DB_KEY_ID.to_string()
            }
        };
        let stored: Option<String> =
            sqlx::query_scalar("SELECT secret FROM webhook_signing_keys WHERE id = $1")
                .bind(DB_KEY_ID)
                .fetch_optional(&db.any)
                .await?;
        if let Some(k) = stored.and_then(|s| hex::decode(s).ok()) {
            keys.insert(DB_KEY_ID.to_string(), k);
        }
        Ok(SigningKeys { current, keys })
    }

    pub(super) fn secret(&self, key_id: &str, endpoint_id: &str, salt: &str) -> Option<String> {
        self.keys
            .get(key_id)
            .map(|k| derive_secret(k, endpoint_id, salt))
    }
}
