//! Read model of the plan catalog (`rm_plans`): list and detail.

use tally_aggregates::plan::{Plan, PlanEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;

impl ProjectedState for Plan {
    type Event = PlanEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Plan;
    const CONSUMER: &'static str = "plans";
    const TABLE: &'static str = "rm_plans";
    const FILTER_COLUMNS: &'static [&'static str] = &["code", "status"];

    fn fold(&mut self, event: &PlanEvent) {
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
