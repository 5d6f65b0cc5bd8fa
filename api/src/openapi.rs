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
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::enable,
        webhooks::deliveries, webhooks::delivery, webhooks::retry,
        keys::list, keys::revoke,
        admin::projections, admin::rebuild, admin::clock, admin::advance_clock,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&Bearer, &Problems)
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

/// Every error is `application/problem+json` with the `Problem` schema, and
/// every operation documents the errors the conventions of API.md give it:
/// 401/403 (auth), 422 (bad input), 429 (rate limit), 503 (database away, a
/// read that waited for `X-Min-Position`, a request past its deadline, or too
/// many in flight), 404 where the path names a resource, 409/412/413 for
/// commands. Written once here rather than on each handler.
struct Problems;

const PROBLEM_JSON: &str = "application/problem+json";

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
        let is_problem = |c: &Content| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            let names_resource = path.contains('{');
            for (is_command, op) in [
                (false, item.get.as_mut()),
                (true, item.post.as_mut()),
                (true, item.put.as_mut()),
                (true, item.delete.as_mut()),
                (true, item.patch.as_mut()),
            ] {
                let Some(op) = op else { continue };
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = response {
                        if let Some(c) = r.content.shift_remove("application/json") {
                            let key = if is_problem(&c) {
                                PROBLEM_JSON
                            } else {
                                "application/json"
                            };
                            r.content.insert(key.to_string(), c);
                        }
                    }
                }
                let mut codes = vec![(
                    "503",
                    "Unavailable for now, with Retry-After: `unavailable` (the database is away), `projection_lagging` (the read model did not reach X-Min-Position in time), `timeout` (the request outlived the request timeout) or `overloaded` (too many requests in flight)",
                )];
                if api {
                    codes.extend([
                        ("401", "Missing or unknown API key"),
                        ("403", "The key's role does not allow this"),
                        ("422", "Invalid input"),
                        ("429", "Too many requests for this API key (Retry-After)"),
                    ]);
                }
                if api && names_resource {
                    codes.push(("404", "No such resource for this tenant"));
                }
                if api && is_command {
                    codes.extend([
                        ("409", "Invalid transition or concurrent modification"),
                        ("412", "If-Match does not match the current version"),
                        ("413", "Request body too large"),
                    ]);
                }
                for (code, description) in codes {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(description)
                                    .content(PROBLEM_JSON, problem())
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

pub fn docs() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
