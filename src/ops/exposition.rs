//! Renders [`Telemetry`] for readers: the Prometheus text exposition format
//! (version 0.0.4) for `/metrics`, written by prometheus-client from a
//! collector that reads the telemetry at scrape time, and the JSON the
//! status page draws from.
//!
//! Metric names are `tally_` + what is measured, in base units (seconds),
//! counters end in `_total`; labels come from closed sets (never a user).
//! [`FAMILIES`] is the one list of them: the deployment checks and the HTTP
//! tests read it through [`metric_names`].

use std::fmt::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::ops::telemetry::{CounterVec, Histogram, Telemetry};

/// `Content-Type` of [`metrics`]: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One metric family of `/metrics`, as Prometheus and its queries see it.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// The queried name: a counter's ends in `_total` (the encoder adds it
    /// to the stem it is given); a histogram's series add `_bucket`, `_sum`
    /// and `_count`.
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
    /// Written at every scrape; false: only once it has a value
    /// (`tally_checkpoint_age_seconds`, after the first checkpoint).
    pub always: bool,
}

impl Family {
    const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: MetricType::Gauge,
            help,
            always: true,
        }
    }

    const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: MetricType::Counter,
            help,
            always: true,
        }
    }

    const fn histogram(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: MetricType::Histogram,
            help,
            always: true,
        }
    }

    /// The name the encoder is given: without `_total` for a counter.
    fn stem(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }
}

const UP: Family = Family::gauge("tally_up", "1 while tally run is serving this endpoint.");
const LEADER: Family = Family::gauge(
    "tally_leader",
    "1 when this instance is the leader (writes), 0 on standby.",
);
const CONNECTED: Family = Family::gauge(
    "tally_connected",
    "1 while a change stream on the server is open.",
);
const CHANGE_EVENTS: Family = Family::counter(
    "tally_change_events_total",
    "Change events read, by source collection and operation.",
);
const STREAM_LAG: Family = Family::gauge(
    "tally_stream_lag_seconds",
    "Now minus the wall time of the last event seen while events wait; 0 when caught up.",
);
const CHECKPOINT_AGE: Family = Family {
    always: false,
    ..Family::gauge(
        "tally_checkpoint_age_seconds",
        "Seconds since the stream checkpoint was last saved.",
    )
};
const FLUSH_DURATION: Family = Family::histogram(
    "tally_flush_duration_seconds",
    "Time to recompute dirty users and write what differs.",
);
const WRITE_LATENCY: Family = Family::histogram(
    "tally_source_to_write_seconds",
    "Per change event that queued work: from its server wall time to the commit of the first flush after it, which wrote its current documents (past days a back-dated change restates may be held for the settle delay and written later).",
);
const DOCUMENTS_WRITTEN: Family = Family::counter(
    "tally_documents_written_total",
    "Output documents inserted, updated or deleted, by collection.",
);
const RESTATEMENTS: Family = Family::counter(
    "tally_restatements_total",
    "Writes that changed a document already final.",
);
const REJECTS: Family = Family::counter(
    "tally_rejects_total",
    "Invalid source documents seen in the stream, by reason.",
);
const DRIFT: Family = Family::counter(
    "tally_drift_total",
    "Settled balance drifts applied to past documents.",
);
const FINALIZATIONS: Family = Family::counter(
    "tally_finalizations_total",
    "Finalization steps, by kind and outcome (done, taken elsewhere, failed).",
);
const FINALIZATION_DURATION: Family = Family::histogram(
    "tally_finalization_duration_seconds",
    "Time a finalization step this instance ran took, by kind.",
);
const RECOVERIES: Family = Family::counter(
    "tally_recoveries_total",
    "Stream recoveries, by cause (history_lost, reconnect, full_refresh).",
);
const WRITE_FAILURES: Family = Family::counter(
    "tally_write_failures_total",
    "Failed steps of the active instance, retried, by cause (unavailable, timeout, server_error, other).",
);
const LATE_EVENTS: Family = Family::counter(
    "tally_late_events_total",
    "Change events that reached a period already finalized, by kind of document.",
);
const UNREADABLE_EVENTS: Family = Family::counter(
    "tally_unreadable_events_total",
    "Change events that could not be read and were skipped.",
);
const SERVER_COMMANDS: Family = Family {
    always: false,
    ..Family::counter(
        "tally_server_commands_total",
        "With --command-stats: commands sent to MongoDB, by command and collection.",
    )
};
const SERVER_COMMAND_SECONDS: Family = Family {
    always: false,
    ..Family::counter(
        "tally_server_command_seconds_total",
        "With --command-stats: round trips of the commands sent to MongoDB, summed, by command and collection.",
    )
};

/// Every family [`metrics`] writes, in its order (those not
/// [`always`](Family::always) only once they have a value).
pub const FAMILIES: [Family; 20] = [
    UP,
    LEADER,
    CONNECTED,
    CHANGE_EVENTS,
    STREAM_LAG,
    CHECKPOINT_AGE,
    FLUSH_DURATION,
    WRITE_LATENCY,
    DOCUMENTS_WRITTEN,
    RESTATEMENTS,
    REJECTS,
    DRIFT,
    FINALIZATIONS,
    FINALIZATION_DURATION,
    RECOVERIES,
    WRITE_FAILURES,
    LATE_EVENTS,
    UNREADABLE_EVENTS,
    SERVER_COMMANDS,
    SERVER_COMMAND_SECONDS,
];

/// The names of every exported metric, as queries use them (the dashboard,
/// the alerts and the tests read this list instead of keeping a copy).
pub fn metric_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.name).collect()
}

/// The exported histograms (their `_bucket`, `_sum` and `_count` series are
/// what queries name).
pub fn histogram_names() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter(|f| f.kind == MetricType::Histogram)
        .map(|f| f.name)
        .collect()
}

fn describe<'a>(out: &'a mut DescriptorEncoder, f: &'a Family) -> Result<MetricEncoder<'a>, Error> {
    out.encode_descriptor(f.stem(), f.help, None, f.kind)
}

fn gauge<V: EncodeGaugeValue>(out: &mut DescriptorEncoder, f: &Family, v: V) -> Result<(), Error> {
    ConstGauge::new(v).encode(describe(out, f)?)
}

fn counter(out: &mut DescriptorEncoder, f: &Family, v: u64) -> Result<(), Error> {
    ConstCounter::new(v).encode(describe(out, f)?)
}

fn counter_vec<const N: usize>(
    out: &mut DescriptorEncoder,
    f: &Family,
    names: [&'static str; N],
    c: &CounterVec<N>,
) -> Result<(), Error> {
    let mut family = describe(out, f)?;
    for (values, v) in c.values() {
        let labels: [(&str, &str); N] = std::array::from_fn(|i| (names[i], values[i]));
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One histogram series: the encoder takes per-bucket (not cumulative)
/// counts, the last bucket's bound being +Inf.
fn histogram_series(mut series: MetricEncoder, h: &Histogram) -> Result<(), Error> {
    let (cumulative, sum) = h.snapshot();
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(cumulative.iter().map(|c| {
            let n = c - below;
            below = *c;
            n
        }))
        .collect();
    let count = cumulative.last().copied().unwrap_or(0);
    series.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// Encodes [`Telemetry`] at scrape time: tally keeps its own atomics on the
/// hot path, and this reads them into prometheus-client's encoder.
#[derive(Debug)]
struct Scrape {
    telemetry: Arc<Telemetry>,
    now: DateTime<Utc>,
}

impl Collector for Scrape {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), Error> {
        let (t, now, out) = (&*self.telemetry, self.now, &mut out);
        gauge(out, &UP, 1i64)?;
        gauge(out, &LEADER, i64::from(t.is_leader()))?;
        gauge(
            out,
            &CONNECTED,
            i64::from(t.connected.load(Ordering::SeqCst)),
        )?;
        counter_vec(out, &CHANGE_EVENTS, ["collection", "operation"], &t.events)?;
        gauge(out, &STREAM_LAG, t.lag_seconds(now))?;
        if let Some(age) = t.checkpoint_age_seconds(now) {
            gauge(out, &CHECKPOINT_AGE, age)?;
        }
        histogram_series(describe(out, &FLUSH_DURATION)?, &t.flush_duration)?;
        histogram_series(describe(out, &WRITE_LATENCY)?, &t.write_latency)?;
        counter_vec(out, &DOCUMENTS_WRITTEN, ["collection"], &t.documents)?;
        counter(out, &RESTATEMENTS, t.restatements.load(Ordering::Relaxed))?;
        counter_vec(out, &REJECTS, ["reason"], &t.rejects)?;
        counter(out, &DRIFT, t.drift.load(Ordering::Relaxed))?;
        counter_vec(out, &FINALIZATIONS, ["kind", "outcome"], &t.finalizations)?;
        let mut family = describe(out, &FINALIZATION_DURATION)?;
        for (kind, h) in &t.finalization_duration {
            histogram_series(family.encode_family(&[("kind", *kind)])?, h)?;
        }
        counter_vec(out, &RECOVERIES, ["cause"], &t.recoveries)?;
        counter_vec(out, &WRITE_FAILURES, ["cause"], &t.write_failures)?;
        counter_vec(out, &LATE_EVENTS, ["kind"], &t.late_events)?;
        counter(
            out,
            &UNREADABLE_EVENTS,
            t.unreadable_events.load(Ordering::Relaxed),
        )?;
        if t.commands.values().is_empty() {
            return Ok(());
        }
        const LABELS: [&str; 2] = ["command", "collection"];
        counter_vec(out, &SERVER_COMMANDS, LABELS, &t.commands)?;
        let mut family = describe(out, &SERVER_COMMAND_SECONDS)?;
        for ([command, collection], micros) in t.command_micros.values() {
            let labels = [(LABELS[0], command), (LABELS[1], collection)];
            ConstCounter::new(micros as f64 / 1e6).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The Prometheus text exposition of everything `t` holds, at `now`.
pub fn metrics(t: &Arc<Telemetry>, now: DateTime<Utc>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        telemetry: t.clone(),
        now,
    }));
    let mut out = String::with_capacity(8 << 10);
    prometheus_text::encode(&mut out, &registry).expect("writing to a String does not fail");
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
        let t = Arc::new(Telemetry::new());
        t.set_leader(true);
        t.change_event("transactions", &OperationType::Insert, None);
        t.flushed(Duration::from_millis(30));
        let now = Utc::now().timestamp_millis();
        t.written_after(&[now - 300, now - 1_700, now - 4_000]);
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
        assert!(text.contains("tally_source_to_write_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("tally_source_to_write_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("tally_source_to_write_seconds_bucket{le=\"2\"} 2"));
        assert!(text.contains("tally_source_to_write_seconds_count 3"));
        assert!(text.contains("tally_recoveries_total{cause=\"reconnect\"} 1"));
        assert!(text.contains("tally_leader 1"));
        assert!(text.contains(
            "tally_finalization_duration_seconds_bucket{kind=\"monthly\",le=\"+Inf\"} 0"
        ));
    }

    #[test]
    fn the_families_listed_are_the_families_written() {
        let t = Arc::new(Telemetry::new());
        t.checkpoint_saved();
        t.command(
            "update",
            "daily_financial_reports",
            Duration::from_millis(3),
        );
        let text = metrics(&t, Utc::now());
        let typed: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_once(' ').expect(l))
            .collect();
        let listed: Vec<(&str, &str)> =
            FAMILIES.iter().map(|f| (f.name, f.kind.as_str())).collect();
        assert_eq!(typed, listed);
        assert!(metric_names().contains(&"tally_checkpoint_age_seconds"));
        assert_eq!(
            histogram_names(),
            [
                "tally_flush_duration_seconds",
                "tally_source_to_write_seconds",
                "tally_finalization_duration_seconds"
            ]
        );
        let fresh = metrics(&Arc::new(Telemetry::new()), Utc::now());
        let typed: Vec<&str> = fresh
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_once(' ').expect(l).0)
            .collect();
        let always: Vec<&str> = FAMILIES
            .iter()
            .filter(|f| f.always)
            .map(|f| f.name)
            .collect();
        assert_eq!(typed, always, "before the first checkpoint");
        assert!(!always.contains(&"tally_checkpoint_age_seconds"));
        assert!(!always.contains(&"tally_server_commands_total"));
    }

    #[test]
    fn command_round_trips_are_summed_by_command_and_collection() {
        let t = Arc::new(Telemetry::new());
        t.command(
            "update",
            "daily_financial_reports",
            Duration::from_millis(3),
        );
        t.command(
            "update",
            "daily_financial_reports",
            Duration::from_micros(1500),
        );
        t.command("commitTransaction", "", Duration::from_millis(2));
        let text = metrics(&t, Utc::now());
        assert!(text.contains(
            "tally_server_commands_total{command=\"update\",collection=\"daily_financial_reports\"} 2"
        ));
        assert!(text.contains(
            "tally_server_command_seconds_total{command=\"update\",collection=\"daily_financial_reports\"} 0.0045"
        ));
        assert!(text.contains(
            "tally_server_command_seconds_total{command=\"commitTransaction\",collection=\"\"} 0.002"
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
