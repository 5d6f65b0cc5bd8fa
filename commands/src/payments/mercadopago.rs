//! Mercado Pago: `x-signature: ts=<unix>,v1=<hex hmac_sha256(secret,
//! "id:<data.id>;request-id:<x-request-id>;ts:<ts>;")>` with `x-request-id`;
//! the notification only names a payment, which is read from
//! `GET <api_base_url>/v1/payments/<id>` with the tenant's access token (an
//! outbound call under the SSRF rule of webhooks). `status: "approved"` is a
//! payment of the decimal `transaction_amount`; `refunded` (or a
//! `transaction_amount_refunded`) a refund.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    currency_at, decimal_at, str_at, Inbound, InboundError, ProviderAdapter, ProviderSettings,
    RefundAmount, Translated, TOLERANCE_SECS,
};

pub struct MercadoPago;

/// The signed manifest.
pub fn manifest(data_id: &str, request_id: &str, ts: &str) -> String {
    format!("id:{data_id};request-id:{request_id};ts:{ts};")
}

/// The `x-signature` value for a notification (what a sender computes).
pub fn sign(secret: &str, data_id: &str, request_id: &str, ts: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(manifest(data_id, request_id, &ts.to_string()).as_bytes());
    format!("ts={ts},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The notification's `data.id` (a number or a string).
fn data_id(v: &Value) -> Option<String> {
    match v.pointer("/data/id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl ProviderAdapter for MercadoPago {
    fn name(&self) -> &'static str {
        "mercadopago"
    }

    fn signature_header(&self, inbound: &Inbound) -> String {
        format!(
            "x-signature: {}\nx-request-id: {}",
            inbound.header("x-signature").unwrap_or_default(),
            inbound.header("x-request-id").unwrap_or_default()
        )
    }

    fn verify(&self, secret: &str, inbound: &Inbound, now_unix: i64) -> bool {
        let (Some(header), Some(request_id)) = (
            inbound.header("x-signature"),
            inbound.header("x-request-id"),
        ) else {
            return false;
        };
        let (mut ts, mut sig) = (None, None);
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("ts", t)) => ts = Some(t.trim().to_string()),
                Some(("v1", s)) => sig = hex::decode(s.trim()).ok(),
                _ => {}
            }
        }
        let (Some(ts), Some(sig)) = (ts, sig) else {
            return false;
        };
        let Ok(mut unix) = ts.parse::<i64>() else {
            return false;
        };
        // Some notifications carry milliseconds.
        if unix > 100_000_000_000 {
            unix /= 1000;
        }
        if now_unix.abs_diff(unix) > TOLERANCE_SECS.unsigned_abs() {
            return false;
        }
        let Some(id) = serde_json::from_slice::<Value>(inbound.body)
            .ok()
            .as_ref()
            .and_then(data_id)
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(manifest(&id, request_id, &ts).as_bytes());
        mac.verify_slice(&sig).is_ok()
    }

    async fn translate(
        &self,
        inbound: &Inbound,
        settings: &ProviderSettings,
        client: &reqwest::Client,
    ) -> Result<Translated, InboundError> {
        let v = inbound.json()?;
        let payment = data_id(&v).ok_or_else(|| InboundError::invalid("data.id", "required"))?;
        let event_id = match v.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!(
                "{payment}:{}",
                v.get("action")
                    .and_then(Value::as_str)
                    .unwrap_or("notification")
            ),
        };
        let event_type = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("payment")
            .to_string();
        if event_type != "payment" {
            return Ok(Translated::Ignored {
                event_id,
                event_type,
            });
        }
        if payment.len() > 64
            || !payment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InboundError::invalid("data.id", "not a payment id"));
        }
        let token = settings
            .access_token
            .as_deref()
            .ok_or_else(|| InboundError::Upstream("no access_token is configured".into()))?;
        let url = format!(
            "{}/v1/payments/{payment}",
            settings.api_base_url.trim_end_matches('/')
        );
        let answer = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| InboundError::Upstream(format!("reading the payment: {e}")))?;
        if !answer.status().is_success() {
            return Err(InboundError::Upstream(format!(
                "reading the payment: HTTP {}",
                answer.status().as_u16()
            )));
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| InboundError::Upstream(format!("reading the payment: {e}")))?;
        let p: Value = serde_json::from_slice(&bytes)
            .map_err(|_| InboundError::Upstream("the payment is not JSON".into()))?;
        let status = str_at(&p, "/status", "payment.status")?;
        let currency = currency_at(&p, "/currency_id", "payment.currency_id")?;
        let event_type = format!("payment.{status}");
        let refunded = match p.get("transaction_amount_refunded") {
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f > 0.0) => Some(decimal_at(
                &p,
                "/transaction_amount_refunded",
                "payment.transaction_amount_refunded",
                currency,
            )?),
            _ => None,
        };
        match (status.as_str(), refunded) {
            ("refunded" | "partially_refunded", _) | ("approved", Some(_)) => {
                let total = match refunded {
                    Some(r) => r,
                    None => decimal_at(
                        &p,
                        "/transaction_amount",
                        "payment.transaction_amount",
                        currency,
                    )?,
                };
                Ok(Translated::Refund {
                    event_id,
                    event_type,
                    payment_id: payment,
                    currency,
                    amount: RefundAmount::Total(total),
                })
            }
            ("approved", None) => Ok(Translated::Payment {
                event_id,
                event_type,
                payment_id: payment,
                invoice_id: p
                    .get("external_reference")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                customer_id: p
                    .pointer("/metadata/tally_customer_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| match p.pointer("/payer/id") {
                        Some(Value::String(s)) if !s.is_empty() => Some(format!("mercadopago:{s}")),
                        Some(Value::Number(n)) => Some(format!("mercadopago:{n}")),
                        _ => None,
                    }),
                amount: decimal_at(
                    &p,
                    "/transaction_amount",
                    "payment.transaction_amount",
                    currency,
                )?,
                currency,
            }),
            _ => Ok(Translated::Ignored {
                event_id,
                event_type,
            }),
        }
    }
}
