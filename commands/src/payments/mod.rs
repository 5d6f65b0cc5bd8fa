//! Payments from providers: the anti-corruption layer between a payment
//! provider's webhooks and Tally's ledger. Each provider is one adapter
//! behind [`ProviderAdapter`] (verify the signature the way the provider
//! documents it, translate its payload into a [`Translated`] fact); nothing
//! provider-specific goes further. [`Payments::receive`] then records the
//! fact with its effect in one transaction:
//!
//! - the notice (`InboundNotice`, a stream new by construction, keyed by the
//!   provider's event id: a redelivery or a concurrent delivery meets it and
//!   has no effect) with the raw payload and signature header for audit;
//! - a payment (`ProviderPayment`, keyed by the provider's payment id) on the
//!   invoice it names when that invoice is open and in its currency, the rest
//!   of an overpayment becoming customer credit; otherwise all of it customer
//!   credit and a critical inbox item for the admin who configured the
//!   provider: a payment is never dropped;
//! - a refund: a refund credit note on the payment's invoice, or customer
//!   credit paid back; a refund of a payment Tally has not seen is refused
//!   (`payment_unknown`), so the provider retries it after the payment.
//!
//! Provider secrets are sealed at rest (`crate::secrets`), never shown again
//! and never logged.

pub mod mercadopago;
pub mod polar;
pub mod stripe;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tally_aggregates::inbox::{Inbox, InboxCommand, Notice};
use tally_aggregates::invoice::{
    CreditReason, CreditSource, Invoice, InvoiceCommand, InvoiceNumbering, InvoiceStatus,
    NumberingCommand, NUMBERING_ID,
};
use tally_aggregates::money::from_minor_units;
use tally_aggregates::payment::payment_reference;
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    Currency, DomainError, InboundNotice, InboundNoticeCommand, ProviderPayment,
    ProviderPaymentCommand,
};
use tally_projections::db::{Db, DbError};
use tally_projections::{stream_key, time};

use crate::dispatch::{CommandError, CommandMeta, Dispatcher};
use crate::ids::{CreditNoteId, Generate, PaymentId};
use crate::invoices::credit_movements;
use crate::store::{self, NewSnapshot, StoreError, StreamAppend, SNAPSHOT_EVERY};
use crate::webhooks::{check_url, guarded_client, Webhooks};

/// How far a signature's timestamp may be from the server's clock.
pub const TOLERANCE_SECS: i64 = 300;
/// The longest secret or token a tenant may configure, in characters.
pub const MAX_SECRET_CHARS: usize = 500;
/// Attempts to record a notification when other writers keep winning.
const MAX_ATTEMPTS: u32 = 30;
/// How long a read of a provider's API may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The providers Tally takes payments from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Stripe,
    Polar,
    MercadoPago,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Stripe, Provider::Polar, Provider::MercadoPago];

    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Polar => "polar",
            Provider::MercadoPago => "mercadopago",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn adapter(&self) -> &'static dyn ProviderAdapter {
        match self {
            Provider::Stripe => &stripe::Stripe,
            Provider::Polar => &polar::Polar,
            Provider::MercadoPago => &mercadopago::MercadoPago,
        }
    }

    /// Where the provider's API is unless the tenant says otherwise.
    fn default_api_base_url(&self) -> &'static str {
        match self {
            Provider::Stripe => "https://api.stripe.com",
            Provider::Polar => "https://api.polar.sh",
            Provider::MercadoPago => "https://api.mercadopago.com",
        }
    }
}

/// One inbound request: its headers (names lowercase) and raw body.
pub struct Inbound<'a> {
    pub headers: &'a HashMap<String, String>,
    pub body: &'a [u8],
}

impl Inbound<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Result<Value, InboundError> {
        serde_json::from_slice(self.body)
            .map_err(|_| InboundError::invalid("body", "must be a JSON document"))
    }
}

/// A tenant's configuration of a provider, secrets opened.
pub struct ProviderSettings {
    pub webhook_secret: String,
    pub access_token: Option<String>,
    pub api_base_url: String,
}

/// A refund as the provider states it.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundAmount {
    /// One refund with its own id.
    One { refund_id: String, amount: Decimal },
    /// What is refunded of the payment in all (the part not yet recorded is new).
    Total(Decimal),
}

/// What a provider's notification means, in Tally's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    Payment {
        event_id: String,
        event_type: String,
        payment_id: String,
        invoice_id: Option<String>,
        customer_id: Option<String>,
        currency: Currency,
        amount: Decimal,
    },
    Refund {
        event_id: String,
        event_type: String,
        payment_id: String,
        currency: Currency,
        amount: RefundAmount,
    },
    /// A notification Tally does not act on; recorded for audit.
    Ignored {
        event_id: String,
        event_type: String,
    },
}

/// One provider: its signature scheme and its payloads.
#[async_trait::async_trait]
pub trait ProviderAdapter: Send + Sync {
    fn name(&self) -> &'static str;
    /// The signature header(s) as received, kept for audit.
    fn signature_header(&self, inbound: &Inbound) -> String;
    /// Whether the request is signed with `secret` within the tolerance.
    fn verify(&self, secret: &str, inbound: &Inbound, now_unix: i64) -> bool;
    /// Translates a verified request.
    async fn translate(
        &self,
        inbound: &Inbound,
        settings: &ProviderSettings,
        client: &reqwest::Client,
    ) -> Result<Translated, InboundError>;
}

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("no such provider configuration")]
    NotFound,
    #[error("the signature is missing, does not match or is outside the tolerance")]
    SignatureInvalid,
    #[error("a refund of a payment Tally has not seen")]
    PaymentUnknown,
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the provider's API: {0}")]
    Upstream(String),
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl InboundError {
    fn invalid(field: &str, message: impl Into<String>) -> InboundError {
        InboundError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<DbError> for InboundError {
    fn from(e: DbError) -> Self {
        InboundError::Command(e.into())
    }
}

impl From<DomainError> for InboundError {
    fn from(e: DomainError) -> Self {
        InboundError::Command(e.into())
    }
}

impl From<StoreError> for InboundError {
    fn from(e: StoreError) -> Self {
        InboundError::Command(e.into())
    }
}

// ---- payload helpers for the adapters: 422 naming the field ----

fn str_at(v: &Value, pointer: &str, field: &str) -> Result<String, InboundError> {
    match v.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(InboundError::invalid(
            field,
            "required, a string of 1 to 200 characters",
        )),
    }
}

fn currency_at(v: &Value, pointer: &str, field: &str) -> Result<Currency, InboundError> {
    let code = str_at(v, pointer, field)?;
    Currency::parse(&code.to_ascii_uppercase())
        .map_err(|_| InboundError::invalid(field, format!("unknown currency {code:?}")))
}

/// An integer amount in the currency's minor units.
fn amount_minor(
    v: &Value,
    pointer: &str,
    field: &str,
    currency: Currency,
) -> Result<Decimal, InboundError> {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .filter(|units| *units >= 0)
        .and_then(|units| from_minor_units(units, currency))
        .ok_or_else(|| {
            InboundError::invalid(field, "required, a non-negative integer in minor units")
        })
}

/// A decimal amount (a JSON number or string) at most at the minor unit.
fn decimal_at(
    v: &Value,
    pointer: &str,
    field: &str,
    currency: Currency,
) -> Result<Decimal, InboundError> {
    let text = match v.pointer(pointer) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err(InboundError::invalid(field, "required, a decimal amount")),
    };
    let amount: Decimal = text
        .parse()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| InboundError::invalid(field, "a decimal amount"))?;
    if amount < Decimal::ZERO || amount.normalize().scale() > currency.minor_units() {
        return Err(InboundError::invalid(
            field,
            format!(
                "non-negative, with at most {} decimal places",
                currency.minor_units()
            ),
        ));
    }
    Ok(tally_aggregates::money::round_to_minor(amount, currency))
}

/// A provider's configuration as shown (never its secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderView {
    pub provider: &'static str,
    pub webhook_url: String,
    pub api_base_url: String,
    pub configured_at: String,
}

/// What the inbound endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `applied`, `credited`, `refunded`, `ignored`, `duplicate_payment`,
    /// `duplicate_refund`, or `duplicate` (this provider event was recorded before).
    pub outcome: String,
    pub position: i64,
}

/// Payment providers: their configuration and their notifications.
#[derive(Clone)]
pub struct Payments {
    db: Db,
    dispatcher: Dispatcher,
    webhooks: Webhooks,
    client: reqwest::Client,
}

fn seal_context(tenant: &str, provider: Provider, field: &str) -> String {
    format!("payment_provider\0{tenant}\0{}\0{field}", provider.as_str())
}

fn webhook_url(provider: Provider, token: &str) -> String {
    format!("/v1/inbound/{}/{token}", provider.as_str())
}

/// A stream id from a provider's id: ids are the provider's own text, so they
/// are hashed into a fixed, safe form.
fn hashed_id(prefix: &str, provider: Provider, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(provider.as_str().as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    format!("{prefix}_{}", &hex::encode(h.finalize())[..32])
}

/// Whether a provider-given invoice id can name an invoice at all.
fn plausible_invoice_id(id: &str) -> bool {
    id.starts_with("inv_")
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Streams to append in one transaction, each decided from its loaded state.
struct Batch {
    tenant: String,
    metadata: HashMap<String, String>,
    streams: Vec<StreamAppend>,
}

impl Batch {
    fn add<A: cqrs_es::Aggregate + Clone>(
        &mut self,
        id: &str,
        state: &A,
        version: i64,
        events: Vec<A::Event>,
    ) -> Result<(), InboundError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = store::new_events::<A>(version, &events, &self.metadata)?;
        let new_version = version + events.len() as i64;
        let crosses =
            (version as usize / SNAPSHOT_EVERY) != (new_version as usize / SNAPSHOT_EVERY);
        let snapshot = if crosses {
            let mut after = state.clone();
            for e in events {
                after.apply(e);
            }
            Some(NewSnapshot {
                last_sequence: new_version,
                payload: serde_json::to_value(&after).map_err(StoreError::from)?,
            })
        } else {
            None
        };
        self.streams.push(StreamAppend {
            aggregate_type: A::TYPE,
            key: stream_key(&self.tenant, id),
            events: rows,
            snapshot,
        });
        Ok(())
    }
}

impl Payments {
    pub fn new(db: Db, dispatcher: Dispatcher, webhooks: Webhooks) -> Result<Payments, String> {
        let client = guarded_client(webhooks.allowed_hosts(), READ_TIMEOUT, "Tally-Payments/1")
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Payments {
            db,
            dispatcher,
            webhooks,
            client,
        })
    }

    /// Configures (or reconfigures) a provider for a tenant. The webhook URL
    /// stays the same across reconfigurations; the secrets are replaced.
    pub async fn configure(
        &self,
        tenant: &str,
        provider: Provider,
        configured_by: &str,
        webhook_secret: &str,
        access_token: Option<&str>,
        api_base_url: Option<&str>,
    ) -> Result<ProviderView, InboundError> {
        let check = |field: &str, value: &str| {
            if value.is_empty()
                || value.chars().count() > MAX_SECRET_CHARS
                || value.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(InboundError::invalid(
                    field,
                    format!("1 to {MAX_SECRET_CHARS} characters, no spaces or control characters"),
                ));
            }
            Ok(())
        };
        check("webhook_secret", webhook_secret)?;
        if let Some(token) = access_token {
            check("access_token", token)?;
        }
        if provider == Provider::Polar && polar::secret_key(webhook_secret).is_none() {
            return Err(InboundError::invalid(
                "webhook_secret",
                "a Standard Webhooks secret: whsec_ followed by base64",
            ));
        }
        if provider == Provider::MercadoPago && access_token.is_none() {
            return Err(InboundError::invalid(
                "access_token",
                "required for mercadopago: Tally reads each notified payment from its API",
            ));
        }
        let api_base_url = match api_base_url {
            Some(url) => check_url(self.webhooks.allowed_hosts(), url)
                .await
                .map_err(|e| InboundError::invalid("api_base_url", e.to_string()))?
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            None => provider.default_api_base_url().to_string(),
        };
        let seal = |field: &str, value: &str| {
            self.webhooks
                .seal_secret(&seal_context(tenant, provider, field), value)
                .map_err(|e| InboundError::Upstream(e.to_string()))
        };
        let (key_id, sealed_secret) = seal("webhook_secret", webhook_secret)?;
        let sealed_token = match access_token {
            Some(t) => seal("access_token", t)?.1,
            None => String::new(),
        };
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT token FROM payment_providers WHERE tenant = $1 AND provider = $2",
        )
        .bind(tenant)
        .bind(provider.as_str())
        .fetch_optional(&self.db.any)
        .await
        .map_err(DbError::from)?;
        let token = existing.unwrap_or_else(|| {
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        });
        let now = time::to_text(self.dispatcher.clock().now());
        sqlx::query(
            "INSERT INTO payment_providers (tenant, provider, token, webhook_secret, access_token, \
             secret_key_id, api_base_url, configured_by, configured_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant, provider) DO UPDATE SET webhook_secret = excluded.webhook_secret, \
             access_token = excluded.access_token, secret_key_id = excluded.secret_key_id, \
             api_base_url = excluded.api_base_url, configured_by = excluded.configured_by, \
             configured_at = excluded.configured_at",
        )
        .bind(tenant)
        .bind(provider.as_str())
        .bind(&token)
        .bind(&sealed_secret)
        .bind(&sealed_token)
        .bind(&key_id)
        .bind(&api_base_url)
        .bind(configured_by)
        .bind(&now)
        .execute(&self.db.any)
        .await
        .map_err(DbError::from)?;
        Ok(ProviderView {
            provider: provider.as_str(),
            webhook_url: webhook_url(provider, &token),
            api_base_url,
            configured_at: now,
        })
    }

    /// The tenant's configured providers, without secrets.
    pub async fn list(&self, tenant: &str) -> Result<Vec<ProviderView>, InboundError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT provider, token, api_base_url, configured_at FROM payment_providers \
             WHERE tenant = $1 ORDER BY provider",
        )
        .bind(tenant)
        .fetch_all(&self.db.any)
        .await
        .map_err(DbError::from)?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, token, api_base_url, configured_at)| {
                let provider = Provider::parse(&p)?;
                Some(ProviderView {
                    provider: provider.as_str(),
                    webhook_url: webhook_url(provider, &token),
                    api_base_url,
                    configured_at,
                })
            })
            .collect())
    }

    /// The configuration a webhook URL's token names: (tenant, settings,
    /// the admin who configured it).
    async fn lookup(
        &self,
        provider: Provider,
        token: &str,
    ) -> Result<(String, ProviderSettings, String), InboundError> {
        if token.is_empty() || token.len() > 100 {
            return Err(InboundError::NotFound);
        }
        let row: Option<(String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT tenant, webhook_secret, access_token, secret_key_id, api_base_url, configured_by \
             FROM payment_providers WHERE provider = $1 AND token = $2",
        )
        .bind(provider.as_str())
        .bind(token)
        .fetch_optional(&self.db.any)
        .await
        .map_err(DbError::from)?;
        let (tenant, secret, access_token, key_id, api_base_url, configured_by) =
            row.ok_or(InboundError::NotFound)?;
        let open = |field: &str, sealed: &str| {
            self.webhooks
                .open_secret(&key_id, &seal_context(&tenant, provider, field), sealed)
        };
        let webhook_secret = open("webhook_secret", &secret).ok_or_else(|| {
            InboundError::Upstream("the provider's secret does not open with the server key".into())
        })?;
        let access_token = if access_token.is_empty() {
            None
        } else {
            open("access_token", &access_token)
        };
        Ok((
            tenant,
            ProviderSettings {
                webhook_secret,
                access_token,
                api_base_url,
            },
            configured_by,
        ))
    }

    /// Verifies, translates and records one provider notification.
    pub async fn receive(
        &self,
        provider: Provider,
        token: &str,
        inbound: &Inbound<'_>,
        request_id: &str,
    ) -> Result<Received, InboundError> {
        let (tenant, settings, admin) = self.lookup(provider, token).await?;
        let adapter = provider.adapter();
        let now = self.dispatcher.clock().now();
        if !adapter.verify(&settings.webhook_secret, inbound, now.timestamp()) {
            return Err(InboundError::SignatureInvalid);
        }
        if provider == Provider::MercadoPago {
            // The address was checked when configured; the rule may have
            // changed since, and the client's resolver does not see an IP
            // literal, so it is checked again before every read (as webhook
            // deliveries are).
            check_url(self.webhooks.allowed_hosts(), &settings.api_base_url)
                .await
                .map_err(|e| InboundError::Upstream(format!("api_base_url: {e}")))?;
        }
        let translated = adapter.translate(inbound, &settings, &self.client).await?;
        let raw = String::from_utf8(inbound.body.to_vec())
            .map_err(|_| InboundError::invalid("body", "must be UTF-8"))?;
        if raw.contains('\0') {
            return Err(InboundError::invalid("body", "must not contain NUL"));
        }
        let meta = CommandMeta {
            tenant: tenant.clone(),
            actor: format!("provider:{}", provider.as_str()),
            request_id: request_id.to_string(),
            correlation_id: request_id.to_string(),
            causation_id: None,
            idempotency_key: None,
        };
        let signature_header = adapter.signature_header(inbound);
        for attempt in 0..MAX_ATTEMPTS {
            match self
                .try_record(
                    provider,
                    &meta,
                    &translated,
                    &raw,
                    &signature_header,
                    &admin,
                )
                .await
            {
                Err(InboundError::Command(CommandError::Conflict)) => {
                    let wait = 5u64 * (1 + u64::from(attempt.min(10)));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
        Err(InboundError::Command(CommandError::Conflict))
    }

    /// One try: load every stream the notification touches, decide, append
    /// all of it in one transaction (a lost race is `Conflict`).
    async fn try_record(
        &self,
        provider: Provider,
        meta: &CommandMeta,
        translated: &Translated,
        raw: &str,
        signature_header: &str,
        admin: &str,
    ) -> Result<Received, InboundError> {
        let d = &self.dispatcher;
        let tenant = meta.tenant.as_str();
        let at = d.clock().now();
        let (event_id, event_type) = match translated {
            Translated::Payment {
                event_id,
                event_type,
                ..
            }
            | Translated::Refund {
                event_id,
                event_type,
                ..
            }
            | Translated::Ignored {
                event_id,
                event_type,
            } => (event_id.clone(), event_type.clone()),
        };
        let notice_id = hashed_id("ibn", provider, &event_id);
        let (notice, notice_version) = d.load::<InboundNotice>(tenant, &notice_id).await?;
        if notice.provider.is_some() {
            let (_, position) = d
                .log()
                .stream_head(
                    AggregateKind::InboundNotice.as_str(),
                    &stream_key(tenant, &notice_id),
                )
                .await?;
            return Ok(Received {
                outcome: "duplicate".into(),
                position,
            });
        }
        let mut batch = Batch {
            tenant: tenant.to_string(),
            metadata: meta.to_map(d.clock()),
            streams: Vec::new(),
        };
        let mut reference = None;
        let outcome = match translated {
            Translated::Ignored { .. } => "ignored".to_string(),
            Translated::Payment {
                payment_id,
                invoice_id,
                customer_id,
                currency,
                amount,
                ..
            } => {
                let r = payment_reference(provider.as_str(), payment_id);
                reference = Some(r.clone());
                self.decide_payment(
                    &mut batch,
                    provider,
                    payment_id,
                    &r,
                    invoice_id.as_deref(),
                    customer_id.as_deref(),
                    *currency,
                    *amount,
                    admin,
                    at,
                )
                .await?
            }
            Translated::Refund {
                payment_id,
                currency,
                amount,
                ..
            } => {
                reference = Some(payment_reference(provider.as_str(), payment_id));
                self.decide_refund(&mut batch, provider, payment_id, *currency, amount, at)
                    .await?
            }
        };
        let recorded = notice.decide(InboundNoticeCommand::Record {
            provider: provider.as_str().to_string(),
            provider_event_id: event_id,
            event_type,
            outcome: outcome.clone(),
            payment_reference: reference,
            raw_payload: raw.to_string(),
            signature_header: signature_header.to_string(),
            at,
        })?;
        batch.add(&notice_id, &notice, notice_version, recorded)?;
        let positions = d.append_many(tenant, at, batch.streams).await?;
        Ok(Received {
            outcome,
            position: positions.into_iter().max().unwrap_or_default(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide_payment(
        &self,
        batch: &mut Batch,
        provider: Provider,
        payment_id: &str,
        reference: &str,
        invoice_id: Option<&str>,
        customer_id: Option<&str>,
        currency: Currency,
        amount: Decimal,
        admin: &str,
        at: DateTime<Utc>,
    ) -> Result<String, InboundError> {
        let d = &self.dispatcher;
        let tenant = batch.tenant.clone();
        if amount.is_zero() {
            return Ok("ignored".into());
        }
        let ppy_id = hashed_id("ppy", provider, payment_id);
        let (payment, payment_version) = d.load::<ProviderPayment>(&tenant, &ppy_id).await?;
        if payment.currency.is_some() {
            // Another notification of a payment already received.
            return Ok("duplicate_payment".into());
        }
        let invoice = match invoice_id.filter(|id| plausible_invoice_id(id)) {
            Some(id) => {
                let (invoice, version) = d.load::<Invoice>(&tenant, id).await?;
                invoice.status.map(|_| (id.to_string(), invoice, version))
            }
            None => None,
        };
        let (ledger, ledger_version) = d.load::<InvoiceNumbering>(&tenant, NUMBERING_ID).await?;
        let why = match &invoice {
            None => invoice_id.map_or_else(
                || "the payment names no invoice".to_string(),
                |id| format!("invoice {id} is unknown"),
            ),
            Some((_, inv, _)) if inv.currency != Some(currency) => format!(
                "the invoice is in {}, the payment in {currency}",
                inv.currency.map(|c| c.code()).unwrap_or("?")
            ),
            Some((_, inv, _)) if inv.status != Some(InvoiceStatus::Open) => format!(
                "the invoice is {}",
                inv.status.map(|s| s.as_str()).unwrap_or("?")
            ),
            Some(_) => String::new(),
        };
        let customer = match (&invoice, customer_id) {
            (Some((_, inv, _)), _) => inv.customer_id.clone(),
            (None, Some(c)) => c.to_string(),
            (None, None) => format!("{}:unidentified", provider.as_str()),
        };
        let mut ledger_events = Vec::new();
        let (applied_to, applied, outcome) = if why.is_empty() {
            let (id, inv, version) = invoice.as_ref().expect("an open invoice");
            let events = inv.decide(InvoiceCommand::RecordPayment {
                payment_id: PaymentId::generate().into_string(),
                amount,
                reference: reference.to_string(),
                captured_at: at,
                excess_to_credit: true,
                at,
            })?;
            ledger_events.extend(credit_movements(&ledger, id, &events, at)?);
            let applied = events
                .iter()
                .find_map(|e| match e {
                    tally_aggregates::InvoiceEvent::PaymentRecorded { payment, .. } => {
                        Some(payment.amount)
                    }
                    _ => None,
                })
                .unwrap_or(amount);
            batch.add(id, inv, *version, events)?;
            (Some(id.clone()), applied, "applied")
        } else {
            ledger_events.extend(ledger.decide(NumberingCommand::GrantCredit {
                customer_id: customer.clone(),
                currency,
                amount,
                source: CreditSource::UnappliedPayment {
                    invoice_id: invoice_id.map(str::to_string),
                    reference: reference.to_string(),
                    why: why.clone(),
                },
                at,
            })?);
            // The admin who configured the provider hears of it at once, in
            // the same transaction.
            let recipient = format!("user:{admin}");
            let (inbox, inbox_version) = d.load::<Inbox>(&tenant, &recipient).await?;
            let notified = inbox.decide(InboxCommand::Notify {
                recipient: recipient.clone(),
                notice: Notice {
                    severity: "critical".into(),
                    title: "Payment held as customer credit".into(),
                    body: format!(
                        "A {} payment {reference} of {amount} {currency} could not be applied: {why}. \
                         It is credit of customer {customer}, applied to their next invoice in {currency}.",
                        provider.as_str()
                    ),
                    subject_type: "customer".into(),
                    subject_id: customer.clone(),
                },
                at,
            })?;
            batch.add(&recipient, &inbox, inbox_version, notified)?;
            (None, Decimal::ZERO, "credited")
        };
        batch.add(NUMBERING_ID, &ledger, ledger_version, ledger_events)?;
        let received = payment.decide(ProviderPaymentCommand::Receive {
            provider: provider.as_str().to_string(),
            payment_id: payment_id.to_string(),
            currency,
            customer_id: customer,
            invoice_id: applied_to,
            amount,
            applied,
            at,
        })?;
        batch.add(&ppy_id, &payment, payment_version, received)?;
        Ok(outcome.to_string())
    }

    async fn decide_refund(
        &self,
        batch: &mut Batch,
        provider: Provider,
        payment_id: &str,
        currency: Currency,
        amount: &RefundAmount,
        at: DateTime<Utc>,
    ) -> Result<String, InboundError> {
        let d = &self.dispatcher;
        let tenant = batch.tenant.clone();
        let ppy_id = hashed_id("ppy", provider, payment_id);
        let (payment, payment_version) = d.load::<ProviderPayment>(&tenant, &ppy_id).await?;
        if payment.currency.is_none() {
            return Err(InboundError::PaymentUnknown);
        }
        if payment.currency != Some(currency) {
            return Err(InboundError::invalid(
                "currency",
                "the refund's currency is not the payment's",
            ));
        }
        let (refund_id, refund) = match amount {
            RefundAmount::One { refund_id, amount } => (refund_id.clone(), *amount),
            RefundAmount::Total(total) => (
                format!("{payment_id}@{total}"),
                tally_aggregates::money::round_to_minor(*total - payment.refunded, currency),
            ),
        };
        if refund <= Decimal::ZERO || payment.refund_ids.contains(&refund_id) {
            return Ok("duplicate_refund".into());
        }
        let refunded = payment.decide(ProviderPaymentCommand::Refund {
            refund_id: refund_id.clone(),
            amount: refund,
            at,
        })?;
        // The applied part is refunded from the invoice first, the rest from credit.
        let from_invoice = refund.min((payment.applied - payment.refunded).max(Decimal::ZERO));
        let from_credit = refund - from_invoice;
        let (ledger, ledger_version) = d.load::<InvoiceNumbering>(&tenant, NUMBERING_ID).await?;
        let mut ledger_state = ledger.clone();
        let mut ledger_events = Vec::new();
        let reference = payment_reference(provider.as_str(), &refund_id);
        if let (Some(invoice_id), true) = (&payment.invoice_id, from_invoice > Decimal::ZERO) {
            let (invoice, version) = d.load::<Invoice>(&tenant, invoice_id).await?;
            let credit_note_id = CreditNoteId::generate().into_string();
            let noted = invoice.decide(InvoiceCommand::IssueCreditNote {
                credit_note_id: credit_note_id.clone(),
                number: ledger_state.next_credit_note(),
                amount: from_invoice,
                reason: CreditReason::Refund,
                refund: true,
                reference: Some(reference.clone()),
                at,
            })?;
            if !noted.is_empty() {
                let numbered = ledger_state.decide(NumberingCommand::AssignCreditNote {
                    invoice_id: invoice_id.clone(),
                    credit_note_id,
                    at,
                })?;
                for e in &numbered {
                    ledger_state.evolve(e);
                }
                ledger_events.extend(numbered);
                batch.add(invoice_id, &invoice, version, noted)?;
            }
        }
        if from_credit > Decimal::ZERO {
            ledger_events.extend(ledger_state.decide(NumberingCommand::RefundCredit {
                customer_id: payment.customer_id.clone(),
                currency,
                amount: from_credit,
                reference,
                at,
            })?);
        }
        batch.add(NUMBERING_ID, &ledger, ledger_version, ledger_events)?;
        batch.add(&ppy_id, &payment, payment_version, refunded)?;
        Ok("refunded".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_follow_the_currency_exponent() {
        let v = serde_json::json!({"a": 1250});
        for (code, want) in [("EUR", "12.50"), ("JPY", "1250"), ("KWD", "1.250")] {
            let c = Currency::parse(code).unwrap();
            assert_eq!(amount_minor(&v, "/a", "a", c).unwrap().to_string(), want);
        }
        let bad = serde_json::json!({"a": -1});
        assert!(amount_minor(&bad, "/a", "a", Currency::parse("EUR").unwrap()).is_err());
    }

    #[test]
    fn provider_ids_hash_to_safe_stream_ids() {
        let a = hashed_id("ibn", Provider::Stripe, "evt_1");
        assert!(a.starts_with("ibn_") && a.len() == 36);
        assert_ne!(a, hashed_id("ibn", Provider::Polar, "evt_1"));
    }
}
