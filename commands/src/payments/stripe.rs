//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex hmac_sha256(secret,
//! "<t>.<raw body>")>` (the scheme of Tally's own `Tally-Signature`, so one
//! verifier serves both), `payment_intent.succeeded` with `amount_received`
//! in minor units, `charge.refunded` naming its `payment_intent`.

use serde_json::Value;

use super::{
    amount_minor, currency_at, str_at, Inbound, InboundError, ProviderAdapter, ProviderSettings,
    RefundAmount, Translated, TOLERANCE_SECS,
};
use crate::webhooks::verify_signature;

pub struct Stripe;

const HEADER: &str = "stripe-signature";

#[async_trait::async_trait]
impl ProviderAdapter for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn signature_header(&self, inbound: &Inbound) -> String {
        inbound.header(HEADER).unwrap_or_default().to_string()
    }

    fn verify(&self, secret: &str, inbound: &Inbound, now_unix: i64) -> bool {
        let Some(header) = inbound.header(HEADER) else {
            return false;
        };
        verify_signature(secret, header, inbound.body, now_unix, TOLERANCE_SECS).is_ok()
    }

    async fn translate(
        &self,
        inbound: &Inbound,
        _settings: &ProviderSettings,
        _client: &reqwest::Client,
    ) -> Result<Translated, InboundError> {
        let v = inbound.json()?;
        let event_id = str_at(&v, "/id", "id")?;
        let event_type = str_at(&v, "/type", "type")?;
        let object = |p: &str| format!("/data/object{p}");
        let field = |p: &str| format!("data.object.{p}");
        match event_type.as_str() {
            "payment_intent.succeeded" => {
                let currency = currency_at(&v, &object("/currency"), &field("currency"))?;
                Ok(Translated::Payment {
                    event_id,
                    event_type,
                    payment_id: str_at(&v, &object("/id"), &field("id"))?,
                    invoice_id: opt_str(&v, &object("/metadata/tally_invoice_id")),
                    customer_id: opt_str(&v, &object("/metadata/tally_customer_id")).or_else(
                        || opt_str(&v, &object("/customer")).map(|c| format!("stripe:{c}")),
                    ),
                    amount: amount_minor(
                        &v,
                        &object("/amount_received"),
                        &field("amount_received"),
                        currency,
                    )?,
                    currency,
                })
            }
            "charge.refunded" => {
                let currency = currency_at(&v, &object("/currency"), &field("currency"))?;
                let payment_id = opt_str(&v, &object("/payment_intent"))
                    .map(Ok)
                    .unwrap_or_else(|| str_at(&v, &object("/id"), &field("id")))?;
                // The newest refund when the charge lists it, else the total.
                let amount = match v.pointer(&object("/refunds/data/0")) {
                    Some(refund) if refund.get("id").is_some_and(Value::is_string) => {
                        RefundAmount::One {
                            refund_id: str_at(refund, "/id", &field("refunds.data[0].id"))?,
                            amount: amount_minor(
                                refund,
                                "/amount",
                                &field("refunds.data[0].amount"),
                                currency,
                            )?,
                        }
                    }
                    _ => RefundAmount::Total(amount_minor(
                        &v,
                        &object("/amount_refunded"),
                        &field("amount_refunded"),
                        currency,
                    )?),
                };
                Ok(Translated::Refund {
                    event_id,
                    event_type,
                    payment_id,
                    currency,
                    amount,
                })
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
