//! Read model of subscriptions (`rm_subscriptions`): list by status and
//! customer, and detail; `period_end` is what the billing scheduler scans,
//! `trial_end` (set only while trialing) what the trial scheduler scans.

use tally_aggregates::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};

use crate::state::ProjectedState;
use crate::time;

impl ProjectedState for Subscription {
    type Event = SubscriptionEvent;
    const AGGREGATE: &'static str = "subscription";
    const CONSUMER: &'static str = "subscriptions";
    const TABLE: &'static str = "rm_subscriptions";
    const FILTER_COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "plan_id",
        "status",
        "period_end",
        "trial_end",
    ];

    fn fold(&mut self, event: &SubscriptionEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![
            self.customer_id.clone(),
            self.plan_id.clone(),
            self.status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            self.current_period
                .map(|p| time::to_text(p.end))
                .unwrap_or_default(),
            self.trial_end
                .filter(|_| self.status == Some(SubscriptionStatus::Trialing))
                .map(time::to_text)
                .unwrap_or_default(),
        ]
    }
}
