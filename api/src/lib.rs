//! Tally's HTTP API: command, query, audit and admin endpoints over the write
//! side (`tally-commands`) and the read models (`tally-projections`), with
//! auth, idempotency, problem+json errors, OpenAPI, health and metrics. The
//! `tally` binary (`main.rs`) is a thin CLI over [`start`].

pub mod auth;
pub mod cli;
pub mod dto;
pub mod error;
pub mod extract;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod ratelimit;
pub mod routes;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tally_commands::nats::{NatsConfig, NatsPublisher};
use tally_commands::policies::billing::{BillingConfig, BillingPolicy};
use tally_commands::policies::collections;
use tally_commands::policies::quota::{self, QuotaPolicy};
use tally_commands::webhooks::{WebhookConfig, Webhooks};
use tally_commands::{keys, Clock, Dispatcher};
use tally_projections::runtime::RuntimeConfig;
use tally_projections::{Db, Runtime};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;

/// Shared state of every handler: one `Arc`, since axum clones it for every
/// handler and middleware of every request.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub db: Db,
    pub dispatcher: Dispatcher,
    pub runtime: Runtime,
    pub metrics: PrometheusHandle,
    pub keys: auth::KeyCache,
    pub billing: BillingConfig,
    pub webhooks: Webhooks,
    pub payments: tally_commands::payments::Payments,
    pub rate: ratelimit::RateLimiter,
    pub limits: limits::Limiter,
}

/// How often histogram samples are drained into their summaries.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // A histogram keeps every sample until it is drained into its
            // summary, which only a scrape or an upkeep does: unscraped, the
            // request-duration histogram alone grew by 8 bytes a request
            // (the server's peak RSS under bench/throughput.sh).
            // `PrometheusBuilder::install` runs this upkeep itself; a
            // recorder built by hand must.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            // Another recorder may already be installed (tests embedding us);
            // then our handle renders our own (empty) registry.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    use routes::*;
    let mut v1 = Router::new()
        .route("/v1/plans", post(plans::create).get(plans::list))
        .route("/v1/plans/{id}", get(plans::get))
        .route("/v1/plans/{id}/archive", post(plans::archive))
        .route(
            "/v1/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route("/v1/subscriptions/{id}", get(subscriptions::get))
        .route(
            "/v1/subscriptions/{id}/activate",
            post(subscriptions::activate),
        )
        .route(
            "/v1/subscriptions/{id}/end-trial",
            post(subscriptions::end_trial),
        )
        .route(
            "/v1/subscriptions/{id}/change-plan",
            post(subscriptions::change_plan),
        )
        .route(
            "/v1/subscriptions/{id}/change-seats",
            post(subscriptions::change_seats),
        )
        .route(
            "/v1/subscriptions/{id}/suspend",
            post(subscriptions::suspend),
        )
        .route("/v1/subscriptions/{id}/resume", post(subscriptions::resume))
        .route("/v1/subscriptions/{id}/cancel", post(subscriptions::cancel))
        .route(
            "/v1/subscriptions/{id}/entitlements",
            get(subscriptions::entitlements),
        )
        .route("/v1/tickets", post(tickets::create).get(tickets::list))
        .route("/v1/tickets/{id}", get(tickets::get))
        .route("/v1/tickets/{id}/assign", post(tickets::assign))
        .route("/v1/tickets/{id}/comments", post(tickets::comment))
        .route("/v1/tickets/{id}/attachments", post(tickets::attach))
        .route("/v1/tickets/{id}/transition", post(tickets::transition))
        .route("/v1/invoices", post(invoices::create).get(invoices::list))
        .route("/v1/invoices/{id}", get(invoices::get))
        .route("/v1/invoices/{id}/lines", post(invoices::add_line))
        .route("/v1/invoices/{id}/issue", post(invoices::issue))
        .route("/v1/invoices/{id}/payments", post(invoices::pay))
        .route(
            "/v1/invoices/{id}/credit-notes",
            post(invoices::credit_note),
        )
        .route("/v1/invoices/{id}/void", post(invoices::void))
        .route(
            "/v1/invoices/{id}/mark-uncollectible",
            post(invoices::mark_uncollectible),
        )
        .route(
            "/v1/tax-rates",
            get(tax_rates::list).post(tax_rates::create),
        )
        .route("/v1/tax-rates/{id}", get(tax_rates::get))
        .route("/v1/tax-rates/{id}/archive", post(tax_rates::archive))
        .route("/v1/coupons", get(coupons::list).post(coupons::create))
        .route("/v1/coupons/{id}", get(coupons::get))
        .route("/v1/coupons/{id}/archive", post(coupons::archive))
        .route(
            "/v1/subscriptions/{id}/discount",
            post(subscriptions::apply_discount).delete(subscriptions::remove_discount),
        )
        .route("/v1/customers", get(customers::list))
        .route(
            "/v1/customers/{customer_id}",
            get(customers::get).put(customers::put),
        )
        .route(
            "/v1/customers/{customer_id}/balance",
            get(invoices::balance),
        )
        .route(
            "/v1/customers/{customer_id}/journal",
            get(invoices::journal),
        )
        .route("/v1/inbox", get(inbox::list))
        .route("/v1/inbox/read-all", post(inbox::read_all))
        .route("/v1/inbox/{item_id}/read", post(inbox::read))
        .route("/v1/inbox/{item_id}/archive", post(inbox::archive))
        .route("/v1/usage", post(usage::report).get(usage::list))
        .route("/v1/usage/batch", post(usage::batch))
        .route("/v1/usage/summary", get(usage::summary))
        .route("/v1/usage/{id}", get(usage::get))
        .route("/v1/usage/{id}/void", post(usage::void))
        .route("/v1/audit/streams/{type}/{id}/state", get(audit::state_at))
        .route("/v1/audit/events", get(audit::feed))
        .route("/v1/audit/digest", get(audit::digest))
        .route(
            "/v1/audit/streams/{type}/{id}/events",
            get(audit::stream_events),
        )
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/enable", post(webhooks::enable))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/deliveries/{id}", get(webhooks::delivery))
        .route("/v1/webhooks/deliveries/{id}/retry", post(webhooks::retry))
        .route("/v1/payment-providers", get(payments::list))
        .route(
            "/v1/payment-providers/{provider}",
            axum::routing::put(payments::configure),
        )
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/admin/projections", get(admin::projections))
        .route("/v1/admin/projections/{name}/rebuild", post(admin::rebuild));
    if state.dispatcher.clock().is_manual() {
        v1 = v1
            .route("/v1/admin/clock", get(admin::clock))
            .route("/v1/admin/clock/advance", post(admin::advance_clock));
    }
    let v1 = v1
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::idempotency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // No API key: the token names the configuration, the signature the sender.
        .route("/v1/inbound/{provider}/{token}", post(payments::receive))
        .merge(openapi::docs())
        .merge(v1)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::limit,
        ))
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// How the server is started.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub clock: Clock,
    pub runtime: RuntimeConfig,
    pub billing: BillingConfig,
    /// NATS JetStream publishing of integration events; off when `None`.
    pub nats: Option<NatsConfig>,
    /// Requests per second per API key.
    pub rate_limit: ratelimit::RateLimit,
    /// Request deadline and the cap on requests in flight.
    pub limits: limits::Limits,
    /// PostgreSQL connections the process opens at most (`--db-max-connections`).
    pub db_max_connections: u32,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The admin key created on first start (no keys yet), shown once.
    pub bootstrap_key: Option<String>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Graceful shutdown: stop accepting, finish in-flight requests, stop the
    /// consumers (their open batch rolls back), close the pools.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await??;
        self.state.webhooks.stop().await;
        self.state.runtime.stop().await;
        self.state.db.close().await;
        Ok(())
    }

    /// Waits until the server stops (after a shutdown signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await??;
        self.state.webhooks.stop().await;
        self.state.runtime.stop().await;
        self.state.db.close().await;
        Ok(())
    }

    pub fn shutdown_signal(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// How often the billing scheduler renews due subscriptions and collections runs.
const BILLING_EVERY: Duration = Duration::from_millis(250);

/// How often the quota policy looks for subscriptions whose window has ended.
const QUOTA_RESUME_EVERY: Duration = Duration::from_millis(250);

/// How often expired Idempotency-Key records are deleted.
const IDEMPOTENCY_PURGE_EVERY: Duration = Duration::from_secs(3600);

async fn purge_idempotency_keys(db: Db, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = tally_commands::idempotency::purge(&db).await {
            tracing::warn!(error = %e, "idempotency key purge failed");
        }
        if tokio::time::timeout(IDEMPOTENCY_PURGE_EVERY, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// Connects, migrates, bootstraps the first key, starts the consumers and
/// serves on `listener`.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Server> {
    start_with_webhooks(config, WebhookConfig::from_env()?, listener).await
}

/// [`start`] with webhook settings given rather than read from the
/// environment (`TALLY_WEBHOOK_ALLOWED_HOSTS`, `TALLY_SECRET_KEY`, …).
pub async fn start_with_webhooks(
    config: Config,
    webhook_config: WebhookConfig,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let db = Db::connect_limited(&config.database_url, config.db_max_connections).await?;
    db.migrate().await?;
    let bootstrap_key = if keys::count(&db).await? == 0 {
        let (_, secret) = keys::create(&db, "default", keys::Role::Admin).await?;
        Some(secret)
    } else {
        None
    };
    let head = tally_projections::EventLog::new(db.clone()).head().await?;
    db.announce(head);
    let dispatcher = Dispatcher::new(db.clone(), config.clock.clone());
    let webhooks = Webhooks::new(db.clone(), config.clock.clone(), webhook_config).await?;
    let payments =
        tally_commands::payments::Payments::new(db.clone(), dispatcher.clone(), webhooks.clone())
            .map_err(anyhow::Error::msg)?;
    let mut consumers = tally_projections::all_projectors();
    consumers.push(std::sync::Arc::new(QuotaPolicy::new(dispatcher.clone())));
    consumers.push(std::sync::Arc::new(BillingPolicy::new(
        dispatcher.clone(),
        config.billing.clone(),
    )));
    if let Some(nats) = &config.nats {
        consumers.push(std::sync::Arc::new(NatsPublisher::new(nats.clone())));
    }
    // Webhooks: one delivery row per published event and matching endpoint.
    consumers.push(webhooks.fanout());
    // Tamper evidence: chains every event as the log reader delivers it.
    consumers.push(tally_projections::seal::sealer());
    let runtime = Runtime::new(db.clone(), consumers, config.runtime.clone());
    runtime.start();
    let state = AppState(std::sync::Arc::new(Shared {
        dispatcher,
        db,
        runtime,
        metrics: metrics_handle(),
        keys: auth::KeyCache::default(),
        billing: config.billing.clone(),
        webhooks,
        payments,
        rate: ratelimit::RateLimiter::new(config.rate_limit),
        limits: limits::Limiter::new(config.limits),
    }));
    state.webhooks.start_worker();
    let app = router(state.clone());
    let addr = listener.local_addr()?;
    let (shutdown, mut rx) = watch::channel(false);
    tokio::spawn(auth::watch_revocations(
        state.keys.clone(),
        state.db.clone(),
        shutdown.subscribe(),
    ));
    tokio::spawn(purge_idempotency_keys(
        state.db.clone(),
        shutdown.subscribe(),
    ));
    tokio::spawn(collections::run_scheduler(
        state.dispatcher.clone(),
        state.billing.clone(),
        BILLING_EVERY,
        shutdown.subscribe(),
    ));
    tokio::spawn(quota::run_resume_scheduler(
        state.dispatcher.clone(),
        QUOTA_RESUME_EVERY,
        shutdown.subscribe(),
    ));
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok(Server {
        addr,
        state,
        bootstrap_key,
        shutdown,
        task,
    })
}
