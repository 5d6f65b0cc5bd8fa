//! The published language: which events leave Tally, under which topic and
//! with which payload, and the envelope every outbound channel (webhooks,
//! NATS) sends. The mapping is defined and tested here so that a renamed
//! topic is a visible change.

use serde_json::{json, Value};
use tally_aggregates::subscription::{SubscriptionEvent, SuspendReason};
use tally_projections::StoredEvent;

/// An integration event: the envelope's topic and `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    pub topic: &'static str,
    pub data: Value,
}

pub const SUBSCRIPTION_SUSPENDED: &str = "billing.subscriptions.v1.subscription-suspended";

/// The integration event for a stored event, if it is published.
pub fn integration_event(e: &StoredEvent) -> Option<Integration> {
    if e.aggregate_type != "subscription" {
        return None;
    }
    match e.decode::<SubscriptionEvent>().ok()? {
        SubscriptionEvent::SubscriptionSuspended {
            reason,
            suspended_at,
        } => {
            let (reason, meter) = match reason {
                SuspendReason::Manual { .. } => ("manual", None),
                SuspendReason::NonPayment => ("non_payment", None),
                SuspendReason::QuotaExceeded { meter } => ("quota_exceeded", Some(meter)),
            };
            Some(Integration {
                topic: SUBSCRIPTION_SUSPENDED,
                data: json!({
                    "tenant_id": e.tenant,
                    "subscription_id": e.resource_id(),
                    "reason": reason,
                    "meter": meter,
                    "suspended_at": suspended_at,
                }),
            })
        }
        _ => None,
    }
}

/// The envelope every outbound channel (webhooks, NATS) sends: `id` is the
/// event id, so a redelivery carries the same id and receivers can dedupe.
pub fn envelope(e: &StoredEvent, i: &Integration) -> Value {
    let name = i.topic.rsplit('.').next().unwrap_or(i.topic);
    let version = i
        .topic
        .split('.')
        .find_map(|part| part.strip_prefix('v')?.parse::<u32>().ok())
        .unwrap_or(1);
    json!({
        "id": e.event_id,
        "type": name,
        "topic": i.topic,
        "tenant_id": e.tenant,
        "subject": {"type": e.aggregate_type, "id": e.resource_id()},
        "created_at": e.recorded_at,
        "schema_version": version,
        "correlation_id": e.metadata.get("correlation_id"),
        "causation_id": e.metadata.get("causation_id"),
        "data": i.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn stored(payload: Value) -> StoredEvent {
        StoredEvent {
            position: 7,
            event_id: "evt".into(),
            tenant: "acme".into(),
            aggregate_type: "subscription".into(),
            aggregate_id: "acme:sub_1".into(),
            sequence: 3,
            event_type: "SubscriptionSuspended".into(),
            event_version: "1.0".into(),
            payload,
            metadata: HashMap::new(),
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn quota_suspension_maps_to_the_suspended_topic_with_the_meter() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::QuotaExceeded {
                meter: "api_calls".into(),
            },
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let i = integration_event(&stored(serde_json::to_value(&e).unwrap())).unwrap();
        assert_eq!(i.topic, "billing.subscriptions.v1.subscription-suspended");
        assert_eq!(i.data["tenant_id"], "acme");
        assert_eq!(i.data["subscription_id"], "sub_1");
        assert_eq!(i.data["reason"], "quota_exceeded");
        assert_eq!(i.data["meter"], "api_calls");
    }

    #[test]
    fn envelope_carries_the_event_id_subject_and_version() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::NonPayment,
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let mut stored = stored(serde_json::to_value(&e).unwrap());
        stored
            .metadata
            .insert("correlation_id".into(), "corr-1".into());
        let i = integration_event(&stored).unwrap();
        let env = envelope(&stored, &i);
        assert_eq!(env["id"], "evt");
        assert_eq!(env["type"], "subscription-suspended");
        assert_eq!(env["topic"], SUBSCRIPTION_SUSPENDED);
        assert_eq!(env["tenant_id"], "acme");
        assert_eq!(
            env["subject"],
            json!({"type": "subscription", "id": "sub_1"})
        );
        assert_eq!(env["schema_version"], 1);
        assert_eq!(env["correlation_id"], "corr-1");
        assert_eq!(env["causation_id"], Value::Null);
        assert_eq!(env["created_at"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(env["data"]["reason"], "non_payment");
    }

    #[test]
    fn manual_suspension_has_no_meter() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::Manual {
                note: Some("x".into()),
            },
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let i = integration_event(&stored(serde_json::to_value(&e).unwrap())).unwrap();
        assert_eq!(i.data["reason"], "manual");
        assert_eq!(i.data["meter"], Value::Null);
    }
}
