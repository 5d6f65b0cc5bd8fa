//! End-to-end tests of credit notes, customer credit and payments from
//! providers, each on SQLite and on PostgreSQL: credit notes on open and
//! paid invoices (gapless `CN-` numbers, never above the total, refunds),
//! the customer balance's `credited`, `refunded` and `credit`, credit carried
//! to the next renewal invoice, a balanced journal after every movement, and
//! read models equal to a rebuild; and for each provider (Stripe, Polar by
//! Standard Webhooks, Mercado Pago against a local fake of its API), signed
//! the way the provider documents it: a signed success, a forged signature,
//! a stale timestamp, a replay, 10 concurrent deliveries of one event, a
//! refund before its payment, an overpayment and an unknown invoice.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tally_commands::webhooks::{AllowList, WebhookConfig};
use tally_tests::{both_backends, Backend, Resp, TestApp};

both_backends!(
    signed_nonsense_and_bad_configuration_are_4xx_naming_the_field,
    credit_notes_on_open_and_paid_invoices,
    credit_carries_to_the_next_renewal_invoice,
    stripe_payments,
    polar_payments,
    mercadopago_payments,
);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("decimal string: {v:?}")),
    )
    .expect("decimal")
}

/// An issued invoice of `amount` for `customer`.
async fn open_invoice(app: &TestApp, customer: &str, currency: &str, amount: &str) -> Resp {
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": customer, "currency": currency,
                   "lines": [{"description": "Service", "quantity": "1", "unit_price": amount}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.id();
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{id}/issue"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r
}

async fn credit_note(app: &TestApp, invoice: &str, body: Value) -> Resp {
    app.post(
        &app.admin_key,
        &format!("/v1/invoices/{invoice}/credit-notes"),
        body,
    )
    .await
}

/// The customer's balance in `currency`, once the read model has `position`.
async fn balance(app: &TestApp, customer: &str, currency: &str) -> Value {
    app.settle().await;
    let r = app
        .get(&app.admin_key, &format!("/v1/customers/{customer}/balance"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|b| b["currency"] == currency)
        .cloned()
        .unwrap_or_else(|| panic!("no {currency} balance: {:?}", r.body))
}

/// The tenant's journal: debits equal credits.
async fn assert_journal_balanced(app: &TestApp) {
    app.settle().await;
    let (debits, credits) = tally_projections::balances::journal_totals(&app.state().db, "default")
        .await
        .expect("journal totals");
    assert_eq!(debits, credits, "the journal does not balance");
}

async fn credit_notes_on_open_and_paid_invoices(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let inv = open_invoice(&app, "cus_cn", "EUR", "100.00").await.id();

    // On an open invoice a credit note lowers the amount due.
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "30.00", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["amount_due"], "70.00");
    assert_eq!(r.body["amount_credited"], "30.00");
    assert_eq!(r.body["credit_notes"][0]["number"], "CN-000001");
    assert_eq!(r.body["credit_notes"][0]["to_amount_due"], "30.00");
    assert_journal_balanced(&app).await;

    // Paid in full, then a credit note becomes customer credit, a refund is
    // recorded as refunded.
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{inv}/payments"),
            json!({"amount": "70.00", "reference": "wire-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "20.00", "reason": "product_unsatisfactory"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["credit_notes"][1]["number"], "CN-000002");
    assert_eq!(r.body["credit_notes"][1]["to_credit"], "20.00");
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "10.00", "reason": "refund", "refund": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["credit_notes"][2]["number"], "CN-000003");
    assert_eq!(r.body["amount_refunded"], "10.00");
    assert_eq!(r.body["status"], "paid");

    // 60.00 credited of 100.00: 40.01 is one cent too many.
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "40.01", "reason": "duplicate"}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "amount");
    // A refund beyond what was paid and not refunded (70.00 − 10.00).
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "60.01", "reason": "refund", "refund": true}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    // Bad input names the field, never a 500.
    for (body, field) in [
        (json!({"amount": "1.00", "reason": "because"}), "reason"),
        (json!({"amount": "one", "reason": "duplicate"}), "amount"),
        (json!({"amount": "-1.00", "reason": "duplicate"}), "amount"),
        (json!({"amount": "1.001", "reason": "duplicate"}), "amount"),
        (
            json!({"amount": "1.00", "reason": "duplicate", "refund": "yes"}),
            "refund",
        ),
    ] {
        let r = credit_note(&app, &inv, body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:?}", r.body);
    }
    // A draft takes no credit note.
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": "cus_cn", "currency": "EUR"}),
        )
        .await;
    let r = credit_note(
        &app,
        &r.id(),
        json!({"amount": "1.00", "reason": "duplicate"}),
    )
    .await;
    r.assert_problem(409, "invalid_transition");

    let b = balance(&app, "cus_cn", "EUR").await;
    assert_eq!(
        (
            &b["invoiced"],
            &b["paid"],
            &b["credited"],
            &b["refunded"],
            &b["credit"],
            &b["outstanding"]
        ),
        (
            &json!("100.00"),
            &json!("70.00"),
            &json!("60.00"),
            &json!("10.00"),
            &json!("20.00"),
            &json!("0.00")
        ),
        "{b}"
    );
    assert_journal_balanced(&app).await;

    // Concurrent credit notes on many invoices number without gaps.
    let mut invoices = Vec::new();
    for _ in 0..5 {
        invoices.push(open_invoice(&app, "cus_cn2", "EUR", "10.00").await.id());
    }
    let notes = futures::future::join_all(invoices.iter().flat_map(|inv| {
        (0..2).map(|_| credit_note(&app, inv, json!({"amount": "1.00", "reason": "duplicate"})))
    }))
    .await;
    let mut numbers: Vec<String> = Vec::new();
    for r in &notes {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    app.settle().await;
    for inv in &invoices {
        let r = app
            .get(&app.admin_key, &format!("/v1/invoices/{inv}"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for n in r.body["credit_notes"].as_array().expect("credit notes") {
            numbers.push(n["number"].as_str().expect("number").to_owned());
        }
    }
    numbers.sort();
    let want: Vec<String> = (4..=13).map(|n| format!("CN-{n:06}")).collect();
    assert_eq!(numbers, want);
    app.assert_read_models_equal_rebuild().await;
}

async fn credit_carries_to_the_next_renewal_invoice(backend: Backend) {
    let start = t("2026-01-10T09:00:00Z");
    let app = TestApp::spawn_manual(backend, start).await;
    let plan = app.standard_plan().await;
    // 3 seats: 10.00 + 3 × 2.50 = 17.50 a month, invoiced in advance.
    let (sub, _) = app.active_subscription(&plan, 3).await;
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    let first = r.body["data"][0].clone();
    assert_eq!(first["total"], "17.50", "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{first_id}/payments"),
            json!({"amount": "17.50", "reference": "wire-1"}),
        )
        .await;
    assert_eq!(r.body["status"], "paid", "{:?}", r.body);
    let r = credit_note(
        &app,
        &first_id,
        json!({"amount": "5.00", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(balance(&app, "cus_1", "EUR").await["credit"], "5.00");

    // The renewal a month later takes the credit.
    let r = app
        .advance_clock(
            &app.admin_key,
            json!({"to": (start + Duration::days(32)).to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    let renewal = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|i| i["id"] != first_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no renewal invoice: {:?}", r.body));
    assert_eq!(renewal["total"], "17.50", "{renewal}");
    assert_eq!(renewal["applied_credit"], "5.00", "{renewal}");
    assert_eq!(renewal["amount_due"], "12.50", "{renewal}");
    assert_eq!(
        dec(&renewal["total"]) - dec(&renewal["applied_credit"]),
        dec(&renewal["amount_due"])
    );
    let b = balance(&app, "cus_1", "EUR").await;
    assert_eq!(b["credit"], "0.00", "{b}");
    assert_eq!(b["outstanding"], "12.50", "{b}");
    assert_journal_balanced(&app).await;

    // A credit larger than the next invoice leaves the rest for later and
    // settles that invoice at issue.
    let r = credit_note(
        &app,
        &first_id,
        json!({"amount": "12.50", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let other = open_invoice(&app, "cus_1", "EUR", "10.00").await;
    assert_eq!(other.body["applied_credit"], "10.00", "{:?}", other.body);
    assert_eq!(other.body["status"], "paid");
    // Credit in EUR does not pay a JPY invoice.
    let yen = open_invoice(&app, "cus_1", "JPY", "1000").await;
    assert_eq!(yen.body["applied_credit"], "0");
    assert_eq!(balance(&app, "cus_1", "EUR").await["credit"], "2.50");
    assert_journal_balanced(&app).await;
    app.assert_read_models_equal_rebuild().await;
}

// ---------------------------------------------------------------------------
// Payments from providers
// ---------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// A local stand-in for Mercado Pago's API: `GET /v1/payments/<id>` answers
/// the payment the test put there (404 otherwise) and checks the token.
#[derive(Clone, Default)]
struct FakeMercadoPago {
    payments: Arc<Mutex<HashMap<String, Value>>>,
}

impl FakeMercadoPago {
    async fn start(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let payments = self.payments.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let payments = payments.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                    let authorized = text
                        .lines()
                        .any(|l| l.eq_ignore_ascii_case("authorization: Bearer mp-token"));
                    let found = path
                        .strip_prefix("/v1/payments/")
                        .and_then(|id| payments.lock().unwrap().get(id).cloned());
                    let (status, body) = match (authorized, found) {
                        (false, _) => ("401 Unauthorized", "{}".to_string()),
                        (true, Some(p)) => ("200 OK", p.to_string()),
                        (true, None) => ("404 Not Found", "{}".to_string()),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn put(&self, id: &str, payment: Value) {
        self.payments
            .lock()
            .unwrap()
            .insert(id.to_string(), payment);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stripe,
    Polar,
    MercadoPago,
}

/// One provider under test: its secret and how it builds and signs its
/// notifications.
struct ProviderUnderTest {
    kind: Kind,
    secret: String,
    url: String,
    mp: FakeMercadoPago,
}

/// A notification ready to send: body and headers.
#[derive(Clone)]
struct Notification {
    body: String,
    headers: Vec<(String, String)>,
}

impl ProviderUnderTest {
    async fn configure(app: &TestApp, kind: Kind) -> ProviderUnderTest {
        let mp = FakeMercadoPago::default();
        let (name, secret, body) = match kind {
            Kind::Stripe => (
                "stripe",
                "whsec_stripe_test_secret".to_string(),
                json!({"webhook_secret": "whsec_stripe_test_secret"}),
            ),
            Kind::Polar => {
                let secret = format!(
                    "whsec_{}",
                    STANDARD.encode(b"polar signing key, 32 bytes long!")
                );
                ("polar", secret.clone(), json!({"webhook_secret": secret}))
            }
            Kind::MercadoPago => {
                let base = mp.start().await;
                (
                    "mercadopago",
                    "mp-webhook-secret".to_string(),
                    json!({"webhook_secret": "mp-webhook-secret", "access_token": "mp-token", "api_base_url": base}),
                )
            }
        };
        let r = app
            .request(
                reqwest::Method::PUT,
                &format!("/v1/payment-providers/{name}"),
                Some(&app.admin_key),
                &[],
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let url = r.body["webhook_url"]
            .as_str()
            .expect("webhook_url")
            .to_string();
        assert!(url.starts_with(&format!("/v1/inbound/{name}/")), "{url}");
        assert!(
            !r.body.to_string().contains(&secret),
            "a secret is never shown again"
        );
        // The list never shows a secret either.
        let r = app.get(&app.admin_key, "/v1/payment-providers").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(!r.body.to_string().contains(&secret));
        ProviderUnderTest {
            kind,
            secret,
            url,
            mp,
        }
    }

    fn sign(&self, body: &str, event_id: &str, data_id: &str, at: i64) -> Vec<(String, String)> {
        match self.kind {
            Kind::Stripe => {
                let sig = hex::encode(hmac_sha256(
                    self.secret.as_bytes(),
                    format!("{at}.{body}").as_bytes(),
                ));
                vec![("Stripe-Signature".into(), format!("t={at},v1={sig}"))]
            }
            Kind::Polar => {
                let key = STANDARD
                    .decode(self.secret.strip_prefix("whsec_").unwrap())
                    .unwrap();
                let sig = STANDARD.encode(hmac_sha256(
                    &key,
                    format!("{event_id}.{at}.{body}").as_bytes(),
                ));
                vec![
                    ("webhook-id".into(), event_id.into()),
                    ("webhook-timestamp".into(), at.to_string()),
                    ("webhook-signature".into(), format!("v1,{sig}")),
                ]
            }
            Kind::MercadoPago => {
                let request_id = format!("req-{event_id}");
                let manifest = format!("id:{data_id};request-id:{request_id};ts:{at};");
                let sig = hex::encode(hmac_sha256(self.secret.as_bytes(), manifest.as_bytes()));
                vec![
                    ("x-signature".into(), format!("ts={at},v1={sig}")),
                    ("x-request-id".into(), request_id),
                ]
            }
        }
    }

    /// A succeeded payment of `minor` minor units naming `invoice`.
    fn payment(
        &self,
        event_id: &str,
        payment_id: &str,
        invoice: &str,
        minor: i64,
        at: i64,
    ) -> Notification {
        let body = match self.kind {
            Kind::Stripe => json!({
                "id": event_id, "object": "event", "type": "payment_intent.succeeded",
                "data": {"object": {"id": payment_id, "object": "payment_intent",
                    "amount_received": minor, "currency": "eur",
                    "metadata": {"tally_invoice_id": invoice, "tally_customer_id": "cus_pay"}}}
            }),
            Kind::Polar => json!({
                "type": "order.paid", "timestamp": "2026-01-01T00:00:00Z",
                "data": {"id": payment_id, "total_amount": minor, "currency": "eur",
                    "customer_id": "polar_c1",
                    "metadata": {"tally_invoice_id": invoice, "tally_customer_id": "cus_pay"}}
            }),
            Kind::MercadoPago => {
                self.mp.put(
                    payment_id,
                    json!({"id": payment_id, "status": "approved", "currency_id": "EUR",
                        "transaction_amount": minor as f64 / 100.0, "external_reference": invoice,
                        "metadata": {"tally_customer_id": "cus_pay"}}),
                );
                json!({"id": event_id, "type": "payment", "action": "payment.created",
                    "data": {"id": payment_id}})
            }
        }
        .to_string();
        let headers = self.sign(&body, event_id, payment_id, at);
        Notification { body, headers }
    }

    /// A refund of `minor` minor units of `payment_id` (in all, so far).
    fn refund(&self, event_id: &str, payment_id: &str, minor: i64, at: i64) -> Notification {
        let body = match self.kind {
            Kind::Stripe => json!({
                "id": event_id, "object": "event", "type": "charge.refunded",
                "data": {"object": {"id": format!("ch_{payment_id}"), "object": "charge",
                    "payment_intent": payment_id, "amount_refunded": minor, "currency": "eur",
                    "refunds": {"data": [{"id": format!("re_{event_id}"), "amount": minor}]}}}
            }),
            Kind::Polar => json!({
                "type": "order.refunded",
                "data": {"id": payment_id, "total_amount": minor, "refunded_amount": minor,
                    "currency": "eur"}
            }),
            Kind::MercadoPago => {
                self.mp.put(
                    payment_id,
                    json!({"id": payment_id, "status": "refunded", "currency_id": "EUR",
                        "transaction_amount": minor as f64 / 100.0,
                        "transaction_amount_refunded": minor as f64 / 100.0}),
                );
                json!({"id": event_id, "type": "payment", "action": "payment.updated",
                    "data": {"id": payment_id}})
            }
        }
        .to_string();
        let headers = self.sign(&body, event_id, payment_id, at);
        Notification { body, headers }
    }

    async fn send(&self, app: &TestApp, n: &Notification) -> Resp {
        let headers: Vec<(&str, String)> = n
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        app.request(
            reqwest::Method::POST,
            &self.url,
            None,
            &headers,
            Some(n.body.clone().into_bytes()),
        )
        .await
    }
}

/// The invoice from the read model, once it has every event so far.
async fn invoice(app: &TestApp, id: &str) -> Value {
    app.settle().await;
    let r = app.get(&app.admin_key, &format!("/v1/invoices/{id}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Events in the log of one aggregate type, for "nothing recorded" checks.
async fn count_events(app: &TestApp, aggregate_type: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events WHERE aggregate_type = $1")
        .bind(aggregate_type)
        .fetch_one(&app.state().db.any)
        .await
        .expect("count")
}

async fn provider_payments(backend: Backend, kind: Kind) {
    let now = Utc::now();
    let config = WebhookConfig {
        allowed_hosts: AllowList::parse("127.0.0.1").expect("allow list"),
        ..WebhookConfig::default()
    };
    let app = TestApp::spawn_webhooks(backend, now, config).await;
    let p = ProviderUnderTest::configure(&app, kind).await;
    let ts = now.timestamp();
    let tag = format!("{kind:?}").to_lowercase();

    // A signed success pays the invoice it names.
    let inv = open_invoice(&app, "cus_pay", "EUR", "100.00").await.id();
    let paid = p.payment(
        &format!("evt_{tag}_1"),
        &format!("pay{tag}1"),
        &inv,
        10_000,
        ts,
    );
    let r = p.send(&app, &paid).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "applied");
    app.settle().await;
    let body = invoice(&app, &inv).await;
    assert_eq!(body["status"], "paid", "{body}");
    assert_eq!(body["payments"][0]["reference"], format!("{tag}:pay{tag}1"));

    // A replay: 200, no second effect.
    let r = p.send(&app, &paid).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "duplicate");
    let notices = count_events(&app, "inbound_notice").await;
    assert_eq!(notices, 1);

    // Forged, stale, missing signatures: 400, nothing recorded.
    let inv2 = open_invoice(&app, "cus_pay", "EUR", "40.00").await.id();
    let mut forged = p.payment(
        &format!("evt_{tag}_2"),
        &format!("pay{tag}2"),
        &inv2,
        4_000,
        ts,
    );
    let other = ProviderUnderTest {
        kind,
        secret: match kind {
            Kind::Polar => format!(
                "whsec_{}",
                STANDARD.encode(b"another key entirely, 32 bytes!!")
            ),
            _ => "not the secret".into(),
        },
        url: p.url.clone(),
        mp: p.mp.clone(),
    };
    forged.headers = other.sign(
        &forged.body,
        &format!("evt_{tag}_2"),
        &format!("pay{tag}2"),
        ts,
    );
    let stale = p.payment(
        &format!("evt_{tag}_2"),
        &format!("pay{tag}2"),
        &inv2,
        4_000,
        ts - 301,
    );
    let mut tampered = p.payment(
        &format!("evt_{tag}_2"),
        &format!("pay{tag}2"),
        &inv2,
        4_000,
        ts,
    );
    tampered.body = tampered
        .body
        .replace("4000", "4001")
        .replace("40.0", "40.01");
    let unsigned = Notification {
        body: tampered.body.clone(),
        headers: vec![],
    };
    for (what, n) in [
        ("forged", &forged),
        ("stale", &stale),
        ("unsigned", &unsigned),
    ] {
        let r = p.send(&app, n).await;
        assert_eq!(r.status, 400, "{what}: {:?}", r.body);
        assert_eq!(r.body["code"], "signature_invalid", "{what}");
    }
    if kind != Kind::MercadoPago {
        // Mercado Pago signs the payment id, not the body: the body is read
        // from its API instead.
        let r = p.send(&app, &tampered).await;
        assert_eq!(r.status, 400, "tampered: {:?}", r.body);
    }
    assert_eq!(count_events(&app, "inbound_notice").await, notices);
    assert_eq!(invoice(&app, &inv2).await["status"], "open");
    // An unknown token is not found.
    let mut lost = ProviderUnderTest {
        url: format!("{}x", p.url),
        ..other
    };
    lost.secret = p.secret.clone();
    assert_eq!(lost.send(&app, &paid).await.status, 404);

    // 10 concurrent deliveries of one event: one effect.
    let once = p.payment(
        &format!("evt_{tag}_3"),
        &format!("pay{tag}3"),
        &inv2,
        4_000,
        ts,
    );
    let answers = futures::future::join_all((0..10).map(|_| p.send(&app, &once))).await;
    let mut outcomes: Vec<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body["outcome"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "applied").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| o == "applied" || o == "duplicate"),
        "{outcomes:?}"
    );
    app.settle().await;
    let body = invoice(&app, &inv2).await;
    assert_eq!(body["payments"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["status"], "paid");

    // A refund before its payment: 409 payment_unknown, nothing recorded;
    // after the payment, the same refund goes through.
    let inv3 = open_invoice(&app, "cus_pay", "EUR", "30.00").await.id();
    let early = p.refund(&format!("evt_{tag}_r1"), &format!("pay{tag}4"), 1_000, ts);
    let r = p.send(&app, &early).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["code"], "payment_unknown");
    let later = p.payment(
        &format!("evt_{tag}_4"),
        &format!("pay{tag}4"),
        &inv3,
        3_000,
        ts,
    );
    assert_eq!(p.send(&app, &later).await.body["outcome"], "applied");
    let early = p.refund(&format!("evt_{tag}_r1"), &format!("pay{tag}4"), 1_000, ts);
    let r = p.send(&app, &early).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "refunded");
    app.settle().await;
    let body = invoice(&app, &inv3).await;
    assert_eq!(body["amount_refunded"], "10.00", "{body}");
    assert_eq!(body["credit_notes"][0]["refund"], true, "{body}");

    // An overpayment pays the invoice; the rest is customer credit.
    let inv4 = open_invoice(&app, "cus_over", "EUR", "50.00").await.id();
    let over = p.payment(
        &format!("evt_{tag}_5"),
        &format!("pay{tag}5"),
        &inv4,
        8_000,
        ts,
    );
    assert_eq!(p.send(&app, &over).await.body["outcome"], "applied");
    let b = balance(&app, "cus_over", "EUR").await;
    assert_eq!(
        (&b["paid"], &b["credit"], &b["outstanding"]),
        (&json!("80.00"), &json!("30.00"), &json!("0.00")),
        "{b}"
    );
    assert_eq!(invoice(&app, &inv4).await["status"], "paid");

    // An unknown invoice: all of it is credit, and the admin is told.
    let lost_payment = p.payment(
        &format!("evt_{tag}_6"),
        &format!("pay{tag}6"),
        "inv_nosuchinvoice",
        2_500,
        ts,
    );
    let r = p.send(&app, &lost_payment).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "credited");
    let b = balance(&app, "cus_pay", "EUR").await;
    assert_eq!(b["credit"], "25.00", "{b}");
    let keys = app.list_keys(&app.admin_key, "").await;
    let admin = keys.body["data"][0]["id"]
        .as_str()
        .expect("admin key id")
        .to_string();
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/inbox?recipient=user:{admin}&severity=critical"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let items = r.body["data"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{:?}", r.body);
    assert!(items[0]["body"]
        .as_str()
        .unwrap_or_default()
        .contains("inv_nosuchinvoice"));
    // A refund of a payment that became credit pays the credit back.
    let back = p.refund(&format!("evt_{tag}_r6"), &format!("pay{tag}6"), 500, ts);
    let r = p.send(&app, &back).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "refunded");
    let b = balance(&app, "cus_pay", "EUR").await;
    assert_eq!(
        (&b["credit"], &b["refunded"]),
        (&json!("20.00"), &json!("15.00")),
        "{b}"
    );
    // The credit pays the customer's next invoice in EUR.
    let next = open_invoice(&app, "cus_pay", "EUR", "20.00").await;
    assert_eq!(next.body["applied_credit"], "20.00", "{:?}", next.body);

    // The raw payload and its signature header are kept for audit, on the
    // notice's stream (its id hashes the provider and its event id).
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(format!("{tag}\0evt_{tag}_1").as_bytes());
    let notice = format!("ibn_{}", &hex::encode(h.finalize())[..32]);
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/audit/streams/inbound_notice/{notice}/events"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let recorded = &r.body["data"][0]["payload"]["InboundNoticeRecorded"];
    assert_eq!(recorded["raw_payload"], paid.body.as_str(), "{:?}", r.body);
    assert_eq!(recorded["outcome"], "applied");
    let header = recorded["signature_header"].as_str().unwrap_or_default();
    assert!(header.contains(&paid.headers[0].1), "{header}");
    assert_journal_balanced(&app).await;
    app.assert_read_models_equal_rebuild().await;
}

async fn stripe_payments(backend: Backend) {
    provider_payments(backend, Kind::Stripe).await
}

async fn polar_payments(backend: Backend) {
    provider_payments(backend, Kind::Polar).await
}

async fn mercadopago_payments(backend: Backend) {
    provider_payments(backend, Kind::MercadoPago).await
}

/// Bad input on either side of the signature is a 4xx naming the field,
/// never a 500; amounts in minor units follow the currency's exponent.
async fn signed_nonsense_and_bad_configuration_are_4xx_naming_the_field(backend: Backend) {
    let now = Utc::now();
    let app = TestApp::spawn_webhooks(backend, now, WebhookConfig::default()).await;
    let put = |provider: &'static str, body: Value, key: String| {
        let app = &app;
        async move {
            app.request(
                reqwest::Method::PUT,
                &format!("/v1/payment-providers/{provider}"),
                Some(&key),
                &[],
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let admin = app.admin_key.clone();
    for (provider, body, status, field) in [
        ("paypal", json!({"webhook_secret": "s"}), 404, None),
        (
            "polar",
            json!({"webhook_secret": "not-standard-webhooks!"}),
            422,
            Some("webhook_secret"),
        ),
        (
            "mercadopago",
            json!({"webhook_secret": "s"}),
            422,
            Some("access_token"),
        ),
        (
            "mercadopago",
            json!({"webhook_secret": "s", "access_token": "t", "api_base_url": "http://127.0.0.1:9/"}),
            422,
            Some("api_base_url"),
        ),
        (
            "stripe",
            json!({"webhook_secret": ""}),
            422,
            Some("webhook_secret"),
        ),
        (
            "stripe",
            json!({"webhook_secret": "s", "extra": 1}),
            422,
            None,
        ),
    ] {
        let r = put(provider, body.clone(), admin.clone()).await;
        assert_eq!(r.status, status, "{provider} {body}: {:?}", r.body);
        if let Some(field) = field {
            assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:?}", r.body);
        }
    }
    let writer = app.key("default", "writer").await;
    let r = put("stripe", json!({"webhook_secret": "s"}), writer).await;
    assert_eq!(r.status, 403, "{:?}", r.body);

    let p = ProviderUnderTest::configure(&app, Kind::Stripe).await;
    let ts = now.timestamp();
    let signed = |body: Value| {
        let body = body.to_string();
        let headers = p.sign(&body, "", "", ts);
        Notification { body, headers }
    };
    let pi = |currency: &str, amount: Value| {
        json!({"id": "evt_bad", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_bad", "amount_received": amount, "currency": currency,
                "metadata": {"tally_invoice_id": "inv_x"}}}})
    };
    for (body, field) in [
        (pi("zzz", json!(100)), "data.object.currency"),
        (pi("eur", json!(-5)), "data.object.amount_received"),
        (pi("eur", json!("100")), "data.object.amount_received"),
        (pi("eur", json!(1.5)), "data.object.amount_received"),
        (json!({"type": "payment_intent.succeeded"}), "id"),
        (json!([1, 2]), "id"),
    ] {
        let r = p.send(&app, &signed(body.clone())).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:?}", r.body);
    }
    let not_json = Notification {
        body: "not json".into(),
        headers: p.sign("not json", "", "", ts),
    };
    let r = p.send(&app, &not_json).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "body");
    // Nothing of it was recorded.
    assert_eq!(count_events(&app, "inbound_notice").await, 0);

    // Minor units with the currency's exponent: JPY 0, KWD 3.
    for (currency, minor, total) in [("JPY", 1250, "1250"), ("KWD", 1250, "1.250")] {
        let inv = open_invoice(&app, "cus_fx", currency, total).await.id();
        let mut body = pi(&currency.to_lowercase(), json!(minor));
        body["id"] = json!(format!("evt_{currency}"));
        body["data"]["object"]["id"] = json!(format!("pi_{currency}"));
        body["data"]["object"]["metadata"]["tally_invoice_id"] = json!(inv);
        let r = p.send(&app, &signed(body)).await;
        assert_eq!(r.body["outcome"], "applied", "{currency}: {:?}", r.body);
        let got = invoice(&app, &inv).await;
        assert_eq!(got["status"], "paid", "{currency}: {got}");
        assert_eq!(got["amount_paid"], total, "{currency}: {got}");
    }
    // A payment in another currency than its invoice's is credit.
    let inv = open_invoice(&app, "cus_fx", "EUR", "10.00").await.id();
    let mut body = pi("usd", json!(1000));
    body["id"] = json!("evt_usd");
    body["data"]["object"]["id"] = json!("pi_usd");
    body["data"]["object"]["metadata"]["tally_invoice_id"] = json!(inv);
    let r = p.send(&app, &signed(body)).await;
    assert_eq!(r.body["outcome"], "credited", "{:?}", r.body);
    assert_eq!(balance(&app, "cus_fx", "USD").await["credit"], "10.00");
    assert_eq!(invoice(&app, &inv).await["status"], "open");
}
