//! Renders [`Telemetry`] for readers: the Prometheus text exposition format
//! (version 0.0.4) for `/metrics`, and the JSON the status page draws from.
//!
//! Metric names are `tally_` + what is measured, in base units (seconds),
//! counters end in `_total`; labels come from closed sets (never a user).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::ops::telemetry::{CounterVec, Histogram, Telemetry};

/// `Content-Type` of [`metrics`].
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[&str]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn counter_vec<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    names: [&str; N],
    c: &CounterVec<N>,
) {
    head(out, name, "counter", help);
    for (values, v) in c.values() {
        let _ = writeln!(out, "{name}{} {v}", labels(&names, &values));
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    head(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {}", number(v));
}

fn histogram_series(out: &mut String, name: &str, label: Option<(&str, &str)>, h: &Histogram) {
    let (cumulative, sum) = h.snapshot();
    let extra = label.map_or(String::new(), |(n, v)| format!("{n}=\"{}\",", escape(v)));
    let plain = label.map_or(String::new(), |(n, v)| format!("{{{n}=\"{}\"}}", escape(v)));
    for (i, count) in cumulative.iter().enumerate() {
        let le = h.bounds.get(i).map_or("+Inf".to_owned(), |b| number(*b));
        let _ = writeln!(out, "{name}_bucket{{{extra}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum{plain} {}", number(sum));
    let _ = writeln!(
        out,
        "{name}_count{plain} {}",
        cumulative.last().copied().unwrap_or(0)
    );
}

/// The Prometheus text exposition of everything `t` holds, at `now`.
pub fn metrics(t: &Telemetry, now: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(8 << 10);
    gauge(
        &mut out,
        "tally_up",
        "1 while tally run is serving this endpoint.",
        1.0,
    );
    gauge(
        &mut out,
        "tally_leader",
        "1 when this instance is the leader (writes), 0 on standby.",
        if t.is_leader() { 1.0 } else { 0.0 },
    );
    gauge(
        &mut out,
        "tally_connected",
        "1 while a change stream on the server is open.",
        if t.connected.load(Ordering::SeqCst) {
            1.0
        } else {
            0.0
        },
    );
    counter_vec(
        &mut out,
        "tally_change_events_total",
        "Change events read, by source collection and operation.",
        ["collection", "operation"],
        &t.events,
    );
    gauge(
        &mut out,
        "tally_stream_lag_seconds",
        "Now minus the wall time of the last event seen while events wait; 0 when caught up.",
        t.lag_seconds(now),
    );
    if let Some(age) = t.checkpoint_age_seconds(now) {
        gauge(
            &mut out,
            "tally_checkpoint_age_seconds",
            "Seconds since the stream checkpoint was last saved.",
            age,
        );
    }
    head(
        &mut out,
        "tally_flush_duration_seconds",
        "histogram",
        "Time to recompute dirty users and write what differs.",
    );
    histogram_series(
        &mut out,
        "tally_flush_duration_seconds",
        None,
        &t.flush_duration,
    );
    counter_vec(
        &mut out,
        "tally_documents_written_total",
        "Output documents inserted, updated or deleted, by collection.",
        ["collection"],
        &t.documents,
    );
    counter(
        &mut out,
        "tally_restatements_total",
        "Writes that changed a document already final.",
        t.restatements.load(Ordering::Relaxed),
    );
    counter_vec(
        &mut out,
        "tally_rejects_total",
        "Invalid source documents seen in the stream, by reason.",
        ["reason"],
        &t.rejects,
    );
    counter(
        &mut out,
        "tally_drift_total",
        "Settled balance drifts applied to past documents.",
        t.drift.load(Ordering::Relaxed),
    );
    counter_vec(
        &mut out,
        "tally_finalizations_total",
        "Finalization steps, by kind and outcome (done, taken elsewhere, failed).",
        ["kind", "outcome"],
        &t.finalizations,
    );
    head(
        &mut out,
        "tally_finalization_duration_seconds",
        "histogram",
        "Time a finalization step this instance ran took, by kind.",
    );
    for (kind, h) in &t.finalization_duration {
        histogram_series(
            &mut out,
            "tally_finalization_duration_seconds",
            Some(("kind", kind)),
            h,
        );
    }
    counter_vec(
        &mut out,
        "tally_recoveries_total",
        "Stream recoveries, by cause (history_lost, reconnect, full_refresh).",
        ["cause"],
        &t.recoveries,
    );
    counter_vec(
        &mut out,
        "tally_write_failures_total",
        "Failed steps of the active instance, retried, by cause (unavailable, timeout, server_error, other).",
        ["cause"],
        &t.write_failures,
    );
    counter_vec(
        &mut out,
        "tally_late_events_total",
        "Change events that reached a period already finalized, by kind of document.",
        ["kind"],
        &t.late_events,
    );
    counter(
        &mut out,
        "tally_unreadable_events_total",
        "Change events that could not be read and were skipped.",
        t.unreadable_events.load(Ordering::Relaxed),
    );
    out
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What the status page shows, as JSON.
pub fn status(t: &Telemetry, now: DateTime<Utc>, max_lag: Duration) -> Value {
    let ready = t.readiness(now, max_lag);
    let schedule: Vec<Value> = crate::ops::telemetry::lock_schedule(t)
        .iter()
        .map(|(kind, row)| {
            json!({
                "kind": kind,
                "last_period": row.last_period.map(|d| d.to_string()),
                "last_at": row.last_at.map(rfc3339),
                "next_period": row.next_period.map(|d| d.to_string()),
                "next_due": row.next_due.map(rfc3339),
            })
        })
        .collect();
    let rejects: Vec<Value> = crate::ops::telemetry::recent_rejects(t)
        .iter()
        .rev()
        .map(|r| json!({ "at": rfc3339(r.at), "collection": r.collection, "id": r.id, "reason": r.reason }))
        .collect();
    let recoveries: Vec<Value> = crate::ops::telemetry::recent_recoveries(t)
        .iter()
        .rev()
        .map(|r| json!({ "at": rfc3339(r.at), "cause": r.cause }))
        .collect();
    let rates: Vec<Value> = t
        .rates()
        .into_iter()
        .map(|(at, per_second)| json!({ "t": at, "per_second": per_second }))
        .collect();
    json!({
        "now": rfc3339(now),
        "version": env!("CARGO_PKG_VERSION"),
        "role": match (t.role_known.load(Ordering::SeqCst), t.is_leader()) {
            (false, _) => "unknown",
            (true, true) => "leader",
            (true, false) => "standby",
        },
        "connected": t.connected.load(Ordering::SeqCst),
        "ready": ready.is_ok(),
        "not_ready_because": ready.err(),
        "lag_seconds": t.lag_seconds(now),
        "checkpoint_age_seconds": t.checkpoint_age_seconds(now),
        "events_total": t.events_total(),
        "documents_written_total": t.documents.sum(),
        "rejects_total": t.rejects.sum(),
        "drift_total": t.drift.load(Ordering::Relaxed),
        "restatements_total": t.restatements.load(Ordering::Relaxed),
        "events_per_second": rates,
        "schedule": schedule,
        "recent_rejects": rejects,
        "recent_recoveries": recoveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::telemetry::Recovery;
    use mongodb::change_stream::event::OperationType;

    #[test]
    fn every_sample_line_is_a_tally_name_labels_and_a_number() {
        let t = Telemetry::new();
        t.set_leader(true);
        t.change_event("transactions", &OperationType::Insert, None);
        t.flushed(Duration::from_millis(30));
        t.recovery(Recovery::Reconnect);
        t.checkpoint_saved();
        let text = metrics(&t, Utc::now());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(series.starts_with("tally_"), "{line}");
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
        assert!(text.contains(
            "tally_change_events_total{collection=\"transactions\",operation=\"insert\"} 1"
        ));
        assert!(text.contains("tally_flush_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("tally_flush_duration_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(text.contains("tally_flush_duration_seconds_count 1"));
        assert!(text.contains("tally_recoveries_total{cause=\"reconnect\"} 1"));
        assert!(text.contains("tally_leader 1"));
        assert!(text.contains(
            "tally_finalization_duration_seconds_bucket{kind=\"monthly\",le=\"+Inf\"} 0"
        ));
    }

    #[test]
    fn status_lists_the_schedule_of_every_kind() {
        let t = Telemetry::new();
        let s = status(&t, Utc::now(), Duration::from_secs(30));
        assert_eq!(s["schedule"].as_array().unwrap().len(), 3);
        assert_eq!(s["ready"], false);
        assert_eq!(s["not_ready_because"], "starting");
    }
}
