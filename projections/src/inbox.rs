//! The inbox read model (`rm_inbox_items`): notification items delivered from
//! the events of every aggregate under the delivery rules of API.md § Inbox,
//! and their read / archived state, which comes from the recipients' `Inbox`
//! aggregates, so a rebuild keeps it.
//!
//! An item's id is derived from the causing event and the recipient, so a
//! replay delivers the same ids. Principals: a bare requester is a customer,
//! a bare author or assignee is a user (`principal_*`).

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use std::borrow::Cow;

use tally_aggregates::inbox::InboxEvent;
use tally_aggregates::invoice::InvoiceEvent;
use tally_aggregates::subscription::{SubscriptionEvent, SuspendReason};
use tally_aggregates::ticket::TicketEvent;

use crate::db::{Db, DbError};
use crate::log::StoredEvent;
use crate::runtime::{ProjectionError, Projector};
use crate::tables::Tables;
use crate::MAX_PAGE_LIMIT;

pub const CONSUMER: &str = "inbox";

#[derive(Debug, Default)]
pub struct InboxProjector;

/// `ntf_` and 32 hex digits of SHA-256(event id, recipient).
pub fn item_id(event_id: &str, recipient: &str) -> String {
    let mut h = Sha256::new();
    h.update(event_id.as_bytes());
    h.update(b"|");
    h.update(recipient.as_bytes());
    format!("ntf_{}", &hex::encode(h.finalize())[..32])
}

/// A requester as a principal: bare ids are customers.
pub fn principal_customer(s: &str) -> String {
    if s.starts_with("customer:") || s.starts_with("user:") {
        s.to_string()
    } else {
        format!("customer:{s}")
    }
}

/// An author or assignee as a principal: bare names are users.
pub fn principal_user(s: &str) -> String {
    if s.starts_with("customer:") || s.starts_with("user:") {
        s.to_string()
    } else {
        format!("user:{s}")
    }
}

struct Delivery {
    recipient: String,
    severity: Cow<'static, str>,
    title: String,
    body: String,
    subject_type: Cow<'static, str>,
    subject_id: String,
}

async fn deliver(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
    d: Delivery,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        &t.sql("INSERT INTO rm_inbox_items (tenant, id, recipient, severity, title, body, subject_type, subject_id, state, created_at, position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'unread', $9, $10) ON CONFLICT (tenant, id) DO NOTHING"),
    )
    .bind(&event.tenant)
    .bind(item_id(&event.event_id, &d.recipient))
    .bind(&d.recipient)
    .bind(d.severity.as_ref())
    .bind(d.title)
    .bind(d.body)
    .bind(d.subject_type.as_ref())
    .bind(d.subject_id)
    .bind(&event.recorded_at)
    .bind(event.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Projector for InboxProjector {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_inbox_items", "rm_inbox_customers"]
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        matches!(
            event.aggregate_type.as_str(),
            "subscription" | "invoice" | "ticket" | "inbox"
        )
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            "subscription" => subscription(conn, t, event).await,
            "invoice" => invoice(conn, t, event).await,
            "ticket" => ticket(conn, t, event).await,
            "inbox" => inbox(conn, t, event).await,
            _ => Ok(()),
        }
    }
}

async fn subscription(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let e: SubscriptionEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    let sub = event.resource_id().to_string();
    let (severity, title, body) = match e {
        SubscriptionEvent::SubscriptionCreated { customer_id, .. } => {
            sqlx::query(
                &t.sql("INSERT INTO rm_inbox_customers (tenant, subscription_id, customer_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, subscription_id) DO NOTHING"),
            )
            .bind(&event.tenant)
            .bind(&sub)
            .bind(customer_id)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        SubscriptionEvent::SubscriptionActivated { period, .. } => (
            "info",
            "Subscription activated".to_string(),
            format!(
                "Your subscription {sub} is active; the first period ends {}.",
                period.end.to_rfc3339()
            ),
        ),
        SubscriptionEvent::SubscriptionSuspended { reason, .. } => {
            let (severity, why) = match reason {
                SuspendReason::Manual { .. } => {
                    ("warning", "it was suspended manually".to_string())
                }
                SuspendReason::NonPayment => ("critical", "an invoice is unpaid".to_string()),
                SuspendReason::QuotaExceeded { meter } => {
                    ("critical", format!("the {meter} quota is used up"))
                }
            };
            (
                severity,
                "Subscription suspended".to_string(),
                format!("Subscription {sub} is suspended: {why}."),
            )
        }
        SubscriptionEvent::SubscriptionResumed { .. } => (
            "info",
            "Subscription resumed".to_string(),
            format!("Subscription {sub} is active again."),
        ),
        SubscriptionEvent::SubscriptionCanceled { .. } => (
            "warning",
            "Subscription canceled".to_string(),
            format!("Subscription {sub} is canceled."),
        ),
        SubscriptionEvent::SubscriptionPastDue { invoice_id, .. } => (
            "warning",
            "Invoice past due".to_string(),
            format!("Invoice {invoice_id} is past due; subscription {sub} is past due until it is paid."),
        ),
        // API.md names the notified events; a trial's start and end are not
        // among them (its end is followed by the activation, which is).
        SubscriptionEvent::TrialStarted { .. }
        | SubscriptionEvent::TrialEnded { .. }
        | SubscriptionEvent::PlanChanged { .. }
        | SubscriptionEvent::SeatsChanged { .. }
        | SubscriptionEvent::PastDueCleared { .. }
        | SubscriptionEvent::CancellationScheduled { .. }
        | SubscriptionEvent::PeriodRenewed { .. }
        | SubscriptionEvent::DiscountApplied { .. }
        | SubscriptionEvent::DiscountRemoved { .. } => return Ok(()),
    };
    let customer: Option<String> = sqlx::query_scalar(&t.sql(
        "SELECT customer_id FROM rm_inbox_customers WHERE tenant = $1 AND subscription_id = $2",
    ))
    .bind(&event.tenant)
    .bind(&sub)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(customer) = customer else {
        return Ok(());
    };
    deliver(
        conn,
        t,
        event,
        Delivery {
            recipient: format!("customer:{customer}"),
            severity: severity.into(),
            title,
            body,
            subject_type: "subscription".into(),
            subject_id: sub,
        },
    )
    .await?;
    Ok(())
}

async fn invoice(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let e: InvoiceEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    let id = event.resource_id().to_string();
    let (customer, title, body) = match e {
        InvoiceEvent::InvoiceIssued {
            number,
            customer_id,
            currency,
            total,
            due_at,
            ..
        } => (
            customer_id,
            format!("Invoice {number} issued"),
            format!(
                "Invoice {number} for {total} {currency} is due {}.",
                due_at.to_rfc3339()
            ),
        ),
        InvoiceEvent::InvoicePaid { customer_id, .. } => (
            customer_id,
            "Invoice paid".to_string(),
            format!("Invoice {id} is paid. Thank you."),
        ),
        InvoiceEvent::InvoiceCreated { .. }
        | InvoiceEvent::LineAdded { .. }
        | InvoiceEvent::PaymentRecorded { .. }
        | InvoiceEvent::InvoiceVoided { .. }
        | InvoiceEvent::InvoiceMarkedUncollectible { .. }
        | InvoiceEvent::CreditNoteIssued { .. } => return Ok(()),
    };
    deliver(
        conn,
        t,
        event,
        Delivery {
            recipient: format!("customer:{customer}"),
            severity: "info".into(),
            title,
            body,
            subject_type: "invoice".into(),
            subject_id: id,
        },
    )
    .await?;
    Ok(())
}

async fn ticket(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let e: TicketEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    let id = event.resource_id().to_string();
    let mut out: Vec<Delivery> = Vec::new();
    let mut to = |recipients: Vec<String>,
                  except: Option<String>,
                  severity: &'static str,
                  title: String,
                  body: String| {
        let mut seen = Vec::new();
        for r in recipients {
            if Some(&r) == except.as_ref() || seen.contains(&r) {
                continue;
            }
            seen.push(r.clone());
            out.push(Delivery {
                recipient: r,
                severity: severity.into(),
                title: title.clone(),
                body: body.clone(),
                subject_type: "ticket".into(),
                subject_id: id.clone(),
            });
        }
    };
    match e {
        TicketEvent::TicketAssigned {
            assignee, subject, ..
        } => to(
            vec![principal_user(&assignee)],
            None,
            "info",
            format!("Ticket assigned: {subject}"),
            format!("Ticket {id} is assigned to you."),
        ),
        TicketEvent::CommentAdded {
            comment,
            requester,
            assignee,
            subject,
        } => {
            if comment.public {
                let mut rs = vec![principal_customer(&requester)];
                rs.extend(assignee.as_deref().map(principal_user));
                to(
                    rs,
                    Some(actor_principal(&comment.author, &requester)),
                    "info",
                    format!("New comment on: {subject}"),
                    comment.body.chars().take(280).collect(),
                );
            }
        }
        TicketEvent::TicketStatusChanged {
            from,
            to: new,
            requester,
            assignee,
            subject,
            by,
            ..
        } => {
            let mut rs = vec![principal_customer(&requester)];
            rs.extend(assignee.as_deref().map(principal_user));
            to(
                rs,
                by.as_deref().map(|b| actor_principal(b, &requester)),
                "info",
                format!("Ticket {}: {subject}", new.as_str()),
                format!(
                    "Ticket {id} moved from {} to {}.",
                    from.as_str(),
                    new.as_str()
                ),
            );
        }
        TicketEvent::TicketCreated { .. } | TicketEvent::AttachmentAdded { .. } => {}
    }
    for d in out {
        deliver(conn, t, event, d).await?;
    }
    Ok(())
}

/// The principal of whoever acted (a comment's author): the requester when
/// it is the requester's own name, else a user.
fn actor_principal(actor: &str, requester: &str) -> String {
    if actor == requester {
        principal_customer(requester)
    } else {
        principal_user(actor)
    }
}

async fn inbox(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let e: InboxEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    match e {
        InboxEvent::ItemRead { item_id, .. } => {
            sqlx::query(&t.sql("UPDATE rm_inbox_items SET state = 'read' WHERE tenant = $1 AND id = $2 AND state = 'unread'"))
                .bind(&event.tenant)
                .bind(item_id)
                .execute(&mut *conn)
                .await?;
        }
        InboxEvent::ItemArchived { item_id, .. } => {
            sqlx::query(
                &t.sql(
                    "UPDATE rm_inbox_items SET state = 'archived' WHERE tenant = $1 AND id = $2",
                ),
            )
            .bind(&event.tenant)
            .bind(item_id)
            .execute(&mut *conn)
            .await?;
        }
        InboxEvent::Notified {
            recipient, notice, ..
        } => {
            deliver(
                conn,
                t,
                event,
                Delivery {
                    recipient,
                    severity: notice.severity.into(),
                    title: notice.title,
                    body: notice.body,
                    subject_type: notice.subject_type.into(),
                    subject_id: notice.subject_id,
                },
            )
            .await?;
        }
        InboxEvent::AllRead { recipient, .. } => {
            // Every item delivered before this event (earlier positions).
            sqlx::query(
                &t.sql("UPDATE rm_inbox_items SET state = 'read' WHERE tenant = $1 AND recipient = $2 AND state = 'unread' AND position < $3"),
            )
            .bind(&event.tenant)
            .bind(recipient)
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// One inbox item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub id: String,
    pub recipient: String,
    pub severity: String,
    pub title: String,
    pub body: String,
    pub subject_type: String,
    pub subject_id: String,
    pub state: String,
    pub created_at: String,
    pub position: i64,
}

const ITEM_COLUMNS: &str =
    "id, recipient, severity, title, body, subject_type, subject_id, state, created_at, position";

fn decode(r: &sqlx::any::AnyRow) -> Result<Item, DbError> {
    Ok(Item {
        id: r.try_get("id")?,
        recipient: r.try_get("recipient")?,
        severity: r.try_get("severity")?,
        title: r.try_get("title")?,
        body: r.try_get("body")?,
        subject_type: r.try_get("subject_type")?,
        subject_id: r.try_get("subject_id")?,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
        position: r.try_get("position")?,
    })
}

pub async fn get(db: &Db, tenant: &str, id: &str) -> Result<Option<Item>, DbError> {
    let row = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM rm_inbox_items WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&db.any)
    .await?;
    row.map(|r| decode(&r)).transpose()
}

/// A recipient's items, newest first, one page before `cursor` (a position),
/// and the recipient's unread count.
pub async fn list(
    db: &Db,
    tenant: &str,
    recipient: &str,
    state: Option<&str>,
    severity: Option<&str>,
    limit: i64,
    cursor: Option<i64>,
) -> Result<(Vec<Item>, Option<String>, i64), DbError> {
    let limit = limit.clamp(1, MAX_PAGE_LIMIT);
    let mut sql = format!("SELECT {ITEM_COLUMNS} FROM rm_inbox_items WHERE tenant = $1 AND recipient = $2 AND position < $3");
    let mut binds = Vec::new();
    for (col, v) in [("state", state), ("severity", severity)] {
        if let Some(v) = v {
            binds.push(v.to_string());
            sql.push_str(&format!(" AND {col} = ${}", binds.len() + 3));
        }
    }
    sql.push_str(&format!(" ORDER BY position DESC, id LIMIT {}", limit + 1));
    let mut q = sqlx::query(&sql)
        .bind(tenant)
        .bind(recipient)
        .bind(cursor.unwrap_or(i64::MAX));
    for b in binds {
        q = q.bind(b);
    }
    let mut items = q
        .fetch_all(&db.any)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| i.position.to_string())
    } else {
        None
    };
    let unread: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM rm_inbox_items WHERE tenant = $1 AND recipient = $2 AND state = 'unread'",
    )
    .bind(tenant)
    .bind(recipient)
    .fetch_one(&db.any)
    .await?;
    Ok((items, next, unread))
}
