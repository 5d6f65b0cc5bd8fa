//! Read model of customers (`rm_customers`): list (by `email`) and detail.

use tally_aggregates::customer::{Customer, CustomerEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;

impl ProjectedState for Customer {
    type Event = CustomerEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Customer;
    const CONSUMER: &'static str = "customers";
    const TABLE: &'static str = "rm_customers";
    const FILTER_COLUMNS: &'static [&'static str] = &["email"];

    fn fold(&mut self, event: &CustomerEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![self
            .details
            .as_ref()
            .and_then(|d| d.email.clone())
            .unwrap_or_default()]
    }
}
