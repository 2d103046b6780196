//! The command line: flags (each with a `TALLY_*` fallback), validation into
//! an immutable configuration, and the commands' output.
//!
//! Exit status ([`exit_status`]): 0 success; 1 reconcile found
//! differences; 2 a usage or configuration error (bad flag, unknown zone,
//! malformed URI); 3 a runtime failure (an unreachable server, …).
//!
//! May use: every layer; the binary's edge, where errors become exit
//! statuses.

pub mod config;
pub mod settings;

use std::process::ExitCode;

use anyhow::{bail, Result};
use bson::Bson;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::batch::backfill::backfill;
use crate::batch::finalize;
use crate::batch::reconcile::{self, ReconcileReport};
use crate::batch::scan::Range;
use crate::batch::seed::{self, SeedOptions};
use crate::core::calendar::Calendar;
use crate::core::reports::Kind;
use crate::core::schedule::Schedule;
use crate::mongo;
use crate::mongo::connect;
use crate::mongo::lease::{self, LeaseInfo};
use crate::mongo::state;
use crate::ops::http::HttpArgs;
use crate::ops::logging::LogFormat;
use crate::plan::compare::Difference;
use crate::service::{self, Clock, RunOptions};

use self::settings::{GlobalFlags, RunFlags, Settings, GLOBAL_HEADING};

/// The exit status of a command that failed with `e`: 2 for a
/// configuration or usage error ([`crate::Kind::Config`]: no restart can fix it),
/// 3 for a runtime failure, so that supervisors restart those and only
/// those (README, "Exit status").
pub fn exit_status(e: &anyhow::Error) -> u8 {
    let config = e
        .chain()
        .filter_map(|c| c.downcast_ref::<crate::Error>())
        .any(|e| e.kind() == crate::Kind::Config);
    if config {
        2
    } else {
        3
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Keeps coin's financial reports right, all the time."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
    /// Every setting, typed, and with its source for `tally config`; filled
    /// by `config::parse_cli`.
    #[arg(skip)]
    pub settings: Settings,
}

/// The global arguments: the global settings' flags, and two that are not
/// settings (the file itself, and the clock of tests).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Configuration file (TOML); flags and TALLY_* variables override it.
    #[arg(
        long,
        global = true,
        env = "TALLY_CONFIG",
        value_name = "FILE",
        help_heading = GLOBAL_HEADING
    )]
    pub config: Option<std::path::PathBuf>,
    /// Pretend the current time is this RFC 3339 instant (tests, replays).
    #[arg(long, global = true, env = "TALLY_NOW", hide = true, value_parser = parse_instant)]
    pub now: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub flags: GlobalFlags,
    /// `settings.log_format`, here for the binary, which sets up logging
    /// from it before anything else.
    #[arg(skip)]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create indexes, enable change-stream pre-images; safe to repeat.
    Init(InitArgs),
    /// Write a synthetic coin-shaped dataset.
    Seed(SeedArgs),
    /// Compute and write every report document of a date range.
    Backfill(BackfillArgs),
    /// Recompute a date range and compare it with the stored documents.
    Reconcile(ReconcileArgs),
    /// Follow the change streams and keep every document current.
    Run(RunArgs),
    /// Run one finalization step now (the old jobs' manual triggers).
    Finalize(FinalizeArgs),
    /// Checkpoint age, last event covered, finalizations, rejects.
    Status(StatusArgs),
    /// Print the effective configuration (TOML, secrets redacted, sources).
    Config(ConfigArgs),
}

/// `tally run`'s flags: its settings (`cli::settings`, scope `Run`), read
/// from `cli.settings`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: RunFlags,
}

/// `tally config` takes the run flags too, so that it shows what `tally
/// run` would use with the same command line and environment.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub flags: RunFlags,
}

#[derive(Args, Debug)]
pub struct FinalizeArgs {
    /// reports, snapshots or monthly.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Kind,
    /// The day (YYYY-MM-DD); for monthly, any day of the month (or YYYY-MM).
    #[arg(long, value_parser = parse_day_or_month)]
    pub date: NaiveDate,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Also create {user_id: 1, date: 1} on `transactions` and {user_id: 1}
    /// on `pockets`, which the scans query by.
    #[arg(long)]
    pub create_source_index: bool,
    /// Do not try to enable change-stream pre-images on `transactions`.
    #[arg(long)]
    pub no_pre_images: bool,
}

#[derive(Args, Debug)]
pub struct RangeArgs {
    /// First day, YYYY-MM-DD, in the reporting time zone.
    #[arg(long, value_parser = parse_date)]
    pub from: NaiveDate,
    /// Last day (included), YYYY-MM-DD.
    #[arg(long, value_parser = parse_date)]
    pub to: NaiveDate,
    /// Kinds of document: reports, snapshots, monthly (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "reports,snapshots,monthly", value_parser = parse_kind)]
    pub kinds: Vec<Kind>,
}

impl RangeArgs {
    fn range(&self) -> Result<Range> {
        if self.from > self.to {
            return Err(crate::Error::config(format!(
                "--from {} is after --to {}: give the earlier date first",
                self.from, self.to
            ))
            .into());
        }
        let mut kinds = self.kinds.clone();
        kinds.sort();
        kinds.dedup();
        Ok(Range {
            from: self.from,
            to: self.to,
            kinds,
        })
    }
}

#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub range: RangeArgs,
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Rewrite exactly the differing, missing and surplus documents.
    #[arg(long)]
    pub repair: bool,
    /// Print a machine-readable JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Most difference lines printed (the JSON report lists all).
    #[arg(long, default_value_t = 50)]
    pub max_lines: usize,
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    #[arg(long, default_value_t = 40)]
    pub transactions_per_user: usize,
    /// First day of the data (default: 60 days before today).
    #[arg(long, value_parser = parse_date)]
    pub from: Option<NaiveDate>,
    /// Last day of the data (default: today).
    #[arg(long, value_parser = parse_date)]
    pub to: Option<NaiveDate>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the final state in bulk instead of the API's write pattern.
    #[arg(long)]
    pub bulk: bool,
    /// Then keep writing this many transactions per second (today's date,
    /// the API's two writes) until interrupted: a demo's live trickle.
    #[arg(long, value_name = "PER_SECOND")]
    pub trickle: Option<f64>,
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date: use YYYY-MM-DD"))
}

fn parse_day_or_month(s: &str) -> Result<NaiveDate, String> {
    parse_date(s).or_else(|_| {
        parse_date(&format!("{s}-01"))
            .map_err(|_| format!("{s:?} is not a date: use YYYY-MM-DD or YYYY-MM"))
    })
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?} is not an RFC 3339 instant such as 2026-01-31T23:59:00Z"))
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_cli_name(s.trim())
        .ok_or_else(|| format!("unknown kind {s:?}: use reports, snapshots or monthly"))
}

/// Runs the parsed command; errors are the caller's to print (exit status
/// by [`exit_status`]).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.settings;
    let now = cli.global.now.unwrap_or_else(Utc::now);
    let cal = g.timezone;
    match &cli.command {
        Command::Config(_) => {
            print!("{}", cli.settings.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(a) => {
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            for line in connect::init(&db, a.create_source_index, !a.no_pre_images).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed(a) => {
            let to = a.to.unwrap_or_else(|| cal.day_of(now));
            let from = a.from.unwrap_or(to - chrono::Days::new(59));
            if from > to {
                return Err(crate::Error::config(format!(
                    "--from {from} is after --to {to}: give the earlier date first"
                ))
                .into());
            }
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            let opts = SeedOptions {
                users: a.users,
                transactions_per_user: a.transactions_per_user,
                from,
                to,
                seed: a.seed,
                bulk: a.bulk,
            };
            let s = seed::seed(&db, &cal, &opts).await?;
            println!(
                "seeded {} users, {} pockets, {} live transactions, {} soft-deleted, {} invalid, {from}..{to}",
                s.users, s.pockets, s.transactions, s.soft_deleted, s.invalid
            );
            if let Some(rate) = a.trickle.filter(|r| *r > 0.0) {
                println!("writing {rate} transactions per second; Ctrl-C to stop");
                let clock = cli.global.now.map_or_else(Clock::real, Clock::starting_at);
                let n = seed::trickle(&db, rate, a.seed, move || clock.now(), shutdown_signal())
                    .await?;
                println!("wrote {n} transactions");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill(a) => {
            let range = a.range.range()?;
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            let s = backfill(&db, cal, range.clone(), now, !g.quiet).await?;
            let rejected: u64 = s.rejects.values().sum();
            tracing::info!(
                users = s.users,
                transactions = s.transactions_read,
                documents = s.documents,
                inserted = s.writes.inserted,
                updated = s.writes.updated,
                deleted = s.writes.deleted,
                rejected,
                elapsed_ms = s.elapsed.as_millis() as u64,
                "Backfill done."
            );
            println!(
                "backfill {}..{} ({}): {} users, {} transactions read, {} documents; \
                 {} inserted, {} updated, {} deleted, {} unchanged; {} invalid source documents; \
                 {:.2}s ({:.2}s waiting for writes)",
                range.from,
                range.to,
                cal.name(),
                s.users,
                s.transactions_read,
                s.documents,
                s.writes.inserted,
                s.writes.updated,
                s.writes.deleted,
                s.documents
                    .saturating_sub(s.writes.inserted + s.writes.updated),
                rejected,
                s.elapsed.as_secs_f64(),
                s.writes.server_time.as_secs_f64(),
            );
            if s.writes.conflicts + s.writes.errors > 0 {
                bail!(
                    "{} writes lost a race with another writer and {} failed; run backfill again",
                    s.writes.conflicts,
                    s.writes.errors
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(_) => {
            // First: a SIGTERM from here on is a clean stop.
            let signal = shutdown_signal();
            crate::mongo::inject::init()?;
            let telemetry = std::sync::Arc::new(crate::ops::telemetry::Telemetry::new());
            tracing::info!(version = env!("CARGO_PKG_VERSION"), uri = %connect::redact_uri(&g.mongodb_uri), database = %g.database, time_zone = cal.name(), "Starting tally run.");
            let http = HttpArgs {
                http_addr: g.http_addr,
                ready_max_lag: g.ready_max_lag,
            };
            crate::ops::http::start(&http, telemetry.clone()).await?;
            let on_command = g.command_stats.then(|| {
                let t = telemetry.clone();
                let told: connect::OnCommand =
                    std::sync::Arc::new(move |command, collection, took| {
                        t.command(command, collection, took)
                    });
                told
            });
            let db = connect::connect_observed(&g.mongodb_uri, &g.database, on_command).await?;
            let mut opts = RunOptions::new(cal);
            opts.telemetry = telemetry;
            opts.schedule = Schedule {
                report_at: g.daily_report_at,
                snapshot_at: g.snapshot_at,
                monthly_at: g.monthly_at,
            };
            opts.clock = cli.global.now.map_or_else(Clock::real, Clock::starting_at);
            opts.initial_days = g.initial_days;
            opts.settle = std::time::Duration::from_secs(g.settle_seconds);
            opts.pre_images = !g.no_pre_images;
            opts.lease_ttl = std::time::Duration::from_secs(g.lease_ttl_seconds);
            opts.give_up_after = std::time::Duration::from_secs(g.give_up_after_seconds);
            let shutdown = async {
                signal.await;
                tracing::info!("Shutdown requested: flushing and checkpointing.");
            };
            service::run(db, opts, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Finalize(a) => {
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            let period = if a.kind == Kind::Monthly {
                crate::core::calendar::first_of_month(a.date)
            } else {
                a.date
            };
            let owner = format!("manual-{}", std::process::id());
            state::claim(
                &db,
                a.kind.cli_name(),
                period,
                &owner,
                now,
                chrono::Duration::zero(),
                None,
            )
            .await?;
            // Year-to-date baselines come from documents only where tally run keeps them.
            let trusted = state::load_checkpoint(&db)
                .await?
                .managed_from
                .unwrap_or(NaiveDate::MAX);
            let n = finalize::finalize(&db, cal, a.kind, period, now, trusted, None).await?;
            state::finish(&db, a.kind.cli_name(), period, n, Utc::now(), None).await?;
            println!(
                "finalized {} {period}: {n} documents written",
                a.kind.cli_name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) => {
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            let c = state::load_checkpoint(&db).await?;
            let lease = lease::read(&db).await?;
            let rejects = db
                .collection::<bson::Document>(mongo::REJECTS)
                .count_documents(bson::doc! {})
                .await?;
            let mut finals = serde_json::Map::new();
            for kind in Kind::ALL {
                let last = state::last_finalized(&db, kind.cli_name()).await?;
                finals.insert(
                    kind.cli_name().to_owned(),
                    last.map_or(Value::Null, |(p, at)| json!({ "period": p.to_string(), "finished_at": at.to_rfc3339() })),
                );
            }
            let age = c
                .updated_at
                .map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
            let behind = c
                .last_event_at
                .map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
            let report = json!({
                "started": c.resume_token.is_some() || c.start_at.is_some(),
                "checkpoint_age_seconds": age,
                "last_event_covered_at": c.last_event_at.map(|t| t.to_rfc3339()),
                "seconds_since_last_event_covered": behind,
                "pending_drift_users": c.pending.len(),
                "managed_from": c.managed_from.map(|d| d.to_string()),
                "last_finalization": finals,
                "rejects": rejects,
                "lease": lease_json(lease.as_ref(), Utc::now()),
            });
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "checkpoint age:        {}",
                    age.map_or("never written".to_owned(), |s| format!("{s:.1} s"))
                );
                println!(
                    "last event covered:    {}",
                    c.last_event_at.map_or("none".to_owned(), |t| format!(
                        "{} ({:.1} s ago)",
                        t.to_rfc3339(),
                        behind.unwrap_or(0.0)
                    ))
                );
                println!("pending drift users:   {}", c.pending.len());
                for (k, v) in &finals {
                    println!(
                        "last {k:<10} final:  {}",
                        v.get("period").and_then(Value::as_str).unwrap_or("never")
                    );
                }
                println!("rejected documents:    {rejects}");
                println!(
                    "leader lease:          {}",
                    lease_line(lease.as_ref(), Utc::now())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile(a) => {
            let range = a.range.range()?;
            let db = connect::connect(&g.mongodb_uri, &g.database).await?;
            let report =
                reconcile::reconcile(&db, cal, range.clone(), now, a.repair, !g.quiet && !a.json)
                    .await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json_report(&range, &cal, &report))?
                );
            } else {
                print_report(&range, &cal, &report, a.max_lines);
            }
            // Differences found exit 1 even when repaired: something was wrong.
            Ok(if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The lease for `status --json`; seconds against the real clock, since
/// the server computes the expiry.
fn lease_json(lease: Option<&LeaseInfo>, now: DateTime<Utc>) -> Value {
    let Some(l) = lease else { return Value::Null };
    let left = l
        .expires_at
        .map(|t| (t - now).num_milliseconds() as f64 / 1000.0);
    json!({
        "owner": l.owner,
        "token": l.token,
        "expires_at": l.expires_at.map(|t| t.to_rfc3339()),
        "expires_in_seconds": left,
        "held": !l.released && left.is_some_and(|s| s > 0.0),
    })
}

/// The lease for `status`: its owner and when it expires.
fn lease_line(lease: Option<&LeaseInfo>, now: DateTime<Utc>) -> String {
    let Some(l) = lease else {
        return "never taken (no tally run yet)".to_owned();
    };
    let owner = l.owner.as_deref().unwrap_or("?");
    match l.expires_at {
        _ if l.released => format!("free (released by {owner}, token {})", l.token),
        Some(t) if t > now => format!(
            "held by {owner} (token {}), expires {} (in {:.1} s)",
            l.token,
            t.to_rfc3339(),
            (t - now).num_milliseconds() as f64 / 1000.0
        ),
        Some(t) => format!(
            "free (expired {:.1} s ago, last held by {owner}, token {})",
            (now - t).num_milliseconds() as f64 / 1000.0,
            l.token
        ),
        None => format!("held by {owner} (token {}), no expiry", l.token),
    }
}

/// Catches SIGTERM and SIGINT from this call on, and returns what completes
/// on either. The handlers are installed here, not when the future is first
/// polled: `tally run` polls it only once connected and serving HTTP, and a
/// SIGTERM before that took the default action and killed the process
/// (exit by signal 15, not 0; tests/faults.rs, `sigterm_to_an_instance_...`,
/// seed 626105).
///
/// It logs nothing: the caller says what a stop does. `scripts/run --demo`
/// starts `tally seed --trickle` in the background of `tally run`, in the
/// same process group, so one Ctrl-C reaches both; when this logged, that
/// Ctrl-C printed "Shutdown requested: flushing and checkpointing." twice,
/// once from the seeder.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn difference_name(d: &Difference) -> &'static str {
    match d {
        Difference::Missing => "missing",
        Difference::Surplus => "surplus",
        Difference::Fields(_) | Difference::Content => "differs",
    }
}

fn show(v: &Option<Bson>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(Bson::Decimal128(d)) => d.to_string(),
        Some(Bson::DateTime(d)) => d.try_to_rfc3339_string().unwrap_or_else(|_| d.to_string()),
        Some(b) => b.to_string(),
    }
}

fn print_report(range: &Range, cal: &Calendar, r: &ReconcileReport, max_lines: usize) {
    println!(
        "reconcile {}..{} ({}): {} users, {} documents expected",
        range.from,
        range.to,
        cal.name(),
        r.users,
        r.documents
    );
    for kind in &range.kinds {
        println!("  {:<30} {} differing", kind.collection(), r.count(*kind));
    }
    println!(
        "  stale labels: {} documents (information only)",
        r.stale_labels.len()
    );
    let drift_users = r.users_with_drift();
    println!(
        "  users with balance drift: {} (information only)",
        drift_users.len()
    );
    let rejected: u64 = r.rejects.values().sum();
    println!("  invalid source documents: {rejected}");
    let mut lines = 0;
    for c in r.differences.iter().chain(&r.stale_labels) {
        let head = format!(
            "{} user={} period={}",
            c.kind.collection(),
            c.user.to_hex(),
            c.period
        );
        match &c.difference {
            Difference::Fields(fields) => {
                for f in fields {
                    if lines < max_lines {
                        let tag = if f.label_only {
                            "stale label"
                        } else {
                            "differs"
                        };
                        println!(
                            "{tag}: {head} field={} expected={} stored={}",
                            f.path,
                            show(&f.expected),
                            show(&f.stored)
                        );
                    }
                    lines += 1;
                }
            }
            other => {
                if lines < max_lines {
                    println!("{}: {head}", difference_name(other));
                }
                lines += 1;
            }
        }
    }
    if lines > max_lines {
        println!("… {} more lines (use --json for all)", lines - max_lines);
    }
    for d in r.drifts.iter().take(max_lines) {
        println!(
            "drift: user={} pocket={} balance={} explained_by_transactions={}",
            d.user.to_hex(),
            d.pocket.to_hex(),
            d.balance,
            d.explained
        );
    }
    if let Some(w) = r.repaired {
        println!(
            "repaired: {} inserted, {} updated, {} deleted, {} conflicts, {} errors",
            w.inserted, w.updated, w.deleted, w.conflicts, w.errors
        );
    }
    if r.differences.is_empty() {
        println!("result: no differences");
    } else {
        println!("result: {} documents differ", r.differences.len());
    }
}

fn json_report(range: &Range, cal: &Calendar, r: &ReconcileReport) -> Value {
    let changes = |list: &[crate::plan::compare::DocChange]| -> Vec<Value> {
        list.iter()
            .map(|c| {
                let fields: Vec<Value> = match &c.difference {
                    Difference::Fields(f) => f
                        .iter()
                        .map(|f| {
                            json!({
                                "field": f.path, "expected": show(&f.expected),
                                "stored": show(&f.stored), "label_only": f.label_only,
                            })
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                json!({
                    "collection": c.kind.collection(), "user_id": c.user.to_hex(),
                    "period": c.period.to_string(), "difference": difference_name(&c.difference),
                    "fields": fields,
                })
            })
            .collect()
    };
    json!({
        "from": range.from.to_string(),
        "to": range.to.to_string(),
        "time_zone": cal.name(),
        "users": r.users,
        "documents": r.documents,
        "differences": changes(&r.differences),
        "stale_labels": changes(&r.stale_labels),
        "drift": r.drifts.iter().map(|d| json!({
            "user_id": d.user.to_hex(), "pocket_id": d.pocket.to_hex(),
            "balance": d.balance.to_string(), "explained": d.explained.to_string(),
        })).collect::<Vec<_>>(),
        "rejects": r.rejects.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "repaired": r.repaired.map(|w| json!({
            "inserted": w.inserted, "updated": w.updated, "deleted": w.deleted,
            "conflicts": w.conflicts, "errors": w.errors,
        })),
        "clean": r.differences.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_errors_exit_2() {
        let config =
            anyhow::Error::from(crate::Error::config("--from is after --to")).context("backfill");
        assert_eq!(exit_status(&config), 2);
        let wrapped = crate::Error::config("unknown zone").context("reading flags");
        assert_eq!(exit_status(&anyhow::Error::from(wrapped)), 2);
        let lost = crate::Error::new(crate::Kind::Transient, "server gone");
        assert_eq!(exit_status(&anyhow::Error::from(lost)), 3);
        assert_eq!(exit_status(&anyhow::anyhow!("invalid")), 3);
    }
}
