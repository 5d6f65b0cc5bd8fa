//! Read model of coupons (`rm_coupons`): list (by code and status) and
//! detail, with the redemption count.

use tally_aggregates::coupon::{Coupon, CouponEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;

impl ProjectedState for Coupon {
    type Event = CouponEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Coupon;
    const CONSUMER: &'static str = "coupons";
    const TABLE: &'static str = "rm_coupons";
    const FILTER_COLUMNS: &'static [&'static str] = &["code", "status"];

    fn fold(&mut self, event: &CouponEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![
            self.terms
                .as_ref()
                .map(|t| t.code.clone())
                .unwrap_or_default(),
            self.status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        ]
    }
}
