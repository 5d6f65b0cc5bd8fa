//! Polar, through Standard Webhooks: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 hmac_sha256(key, "<id>.<timestamp>.<raw
//! body>")>` (space-separated when there are several), the key being the
//! base64 after `whsec_` of the secret; `order.paid` with `total_amount` in
//! minor units, `order.refunded` with the order's `refunded_amount`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    amount_minor, currency_at, str_at, Inbound, InboundError, ProviderAdapter, ProviderSettings,
    RefundAmount, Translated, TOLERANCE_SECS,
};

pub struct Polar;

/// The signing key of a Standard Webhooks secret (`whsec_<base64>`).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
        .filter(|k| !k.is_empty())
}

/// The `webhook-signature` value for a message (what a sender computes).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret_key(secret)?).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[async_trait::async_trait]
impl ProviderAdapter for Polar {
    fn name(&self) -> &'static str {
        "polar"
    }

    fn signature_header(&self, inbound: &Inbound) -> String {
        format!(
            "webhook-id: {}\nwebhook-timestamp: {}\nwebhook-signature: {}",
            inbound.header("webhook-id").unwrap_or_default(),
            inbound.header("webhook-timestamp").unwrap_or_default(),
            inbound.header("webhook-signature").unwrap_or_default()
        )
    }

    fn verify(&self, secret: &str, inbound: &Inbound, now_unix: i64) -> bool {
        let (Some(id), Some(ts), Some(sigs)) = (
            inbound.header("webhook-id"),
            inbound.header("webhook-timestamp"),
            inbound.header("webhook-signature"),
        ) else {
            return false;
        };
        let Ok(timestamp) = ts.trim().parse::<i64>() else {
            return false;
        };
        if now_unix.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
            return false;
        }
        let Some(key) = secret_key(secret) else {
            return false;
        };
        sigs.split(' ').any(|candidate| {
            let Some(("v1", sig)) = candidate.split_once(',') else {
                return false;
            };
            let Ok(sig) = STANDARD.decode(sig) else {
                return false;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(inbound.body);
            mac.verify_slice(&sig).is_ok()
        })
    }

    async fn translate(
        &self,
        inbound: &Inbound,
        _settings: &ProviderSettings,
        _client: &reqwest::Client,
    ) -> Result<Translated, InboundError> {
        let v = inbound.json()?;
        // Standard Webhooks: the message id is the event's id.
        let event_id = inbound
            .header("webhook-id")
            .map(str::to_string)
            .ok_or(InboundError::SignatureInvalid)?;
        let event_type = str_at(&v, "/type", "type")?;
        match event_type.as_str() {
            "order.paid" | "order.refunded" => {
                let currency = currency_at(&v, "/data/currency", "data.currency")?;
                let payment_id = str_at(&v, "/data/id", "data.id")?;
                if event_type == "order.paid" {
                    Ok(Translated::Payment {
                        event_id,
                        event_type,
                        payment_id,
                        invoice_id: opt_str(&v, "/data/metadata/tally_invoice_id"),
                        customer_id: opt_str(&v, "/data/metadata/tally_customer_id")
                            .or_else(|| opt_str(&v, "/data/customer/external_id"))
                            .or_else(|| {
                                opt_str(&v, "/data/customer_id").map(|c| format!("polar:{c}"))
                            }),
                        amount: amount_minor(
                            &v,
                            "/data/total_amount",
                            "data.total_amount",
                            currency,
                        )?,
                        currency,
                    })
                } else {
                    Ok(Translated::Refund {
                        event_id,
                        event_type,
                        payment_id,
                        currency,
                        amount: RefundAmount::Total(amount_minor(
                            &v,
                            "/data/refunded_amount",
                            "data.refunded_amount",
                            currency,
                        )?),
                    })
                }
            }
            _ => Ok(Translated::Ignored {
                event_id,
                event_type,
            }),
        }
    }
}

fn opt_str(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and svix's docs).
    #[test]
    fn signs_the_standard_webhooks_example() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }
}
