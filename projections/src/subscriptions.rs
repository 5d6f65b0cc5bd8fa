//! Read model of subscriptions (`rm_subscriptions`): list by status and
//! customer, and detail; `period_end` is what the billing scheduler scans,
//! `trial_end` (set only while trialing) what the trial scheduler scans.
//! A row is the folded aggregate without its pending prorations.

use tally_aggregates::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;
use crate::time;

impl ProjectedState for Subscription {
    type Event = SubscriptionEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Subscription;
    const CONSUMER: &'static str = "subscriptions";
    const TABLE: &'static str = "rm_subscriptions";
    const FILTER_COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "plan_id",
        "status",
        "period_end",
        "trial_end",
    ];

    /// The row keeps no pending prorations: no query shows them (the
    /// renewal takes them from the aggregate into its event), and each
    /// prorated change made the row, its JSON and its write grow until the
    /// renewal.
    fn fold(&mut self, event: &SubscriptionEvent) {
        self.evolve(event);
        self.pending_prorations.clear();
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
