//! The OpenAPI document (`GET /openapi.json`) and the docs page (`GET
//! /docs`), served from files built into the binary (no CDN).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::*;
use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally", description = "Event-sourced ledger for SaaS billing: plans, subscriptions, usage, invoices and balances, tickets, inbox, audit."),
    paths(
        plans::create, plans::archive, plans::list, plans::get,
        subscriptions::create, subscriptions::activate, subscriptions::change_plan, subscriptions::change_seats,
        subscriptions::suspend, subscriptions::resume, subscriptions::cancel, subscriptions::list,
        subscriptions::get, subscriptions::entitlements,
        invoices::create, invoices::add_line, invoices::issue, invoices::pay, invoices::void,
        invoices::mark_uncollectible, invoices::list, invoices::get, invoices::balance, invoices::journal,
        usage::report, usage::batch, usage::void, usage::list, usage::get, usage::summary,
        tickets::create, tickets::assign, tickets::comment, tickets::attach, tickets::transition, tickets::list, tickets::get,
        inbox::list, inbox::read, inbox::archive, inbox::read_all,
        audit::stream_events, audit::state_at, audit::feed, audit::digest,
        admin::projections, admin::rebuild, admin::clock, admin::advance_clock,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn docs() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
