//! Read model of invoices (`rm_invoices`): the folded invoice with its lines
//! and payments, listed by status, customer and subscription. The collections
//! policy scans it for open invoices past their due date.

use tally_aggregates::invoice::{Invoice, InvoiceEvent};
use tally_aggregates::AggregateKind;

use crate::state::ProjectedState;
use crate::time;

impl ProjectedState for Invoice {
    type Event = InvoiceEvent;
    const AGGREGATE: AggregateKind = AggregateKind::Invoice;
    const CONSUMER: &'static str = "invoices";
    const TABLE: &'static str = "rm_invoices";
    const FILTER_COLUMNS: &'static [&'static str] = &[
        "customer_id",
        "subscription_id",
        "status",
        "number",
        "due_at",
    ];

    fn fold(&mut self, event: &InvoiceEvent) {
        self.evolve(event);
    }

    fn filter_values(&self) -> Vec<String> {
        vec![
            self.customer_id.clone(),
            self.subscription_id.clone().unwrap_or_default(),
            self.status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            self.number.clone().unwrap_or_default(),
            self.due_at.map(time::to_text).unwrap_or_default(),
        ]
    }
}
