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
    info(title = "Tally", description = "Event-sourced ledger for SaaS billing: plans, subscriptions, customers, coupons, tax rates, usage, invoices and balances, tickets, inbox, audit."),
    paths(
        plans::create, plans::archive, plans::list, plans::get,
        subscriptions::create, subscriptions::activate, subscriptions::end_trial, subscriptions::change_plan, subscriptions::change_seats,
        subscriptions::suspend, subscriptions::resume, subscriptions::cancel, subscriptions::list,
        subscriptions::get, subscriptions::entitlements,
        subscriptions::apply_discount, subscriptions::remove_discount,
        customers::put, customers::list, customers::get,
        coupons::create, coupons::archive, coupons::list, coupons::get,
        tax_rates::create, tax_rates::archive, tax_rates::list, tax_rates::get,
        invoices::create, invoices::add_line, invoices::issue, invoices::pay, invoices::credit_note, invoices::void,
        invoices::mark_uncollectible, invoices::list, invoices::get, invoices::balance, invoices::journal,
        usage::report, usage::batch, usage::void, usage::list, usage::get, usage::summary,
        tickets::create, tickets::assign, tickets::comment, tickets::attach, tickets::transition, tickets::list, tickets::get,
        inbox::list, inbox::read, inbox::archive, inbox::read_all,
        audit::stream_events, audit::state_at, audit::feed, audit::digest,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::enable,
        webhooks::deliveries, webhooks::delivery, webhooks::retry,
        payments::configure, payments::list, payments::receive,
        keys::list, keys::revoke,
        admin::projections, admin::rebuild, admin::clock, admin::advance_clock,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&Bearer, &Problems, &PageItems)
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
/// commands. Every POST under `/v1` goes through the Idempotency-Key
/// middleware, so it declares that header and, in its 409, the two codes
/// that middleware answers with (`idempotency_key_in_flight`,
/// `idempotency_key_applied`). Written once here rather than on each handler.
struct Problems;

const PROBLEM_JSON: &str = "application/problem+json";

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::example::ExampleBuilder;
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{
            Content, ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type,
        };
        let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
        let is_problem = |c: &Content| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
        let example = |code: &str, detail: &str| {
            RefOr::T(
                ExampleBuilder::new()
                    .value(Some(serde_json::json!({
                        "type": format!("https://tally.dev/errors/{code}"),
                        "title": code,
                        "status": 409,
                        "detail": detail,
                        "code": code,
                    })))
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The inbound provider endpoint takes no API key and no
            // Idempotency-Key; it declares its own answers.
            let api = path.starts_with("/v1/") && !path.starts_with("/v1/inbound/");
            let names_resource = path.contains('{');
            for (method, op) in [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("put", item.put.as_mut()),
                ("delete", item.delete.as_mut()),
                ("patch", item.patch.as_mut()),
            ] {
                let Some(op) = op else { continue };
                let is_command = method != "get";
                let idempotent = api && method == "post";
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
                        ("401", "`unauthorized`: missing or unknown API key"),
                        ("403", "`forbidden`: the key's role does not allow this"),
                        (
                            "422",
                            "`validation_failed` (invalid input, with the fields in `errors`)",
                        ),
                        (
                            "429",
                            "`rate_limited`: too many requests for this API key (Retry-After)",
                        ),
                    ]);
                }
                if api && names_resource {
                    codes.push(("404", "`not_found`: no such resource for this tenant"));
                }
                if api && is_command {
                    codes.extend([
                        (
                            "412",
                            "`version_mismatch`: If-Match does not match the current version",
                        ),
                        ("413", "`payload_too_large`: request body too large"),
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
                // When to come back (seconds), on every 429 and 503.
                for status in ["429", "503"] {
                    if let Some(RefOr::T(r)) = op.responses.responses.get_mut(status) {
                        r.headers
                            .entry("Retry-After".to_string())
                            .or_insert_with(|| {
                                HeaderBuilder::new()
                                    .schema(
                                        ObjectBuilder::new()
                                            .schema_type(Type::Integer)
                                            .minimum(Some(0)),
                                    )
                                    .description(Some("Seconds to wait before trying again"))
                                    .build()
                            });
                    }
                }
                if api && is_command {
                    // Replaces a bare 409 that a handler declared: one
                    // response per status, so all its codes are told here.
                    let mut content = ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .examples_from_iter([
                            (
                                "invalid_transition",
                                example(
                                    "invalid_transition",
                                    "the state machine does not allow this command in this state",
                                ),
                            ),
                            (
                                "concurrent_modification",
                                example(
                                    "concurrent_modification",
                                    "the resource kept changing; try again",
                                ),
                            ),
                            (
                                "already_exists",
                                example("already_exists", "plan already exists"),
                            ),
                        ]);
                    let mut description = String::from(
                        "`invalid_transition` (the state machine does not allow this command now), `concurrent_modification` (retries exhausted), `already_exists` (a resource with that id or code exists)",
                    );
                    if idempotent {
                        description.push_str(", `idempotency_key_in_flight` (the first request with this Idempotency-Key is still running) or `idempotency_key_applied` (its first request took effect but its answer was lost: read the resource)");
                        content = content.examples_from_iter([
                            ("idempotency_key_in_flight", example("idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed")),
                            ("idempotency_key_applied", example("idempotency_key_applied", "the first request with this Idempotency-Key took effect but its answer was lost; read the resource")),
                        ]);
                    }
                    op.responses.responses.insert(
                        "409".to_string(),
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(PROBLEM_JSON, content.build())
                                .build(),
                        ),
                    );
                    // Commands answer with the position of their last event.
                    for (status, response) in op.responses.responses.iter_mut() {
                        if let (true, RefOr::T(r)) = (status.starts_with('2'), response) {
                            r.headers.entry("X-Log-Position".to_string()).or_insert_with(|| {
                                HeaderBuilder::new()
                                    .schema(ObjectBuilder::new().schema_type(Type::Integer).format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64))))
                                    .description(Some("The global log position of the command's last event (send it as X-Min-Position to read your write)"))
                                    .build()
                            });
                        }
                    }
                }
                // Reads of the read models wait for X-Min-Position; the
                // audit feed, keys and admin views read the log or the key
                // store directly and ignore it.
                let reads_projection = api
                    && method == "get"
                    && !["/v1/audit", "/v1/keys", "/v1/admin"]
                        .iter()
                        .any(|prefix| path.starts_with(prefix));
                if reads_projection {
                    let params = op.parameters.get_or_insert_with(Vec::new);
                    if !params
                        .iter()
                        .any(|p| p.name.eq_ignore_ascii_case("x-min-position"))
                    {
                        params.push(
                            ParameterBuilder::new()
                                .name("X-Min-Position")
                                .parameter_in(ParameterIn::Header)
                                .required(Required::False)
                                .description(Some("Wait up to 2 s for the read model to reach this log position (a command's X-Log-Position), else 503 `projection_lagging`"))
                                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64))).minimum(Some(0))))
                                .build(),
                        );
                    }
                }
                // Commands on one event-sourced resource run through the
                // dispatcher, which checks If-Match against its version.
                let versioned = idempotent
                    && ["plans", "subscriptions", "invoices", "usage", "tickets"]
                        .iter()
                        .any(|r| path.starts_with(&format!("/v1/{r}/{{id}}/")));
                if versioned {
                    let params = op.parameters.get_or_insert_with(Vec::new);
                    if !params
                        .iter()
                        .any(|p| p.name.eq_ignore_ascii_case("if-match"))
                    {
                        params.push(
                            ParameterBuilder::new()
                                .name("If-Match")
                                .parameter_in(ParameterIn::Header)
                                .required(Required::False)
                                .description(Some("`\"<version>\"` (the resource's ETag): the command runs only on that version, else 412 `version_mismatch`"))
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .build(),
                        );
                    }
                }
                if idempotent {
                    let params = op.parameters.get_or_insert_with(Vec::new);
                    if !params
                        .iter()
                        .any(|p| p.name.eq_ignore_ascii_case("idempotency-key"))
                    {
                        params.push(
                            ParameterBuilder::new()
                                .name("Idempotency-Key")
                                .parameter_in(ParameterIn::Header)
                                .required(Required::False)
                                .description(Some("A repeat with the same key and body returns the first response and changes nothing (kept at least 24 h); the same key with another body → 422 `idempotency_key_reused`"))
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255))))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// utoipa writes the items of a generic `ListPage<T>` inline, so a
/// generated client would get a `ListPageSubscriptionDtoDataItem` class
/// beside `SubscriptionDto`. Where the inline schema is exactly the named
/// component's, the items refer to it instead.
struct PageItems;

impl Modify for PageItems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Ok(mut doc) = serde_json::to_value(&*openapi) else {
            return;
        };
        let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(|s| s.as_object_mut())
        else {
            return;
        };
        let named = schemas.clone();
        let mut changed = false;
        for (name, schema) in schemas.iter_mut() {
            let Some(item) = name.strip_prefix("ListPage_") else {
                continue;
            };
            let Some(component) = named.get(item) else {
                continue;
            };
            if let Some(items) = schema.pointer_mut("/properties/data/items") {
                if items == component {
                    *items = serde_json::json!({"$ref": format!("#/components/schemas/{item}")});
                    changed = true;
                }
            }
        }
        if changed {
            if let Ok(rewritten) = serde_json::from_value(doc) {
                *openapi = rewritten;
            }
        }
    }
}

pub fn docs() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
