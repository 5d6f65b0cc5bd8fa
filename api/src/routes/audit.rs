//! Audit endpoints: the full history of one stream, with metadata.

use axum::extract::State;
use serde::Deserialize;
use tally_aggregates::AggregateKind;
use tally_projections::stream_key;

use crate::auth::AuditAccess;
use crate::dto::audit::{
    AuditEventDto, AuditEventsDto, DigestDto, FeedParams, StateAtDto, StateParams,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{PathParams, QueryParams};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamEventsParams {
    /// Page size, 1-1000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The sequence to continue after (`next_cursor` of the previous page).
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/streams/{type}/{id}/events", tag = "audit", operation_id = "audit_stream_events",
    params(("type" = String, Path), ("id" = String, Path), StreamEventsParams),
    responses((status = 200, body = AuditEventsDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn stream_events(
    State(app): State<AppState>,
    PathParams((kind, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<StreamEventsParams>,
    AuditAccess(principal): AuditAccess,
) -> ApiResult<axum::Json<AuditEventsDto>> {
    // The stream types of API.md § Audit: every aggregate kind.
    let kind = AggregateKind::parse(&kind).ok_or(ApiError::NotFound)?;
    let limit: i64 = match &q.limit {
        None => 1000,
        Some(s) => s
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 1000"))?,
    };
    let after: i64 = match &q.cursor {
        None => 0,
        Some(s) => s
            .parse()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| ApiError::field("cursor", "invalid cursor"))?,
    };
    let events = app
        .dispatcher
        .log()
        .read_stream(
            kind.as_str(),
            &stream_key(principal.tenant(), &id),
            after,
            limit + 1,
        )
        .await?;
    if events.is_empty() && after == 0 {
        return Err(ApiError::NotFound);
    }
    let more = events.len() as i64 > limit;
    let data: Vec<AuditEventDto> = events
        .into_iter()
        .take(limit as usize)
        .map(audit_event)
        .collect();
    let next_cursor = if more {
        data.last().map(|e| e.sequence.to_string())
    } else {
        None
    };
    Ok(axum::Json(AuditEventsDto { data, next_cursor }))
}

fn audit_event(e: tally_projections::StoredEvent) -> AuditEventDto {
    // Text that is no JSON (only an edited log holds it) is shown as text.
    let payload = e
        .payload_value()
        .unwrap_or_else(|_| serde_json::Value::String(e.payload.clone()));
    AuditEventDto {
        stream_type: e.aggregate_type.clone(),
        stream_id: e.resource_id().to_string(),
        position: e.position,
        sequence: e.sequence,
        event_id: e.event_id,
        event_type: e.event_type,
        event_version: e.event_version,
        payload,
        metadata: e.metadata,
        recorded_at: e.recorded_at,
    }
}

/// Folds events into an aggregate with its own `apply` (the write path's fold).
fn fold<A: cqrs_es::Aggregate>(events: &[tally_projections::StoredEvent]) -> ApiResult<A> {
    let mut state = A::default();
    for e in events {
        let event: A::Event = e
            .decode()
            .map_err(|err| ApiError::Internal(format!("event {}: {err}", e.position)))?;
        state.apply(event);
    }
    Ok(state)
}

fn to_value<T: serde::Serialize>(v: Option<T>) -> ApiResult<serde_json::Value> {
    let v = v.ok_or(ApiError::NotFound)?;
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Pages of 1,000 events read for one state-as-of (streams are capped there).
const MAX_STATE_PAGES: usize = 100;

#[derive(Debug, Clone, Copy)]
enum Cut {
    At(chrono::DateTime<chrono::Utc>),
    Sequence(i64),
}

#[utoipa::path(get, path = "/v1/audit/streams/{type}/{id}/state", tag = "audit", operation_id = "audit_stream_state",
    params(("type" = String, Path), ("id" = String, Path), StateParams),
    responses((status = 200, body = StateAtDto), (status = 404, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn state_at(
    State(app): State<AppState>,
    PathParams((kind, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<StateParams>,
    AuditAccess(principal): AuditAccess,
) -> ApiResult<axum::Json<StateAtDto>> {
    use tally_aggregates::{
        customer::Customer, inbox::Inbox, invoice::Invoice, plan::Plan, subscription::Subscription,
        ticket::Ticket, usage::UsageRecord,
    };
    // The stream types of API.md § Audit: every aggregate kind.
    let kind = AggregateKind::parse(&kind).ok_or(ApiError::NotFound)?;
    let cut = match (q.at.as_deref(), q.sequence.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("at", "give `at` or `sequence`, not both"))
        }
        (Some(at), None) => Cut::At(crate::dto::parse_time("at", at)?),
        (None, Some(s)) => Cut::Sequence(
            s.parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::field("sequence", "must be a positive integer"))?,
        ),
        (None, None) => Cut::Sequence(i64::MAX),
    };
    let key = stream_key(principal.tenant(), &id);
    let mut events = Vec::new();
    let mut after = 0;
    for _ in 0..MAX_STATE_PAGES {
        let page = app
            .dispatcher
            .log()
            .read_stream(kind.as_str(), &key, after, 1000)
            .await?;
        let full = page.len() == 1000;
        for e in page {
            after = e.sequence;
            let keep = match cut {
                Cut::Sequence(n) => e.sequence <= n,
                Cut::At(t) => {
                    tally_projections::time::from_text(&e.recorded_at).is_some_and(|r| r <= t)
                }
            };
            if keep {
                events.push(e);
            }
        }
        if !full {
            break;
        }
    }
    let Some(last) = events.last() else {
        return Err(ApiError::NotFound);
    };
    let (sequence, recorded_at) = (last.sequence, last.recorded_at.clone());
    let state = match kind {
        AggregateKind::Plan => to_value(crate::dto::plans::PlanDto::from_state(
            &id,
            &fold::<Plan>(&events)?,
            sequence,
        ))?,
        AggregateKind::Subscription => {
            to_value(crate::dto::subscriptions::SubscriptionDto::from_state(
                &id,
                &fold::<Subscription>(&events)?,
                sequence,
            ))?
        }
        AggregateKind::Customer => to_value(crate::dto::customers::CustomerDto::from_state(
            &id,
            &fold::<Customer>(&events)?,
            sequence,
        ))?,
        AggregateKind::Coupon => {
            // Redeemable as it was then.
            let then = tally_projections::time::from_text(&recorded_at)
                .ok_or_else(|| ApiError::Internal(format!("recorded_at {recorded_at}")))?;
            to_value(crate::dto::coupons::CouponDto::from_state(
                &id,
                &fold::<tally_aggregates::Coupon>(&events)?,
                sequence,
                then,
            ))?
        }
        AggregateKind::TaxRate => to_value(crate::dto::tax_rates::TaxRateDto::from_state(
            &id,
            &fold::<tally_aggregates::TaxRate>(&events)?,
            sequence,
        ))?,
        AggregateKind::Invoice => to_value(crate::dto::invoices::InvoiceDto::from_state(
            &id,
            &fold::<Invoice>(&events)?,
            sequence,
        ))?,
        AggregateKind::UsageRecord => to_value(crate::dto::usage::UsageRecordDto::from_state(
            &id,
            &fold::<UsageRecord>(&events)?,
            sequence,
            false,
        ))?,
        AggregateKind::Ticket => to_value(crate::dto::tickets::TicketDto::from_state(
            &id,
            &fold::<Ticket>(&events)?,
            sequence,
            true,
        ))?,
        AggregateKind::Inbox => to_value(Some(fold::<Inbox>(&events)?))?,
        AggregateKind::AccessKey => to_value(Some(fold::<tally_aggregates::AccessKey>(&events)?))?,
        AggregateKind::InvoiceNumbering => {
            to_value(Some(fold::<tally_aggregates::InvoiceNumbering>(&events)?))?
        }
        AggregateKind::InboundNotice => {
            to_value(Some(fold::<tally_aggregates::InboundNotice>(&events)?))?
        }
        AggregateKind::ProviderPayment => {
            to_value(Some(fold::<tally_aggregates::ProviderPayment>(&events)?))?
        }
    };
    Ok(axum::Json(StateAtDto {
        sequence,
        recorded_at,
        state,
    }))
}

/// Log rows scanned per feed request at most (other tenants' rows included).
const FEED_SCAN_LIMIT: usize = 20_000;

#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", operation_id = "audit_events_list", params(FeedParams),
    responses((status = 200, body = AuditEventsDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn feed(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<FeedParams>,
    AuditAccess(principal): AuditAccess,
) -> ApiResult<axum::Json<AuditEventsDto>> {
    let limit: usize = match &q.limit {
        None => 100,
        Some(s) => s
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 1000"))?,
    };
    let mut at: i64 = match &q.after {
        None => 0,
        Some(s) => s
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| ApiError::field("after", "must be a log position"))?,
    };
    // The ordered reader (it never passes an open lower position), filtered
    // to the tenant; the cursor is the last position scanned. Every event
    // committed before the request is in the page (up to its limit): a read
    // stopped in front of a hole below that head waits for the hole's proof
    // (the older transactions to end), at most MIN_POSITION_WAIT.
    let log = app.dispatcher.log();
    let head = log.head().await?;
    let deadline = tokio::time::Instant::now() + super::MIN_POSITION_WAIT;
    let mut pause = std::time::Duration::from_millis(2);
    let mut data = Vec::new();
    let mut scanned = 0;
    'scan: while scanned < FEED_SCAN_LIMIT {
        let batch = log.read_after(at, 1000).await?;
        if batch.is_empty() {
            if at >= head || tokio::time::Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
            continue;
        }
        for e in batch {
            scanned += 1;
            at = e.position;
            if e.tenant == principal.tenant() {
                data.push(audit_event(e));
                if data.len() == limit {
                    break 'scan;
                }
            }
        }
    }
    Ok(axum::Json(AuditEventsDto {
        data,
        next_cursor: Some(at.to_string()),
    }))
}

/// The digest covers the whole log, every tenant's events: a tenant's auditor
/// can keep it outside Tally and later prove the log was not rewritten.
#[utoipa::path(get, path = "/v1/audit/digest", tag = "audit", operation_id = "audit_digest_get",
    responses((status = 200, body = DigestDto), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn digest(
    State(app): State<AppState>,
    _: AuditAccess,
) -> ApiResult<axum::Json<DigestDto>> {
    let d = tally_projections::seal::digest(&app.db).await?;
    Ok(axum::Json(DigestDto {
        position: d.position,
        hash: d.hash,
    }))
}
