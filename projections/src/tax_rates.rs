//! Read model of tax rates (`rm_tax_rates`): list (by status) and detail.

use tally_aggregates::tax::{TaxRate, TaxRateEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;

impl ProjectedState for TaxRate {
    type Event = TaxRateEvent;
    const AGGREGATE: AggregateKind = AggregateKind::TaxRate;
    const CONSUMER: &'static str = "tax_rates";
    const TABLE: &'static str = "rm_tax_rates";
    const FILTER_COLUMNS: &'static [&'static str] = &["status"];

    fn fold(&mut self, event: &TaxRateEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![self
            .status
            .map(|s| s.as_str().to_string())
            .unwrap_or_default()]
    }
}
