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
use tally_aggregates::AggregateKind;

use crate::bulk::{self, Cell};
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

/// One notification to deliver.
pub(crate) struct Delivery {
    recipient: String,
    severity: Cow<'static, str>,
    title: String,
    body: String,
    subject_type: Cow<'static, str>,
    subject_id: String,
}

/// The principal a notice to a subscription's customer goes to.
fn customer_recipient(customer_id: &str) -> String {
    format!("customer:{customer_id}")
}

/// A notice to a subscription's customer, addressed once it is known.
pub(crate) fn to_customer(mut notice: Delivery, customer_id: &str) -> Delivery {
    notice.recipient = customer_recipient(customer_id);
    notice
}

/// The item `event` delivers to `d`'s recipient, unread.
pub(crate) fn new_item(event: &StoredEvent, d: Delivery) -> Item {
    Item {
        id: item_id(&event.event_id, &d.recipient),
        recipient: d.recipient,
        severity: d.severity.into_owned(),
        title: d.title,
        body: d.body,
        subject_type: d.subject_type.into_owned(),
        subject_id: d.subject_id,
        state: UNREAD.to_string(),
        created_at: event.recorded_at.clone(),
        position: event.position,
    }
}

pub(crate) const UNREAD: &str = "unread";
pub(crate) const READ: &str = "read";
pub(crate) const ARCHIVED: &str = "archived";

/// The columns of `rm_inbox_items`, in the order of [`item_row`].
pub(crate) const ITEM_ROW_COLUMNS: [&str; 11] = [
    "tenant",
    "id",
    "recipient",
    "severity",
    "title",
    "body",
    "subject_type",
    "subject_id",
    "state",
    "created_at",
    "position",
];

/// The `rm_inbox_items` row of an item, in [`ITEM_ROW_COLUMNS`] order.
pub(crate) fn item_row(tenant: &str, item: Item) -> Vec<Cell> {
    vec![
        Cell::Text(tenant.to_string()),
        Cell::Text(item.id),
        Cell::Text(item.recipient),
        Cell::Text(item.severity),
        Cell::Text(item.title),
        Cell::Text(item.body),
        Cell::Text(item.subject_type),
        Cell::Text(item.subject_id),
        Cell::Text(item.state),
        Cell::Text(item.created_at),
        Cell::Int(item.position),
    ]
}

async fn deliver(
    conn: &mut AnyConnection,
    t: Tables,
    event: &StoredEvent,
    d: Delivery,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO rm_inbox_items ({}) VALUES {} ON CONFLICT (tenant, id) DO NOTHING",
        ITEM_ROW_COLUMNS.join(", "),
        crate::db::value_rows(1, ITEM_ROW_COLUMNS.len())
    );
    let sql = t.sql(&sql);
    let row = item_row(&event.tenant, new_item(event, d));
    let mut q = sqlx::query(&sql);
    for cell in &row {
        q = bulk::bind(q, cell);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// What one event does to the inbox (the live projector and the rebuild's
/// bulk fold both take it from [`effect`]).
pub(crate) enum Effect {
    Nothing,
    /// A subscription's customer, kept for the subscription's notices.
    Customer {
        subscription_id: String,
        customer_id: String,
    },
    /// A notice to the customer of a subscription (none when the
    /// subscription's customer is not known).
    ToCustomerOf {
        subscription_id: String,
        notice: Delivery,
    },
    Deliver(Vec<Delivery>),
    /// An item read (if unread).
    Read(String),
    Archive(String),
    /// Every unread item of a recipient delivered before the event.
    AllRead(String),
}

/// The effect of an event the projector handles.
pub(crate) fn effect(event: &StoredEvent) -> Result<Effect, ProjectionError> {
    match event.kind() {
        Some(AggregateKind::Subscription) => subscription(event),
        Some(AggregateKind::Invoice) => invoice(event),
        Some(AggregateKind::Ticket) => ticket(event),
        Some(AggregateKind::Inbox) => inbox(event),
        _ => Ok(Effect::Nothing),
    }
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
            event.kind(),
            Some(
                AggregateKind::Subscription
                    | AggregateKind::Invoice
                    | AggregateKind::Ticket
                    | AggregateKind::Inbox
            )
        )
    }

    fn bulk(&self) -> Option<Box<dyn crate::bulk::BulkFold>> {
        Some(Box::new(crate::bulk::InboxBulk::new()))
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        match effect(event)? {
            Effect::Nothing => {}
            Effect::Customer {
                subscription_id,
                customer_id,
            } => {
                sqlx::query(
                    &t.sql("INSERT INTO rm_inbox_customers (tenant, subscription_id, customer_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant, subscription_id) DO NOTHING"),
                )
                .bind(&event.tenant)
                .bind(subscription_id)
                .bind(customer_id)
                .execute(&mut *conn)
                .await?;
            }
            Effect::ToCustomerOf {
                subscription_id,
                notice,
            } => {
                let customer: Option<String> = sqlx::query_scalar(&t.sql(
                    "SELECT customer_id FROM rm_inbox_customers WHERE tenant = $1 AND subscription_id = $2",
                ))
                .bind(&event.tenant)
                .bind(&subscription_id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(customer) = customer {
                    deliver(conn, t, event, to_customer(notice, &customer)).await?;
                }
            }
            Effect::Deliver(deliveries) => {
                for d in deliveries {
                    deliver(conn, t, event, d).await?;
                }
            }
            Effect::Read(item_id) => {
                sqlx::query(&t.sql("UPDATE rm_inbox_items SET state = 'read' WHERE tenant = $1 AND id = $2 AND state = 'unread'"))
                    .bind(&event.tenant)
                    .bind(item_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Effect::Archive(item_id) => {
                sqlx::query(&t.sql(
                    "UPDATE rm_inbox_items SET state = 'archived' WHERE tenant = $1 AND id = $2",
                ))
                .bind(&event.tenant)
                .bind(item_id)
                .execute(&mut *conn)
                .await?;
            }
            Effect::AllRead(recipient) => {
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
}

/// An item's state once the reads and archivals that came after its
/// delivery are applied (the last position of each, since `item` was
/// written): the live projector's updates in one step. Archived wins
/// whatever the order; a read (one item or all of a recipient's) only
/// turns an unread item read.
pub(crate) fn settle(
    item: &mut Item,
    read: Option<i64>,
    all_read: Option<i64>,
    archived: Option<i64>,
) {
    let after = |at: Option<i64>| at.is_some_and(|p| p > item.position);
    if after(archived) {
        item.state = ARCHIVED.to_string();
    } else if item.state == UNREAD && (after(read) || after(all_read)) {
        item.state = READ.to_string();
    }
}

fn subscription(event: &StoredEvent) -> Result<Effect, ProjectionError> {
    let e: SubscriptionEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    let sub = event.resource_id().to_string();
    let (severity, title, body) = match e {
        SubscriptionEvent::SubscriptionCreated { customer_id, .. } => {
            return Ok(Effect::Customer {
                subscription_id: sub,
                customer_id,
            });
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
        | SubscriptionEvent::DiscountRemoved { .. } => return Ok(Effect::Nothing),
    };
    Ok(Effect::ToCustomerOf {
        subscription_id: sub.clone(),
        notice: Delivery {
            // Set once the subscription's customer is found.
            recipient: String::new(),
            severity: severity.into(),
            title,
            body,
            subject_type: "subscription".into(),
            subject_id: sub,
        },
    })
}

fn invoice(event: &StoredEvent) -> Result<Effect, ProjectionError> {
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
        | InvoiceEvent::CreditNoteIssued { .. } => return Ok(Effect::Nothing),
    };
    Ok(Effect::Deliver(vec![Delivery {
        recipient: customer_recipient(&customer),
        severity: "info".into(),
        title,
        body,
        subject_type: "invoice".into(),
        subject_id: id,
    }]))
}

fn ticket(event: &StoredEvent) -> Result<Effect, ProjectionError> {
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
    Ok(Effect::Deliver(out))
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

fn inbox(event: &StoredEvent) -> Result<Effect, ProjectionError> {
    let e: InboxEvent = event
        .decode()
        .map_err(|err| ProjectionError::decode(event, err))?;
    Ok(match e {
        InboxEvent::ItemRead { item_id, .. } => Effect::Read(item_id),
        InboxEvent::ItemArchived { item_id, .. } => Effect::Archive(item_id),
        InboxEvent::Notified {
            recipient, notice, ..
        } => Effect::Deliver(vec![Delivery {
            recipient,
            severity: notice.severity.into(),
            title: notice.title,
            body: notice.body,
            subject_type: notice.subject_type.into(),
            subject_id: notice.subject_id,
        }]),
        InboxEvent::AllRead { recipient, .. } => Effect::AllRead(recipient),
    })
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

pub(crate) const ITEM_COLUMNS: &str =
    "id, recipient, severity, title, body, subject_type, subject_id, state, created_at, position";

pub(crate) fn decode(r: &sqlx::any::AnyRow) -> Result<Item, DbError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(state: &str, position: i64) -> Item {
        Item {
            id: "ntf_1".into(),
            recipient: "customer:c".into(),
            severity: "info".into(),
            title: String::new(),
            body: String::new(),
            subject_type: "invoice".into(),
            subject_id: "inv_1".into(),
            state: state.into(),
            created_at: String::new(),
            position,
        }
    }

    fn settled(state: &str, read: Option<i64>, all: Option<i64>, archived: Option<i64>) -> String {
        let mut i = item(state, 10);
        settle(&mut i, read, all, archived);
        i.state
    }

    #[test]
    fn settling_applies_only_what_came_after_the_delivery() {
        assert_eq!(settled(UNREAD, None, None, None), UNREAD);
        // A read of the id before the item existed changed nothing.
        assert_eq!(settled(UNREAD, Some(9), Some(5), None), UNREAD);
        assert_eq!(settled(UNREAD, Some(11), None, None), READ);
        assert_eq!(settled(UNREAD, None, Some(11), None), READ);
        // Archived wins, in whatever order the two came.
        assert_eq!(settled(UNREAD, Some(12), None, Some(11)), ARCHIVED);
        assert_eq!(settled(READ, None, None, Some(11)), ARCHIVED);
        assert_eq!(settled(UNREAD, Some(12), None, Some(9)), READ);
        // Reads leave an archived item archived.
        assert_eq!(settled(ARCHIVED, Some(12), Some(12), None), ARCHIVED);
    }
}
