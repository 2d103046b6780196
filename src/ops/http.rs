//! The HTTP endpoint of `tally run`: liveness, readiness, Prometheus
//! metrics and a small status page, all read from the shared [`Telemetry`].
//!
//! | path | answers |
//! |---|---|
//! | `/healthz` | 200 while the run loop turns (or is still starting); 503 when it has not turned for [`LIVENESS_STALL`] |
//! | `/readyz` | 200 when connected, leader/standby known, a leader tailing (its start over), and lag ≤ `--ready-max-lag`; else 503 and the reason |
//! | `/metrics` | Prometheus text exposition |
//! | `/status.json` | what the status page draws |
//! | `/` | the status page (HTML, inline CSS and JS, no external assets) |
//!
//! The endpoint only reads: it never touches the database, so it answers
//! while the server is away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use tracing::info;

use crate::ops::exposition;
use crate::ops::telemetry::Telemetry;

/// A run loop that has not turned for this long is stuck (a turn includes
/// a finalization step, which can take minutes on a large population).
pub const LIVENESS_STALL: Duration = Duration::from_secs(600);
/// How often the events-per-second history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

const STATUS_PAGE: &str = include_str!("status_page.html");

/// `--http-addr`: where to listen, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

pub fn parse_addr(s: &str) -> Result<HttpAddr, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    s.trim().parse().map(|a| HttpAddr(Some(a))).map_err(|_| {
        format!("{s:?} is not an address: use HOST:PORT such as 127.0.0.1:9187, or off")
    })
}

/// The HTTP settings of `tally run` (defined with every other setting in
/// `cli::settings`).
#[derive(Debug, Clone)]
pub struct HttpArgs {
    /// Address of the HTTP endpoint (/healthz, /readyz, /metrics, status
    /// page), or `off`. Port 0 picks a free port (logged).
    pub http_addr: HttpAddr,
    /// Most stream lag, in seconds, at which /readyz still answers 200.
    pub ready_max_lag: u64,
}

#[derive(Clone)]
struct App {
    telemetry: Arc<Telemetry>,
    max_lag: Duration,
}

/// Binds the endpoint and serves it in the background (with the sampler of
/// the events-per-second history). `None` when `--http-addr off`. A port
/// that cannot be bound is an error: the caller exits 2.
pub async fn start(args: &HttpArgs, telemetry: Arc<Telemetry>) -> Result<Option<SocketAddr>> {
    let Some(addr) = args.http_addr.0 else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--http-addr; use off to disable)"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let app = App {
        telemetry: telemetry.clone(),
        max_lag: Duration::from_secs(args.ready_max_lag),
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(app)).await {
            tracing::error!(error = %e, "HTTP endpoint stopped.");
        }
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            every.tick().await;
            telemetry.sample_rate(Utc::now());
        }
    });
    info!(addr = %bound, "HTTP endpoint listening.");
    Ok(Some(bound))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .with_state(app)
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body + "\n",
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    match app.telemetry.since_last_turn(Utc::now()) {
        None => text(StatusCode::OK, "ok: starting".to_owned()),
        Some(s) if s > LIVENESS_STALL.as_secs_f64() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("run loop has not turned for {s:.0} s"),
        ),
        Some(_) => text(StatusCode::OK, "ok".to_owned()),
    }
}

async fn readyz(State(app): State<App>) -> Response {
    match app.telemetry.readiness(Utc::now(), app.max_lag) {
        Ok(()) => text(StatusCode::OK, "ready".to_owned()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [
            (header::CONTENT_TYPE, exposition::METRICS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        exposition::metrics(&app.telemetry, Utc::now()),
    )
        .into_response()
}

async fn status(State(app): State<App>) -> Response {
    let body = exposition::status(&app.telemetry, Utc::now(), app.max_lag).to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_off_disables() {
        assert_eq!(parse_addr("off"), Ok(HttpAddr(None)));
        assert_eq!(parse_addr("OFF"), Ok(HttpAddr(None)));
        assert_eq!(
            parse_addr("127.0.0.1:9187"),
            Ok(HttpAddr(Some("127.0.0.1:9187".parse().unwrap())))
        );
        assert!(parse_addr("localhost").unwrap_err().contains("HOST:PORT"));
    }
}
