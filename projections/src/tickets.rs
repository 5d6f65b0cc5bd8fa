//! Read model of support tickets (`rm_tickets`): list by status, assignee,
//! requester and priority, and detail with the comment timeline.

use tally_aggregates::ticket::{Ticket, TicketEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;

impl ProjectedState for Ticket {
    type Event = TicketEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Ticket;
    const CONSUMER: &'static str = "tickets";
    const TABLE: &'static str = "rm_tickets";
    const FILTER_COLUMNS: &'static [&'static str] =
        &["assignee", "requester", "status", "priority"];

    fn fold(&mut self, event: &TicketEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![
            self.assignee.clone().unwrap_or_default(),
            self.requester.clone(),
            self.status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            self.priority
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        ]
    }
}
