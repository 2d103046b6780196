//! The deployment material under `deploy/` and the configuration file,
//! checked without a container engine or a server: every YAML/JSON/TOML file
//! parses, the example configuration loads in the real binary, probes and
//! scrape targets agree with the default HTTP address, the dashboard and the
//! alerts use only the metric names tally exports; and the CLI's config
//! precedence (flag > env > file > default), errors and redaction.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value as Json;
use tally::cli::settings::SETTINGS;
use tally::ops::exposition::{histogram_names, metric_names as exported};
use yaml_rust2::{Yaml, YamlLoader};

/// Exported but not drawn on the dashboard; the hand-kept list of names
/// these checks used before `metric_names` left them out as well.
const NOT_ON_DASHBOARD: &[&str] = &[
    "tally_up",
    "tally_connected",
    // Diagnosis only (`--command-stats`).
    "tally_server_commands_total",
    "tally_server_command_seconds_total",
];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("deploy/ readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The default HTTP address's port, from the configuration's own defaults.
fn default_port() -> i64 {
    let addr: std::net::SocketAddr = tally::cli::settings::setting("http_addr")
        .expect("http_addr key")
        .default
        .parse()
        .expect("default address");
    i64::from(addr.port())
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

fn tally(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    for s in SETTINGS {
        c.env_remove(s.env);
    }
    c.env_remove("TALLY_CONFIG").env_remove("TALLY_NOW");
    c.args(args).envs(env.iter().copied());
    c.output().expect("tally runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A throwaway file holding `text`.
fn temp_file(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "tally-deploy-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).expect("temp file");
    p
}

/// `tally config` output: the TOML table and each key's source comment.
struct Effective {
    table: toml::Table,
    sources: std::collections::HashMap<String, String>,
}

impl Effective {
    fn of(o: &Output) -> Effective {
        assert!(o.status.success(), "tally config failed: {}", stderr(o));
        let text = stdout(o);
        let table: toml::Table = text.parse().expect("tally config prints TOML");
        let sources = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, _) = l.split_once(" = ")?;
                let (_, src) = l.rsplit_once("  # ")?;
                Some((k.to_owned(), src.to_owned()))
            })
            .collect();
        Effective { table, sources }
    }

    fn str(&self, k: &str) -> &str {
        self.table[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} is a string"))
    }

    fn int(&self, k: &str) -> i64 {
        self.table[k]
            .as_integer()
            .unwrap_or_else(|| panic!("{k} is an integer"))
    }

    fn source(&self, k: &str) -> &str {
        &self.sources[k]
    }
}

/// Exit 2 with exactly one line on stderr.
fn assert_one_line_exit_2(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

// ---------------------------------------------------------------------------
// deploy/
// ---------------------------------------------------------------------------

#[test]
fn every_yaml_json_and_toml_file_under_deploy_parses() {
    let mut all = Vec::new();
    files(&deploy(), &mut all);
    let mut checked = 0;
    for p in &all {
        let text = std::fs::read_to_string(p).expect("readable");
        let name = p.display();
        match p.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let docs =
                    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!docs.is_empty(), "{name}: empty");
            }
            Some("json") => {
                serde_json::from_str::<Json>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            Some("toml") => {
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => continue,
        }
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} files checked");
}

#[test]
fn example_config_documents_every_key_and_loads_in_tally() {
    let text = read("tally.toml");
    let table: toml::Table = text.parse().expect("TOML");
    for s in SETTINGS {
        assert!(
            table.contains_key(s.key),
            "deploy/tally.toml lacks {}",
            s.key
        );
    }
    let path = deploy().join("tally.toml");
    let e = Effective::of(&tally(&["--config", path.to_str().unwrap(), "config"], &[]));
    for s in SETTINGS {
        assert_eq!(e.source(s.key), "file", "{} read from the file", s.key);
    }
    assert_eq!(e.str("database"), "coin");
    assert_eq!(e.str("timezone"), "UTC");
    assert_eq!(e.str("http_addr"), "127.0.0.1:9187");
    assert_eq!(e.int("lease_ttl_seconds"), 15);
    assert_eq!(e.int("settle_seconds"), 20);
    // The example's values are the defaults, URI aside.
    for s in SETTINGS.iter().filter(|s| s.key != "mongodb_uri") {
        let v = match &table[s.key] {
            toml::Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        assert_eq!(v, s.default, "deploy/tally.toml {} is the default", s.key);
    }
}

#[test]
fn kubernetes_configmap_carries_a_tally_toml_that_loads() {
    let docs = yaml("k8s/configmap.yaml");
    let cm = &docs[0];
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    let body = cm["data"]["tally.toml"].as_str().expect("data.tally.toml");
    let path = temp_file(body);
    let e = Effective::of(&tally(&["--config", path.to_str().unwrap(), "config"], &[]));
    std::fs::remove_file(&path).ok();
    let addr: std::net::SocketAddr = e.str("http_addr").parse().expect("address");
    assert_eq!(i64::from(addr.port()), default_port());
    assert!(addr.ip().is_unspecified(), "pods listen on all interfaces");
    assert!(
        !body.contains("mongodb_uri"),
        "the URI comes from the Secret, not the ConfigMap"
    );
}

#[test]
fn kubernetes_probes_and_ports_match_the_default_http_address() {
    assert_eq!(default_port(), 9187);
    let docs = yaml("k8s/deployment.yaml");
    let d = &docs[0];
    assert_eq!(d["kind"].as_str(), Some("Deployment"));
    assert_eq!(d["spec"]["replicas"].as_i64(), Some(2));
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0].as_str(), Some("run"));
    let live = &c["livenessProbe"]["httpGet"];
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(live["path"].as_str(), Some("/healthz"));
    assert_eq!(ready["path"].as_str(), Some("/readyz"));
    assert_eq!(live["port"].as_i64(), Some(default_port()));
    assert_eq!(ready["port"].as_i64(), Some(default_port()));
    assert_eq!(
        c["ports"][0]["containerPort"].as_i64(),
        Some(default_port())
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let env = c["env"].as_vec().expect("env");
    let uri = env
        .iter()
        .find(|e| e["name"].as_str() == Some("TALLY_MONGODB_URI"))
        .expect("TALLY_MONGODB_URI");
    assert_eq!(
        uri["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("tally-mongodb")
    );
    assert!(env
        .iter()
        .any(|e| e["name"].as_str() == Some("TALLY_CONFIG")));
    let cfg_volume = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .any(|v| v["configMap"]["name"].as_str() == Some("tally-config"));
    assert!(cfg_volume, "the ConfigMap is mounted");

    let svc = &yaml("k8s/service.yaml")[0];
    assert_eq!(
        svc["spec"]["ports"][0]["port"].as_i64(),
        Some(default_port())
    );
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"].as_i64(),
        Some(default_port())
    );

    // Every manifest kustomize applies exists.
    let k = &yaml("k8s/kustomization.yaml")[0];
    for r in k["resources"].as_vec().expect("resources") {
        let f = r.as_str().expect("file name");
        assert!(deploy().join("k8s").join(f).is_file(), "k8s/{f} missing");
    }
}

#[test]
fn prometheus_scrapes_tally_on_the_default_port() {
    let p = &yaml("prometheus.yml")[0];
    let jobs = p["scrape_configs"].as_vec().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("tally"))
        .expect("job tally");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let target = job["static_configs"][0]["targets"][0]
        .as_str()
        .expect("target");
    let (host, port) = target.rsplit_once(':').expect("host:port");
    assert_eq!(port.parse::<i64>().ok(), Some(default_port()));
    let rules = p["rule_files"][0].as_str().expect("rule file");
    assert!(rules.ends_with("alerts.yml"));

    let compose = &yaml("docker-compose.yml")[0];
    let services = &compose["services"];
    assert!(!services[host].is_badvalue(), "compose has service {host}");
    let ports = services[host]["ports"].as_vec().expect("ports");
    assert!(ports
        .iter()
        .any(|p| p.as_str() == Some(&format!("{0}:{0}", default_port()))));
}

#[test]
fn compose_starts_a_replica_set_then_init_then_run() {
    let c = &yaml("docker-compose.yml")[0];
    let s = &c["services"];
    let image = s["mongo"]["image"].as_str().expect("mongo image");
    let major: u32 = image
        .rsplit_once(':')
        .and_then(|(_, v)| v.split('.').next()?.parse().ok())
        .expect("mongo:<major>.<minor>");
    assert!(major >= 6, "MongoDB >= 6.0, got {image}");
    let cmd: Vec<&str> = s["mongo"]["command"]
        .as_vec()
        .expect("mongo command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(cmd.contains(&"--replSet"));
    let health: String = s["mongo"]["healthcheck"]["test"]
        .as_vec()
        .expect("healthcheck")
        .iter()
        .filter_map(Yaml::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(health.contains("rs.initiate") && health.contains("rs.status"));
    assert_eq!(s["tally-init"]["command"][0].as_str(), Some("init"));
    assert_eq!(s["tally"]["command"][0].as_str(), Some("run"));
    assert_eq!(
        s["tally"]["depends_on"]["tally-init"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    assert_eq!(
        s["tally-init"]["depends_on"]["mongo"]["condition"].as_str(),
        Some("service_healthy")
    );
}

/// Metric names used in PromQL expressions, histogram suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    let histograms = histogram_names();
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("tally_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(b)))
                .unwrap_or(name);
            out.push(base.to_owned());
        }
        i = end;
    }
    out
}

fn exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Json::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Json::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics_and_shows_them_all() {
    let d: Json = serde_json::from_str(&read("grafana/tally.json")).expect("JSON");
    assert_eq!(d["uid"], "tally");
    let mut all = Vec::new();
    exprs(&d, &mut all);
    assert!(all.len() >= 10, "only {} queries", all.len());
    let metrics = exported();
    let mut used = std::collections::BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "query names no tally metric: {e}");
        for n in names {
            assert!(metrics.contains(&n.as_str()), "unknown metric {n} in {e}");
            used.insert(n);
        }
    }
    for m in NOT_ON_DASHBOARD {
        assert!(metrics.contains(m), "{m} is no longer exported");
    }
    for m in metrics.iter().filter(|m| !NOT_ON_DASHBOARD.contains(m)) {
        assert!(used.contains(*m), "the dashboard does not show {m}");
    }
}

#[test]
fn alert_rules_use_exported_metrics_and_are_explained_in_the_readme() {
    let a = &yaml("alerts.yml")[0];
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let ops = readme
        .split_once("## Operations")
        .map(|(_, rest)| rest)
        .expect("README has an Operations section");
    let metrics = exported();
    let mut n = 0;
    for g in a["groups"].as_vec().expect("groups") {
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{name}: severity"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            for m in metric_names(expr) {
                assert!(metrics.contains(&m.as_str()), "{name}: unknown metric {m}");
            }
            assert!(
                ops.contains(name),
                "README Operations does not explain {name}"
            );
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} alerts");
}

/// CI runs the test command the README gives a newcomer (STYLE.md, "keep
/// `.ci/run` calling the README's test command").
#[test]
fn ci_runs_the_test_command_of_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    let cmd = ci
        .lines()
        .find_map(|l| l.strip_prefix("TEST_CMD=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect(".ci/run sets TEST_CMD=\"...\"");
    assert!(
        ci.lines().any(|l| l.trim() == "$TEST_CMD"),
        ".ci/run does not run $TEST_CMD"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let two = readme
        .split_once("## The two commands")
        .and_then(|(_, rest)| rest.split_once("\n## "))
        .map(|(section, _)| section)
        .expect("README has a section The two commands");
    assert!(
        two.lines()
            .any(|l| l.split('#').next().map(str::trim) == Some(cmd)),
        "README's two commands do not include {cmd:?}, the TEST_CMD of .ci/run"
    );
}

#[test]
fn systemd_unit_runs_tally_hardened_with_the_uri_from_a_file() {
    let unit = read("tally.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains("--config /etc/tally/tally.toml") && exec.ends_with(" run"));
    assert!(unit.lines().any(|l| l.starts_with("EnvironmentFile=")));
    for line in [
        "[Unit]",
        "[Service]",
        "[Install]",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "KillSignal=SIGTERM",
    ] {
        assert!(has(line), "tally.service lacks {line}");
    }
}

/// Exit 2 is a configuration error, 3 a runtime failure (README, "Exit
/// status"): every supervisor file restarts tally on 3, and systemd, the
/// one that can tell them apart, not on 2.
#[test]
fn every_supervisor_restarts_a_runtime_failure_and_systemd_not_a_usage_error() {
    let unit = read("tally.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    assert!(
        matches!(value("Restart"), Some("on-failure" | "always")),
        "systemd restarts on a failure"
    );
    let prevented: Vec<&str> = value("RestartPreventExitStatus")
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(prevented, ["2"], "only a usage error is not restarted");
    let compose = &yaml("docker-compose.yml")[0];
    let policy = compose["services"]["tally"]["restart"].as_str();
    assert!(
        matches!(policy, Some("always" | "unless-stopped" | "on-failure")),
        "compose restarts tally run: {policy:?}"
    );
    for doc in yaml("k8s/deployment.yaml") {
        if doc["kind"].as_str() == Some("Deployment") {
            let pod = &doc["spec"]["template"]["spec"];
            // A Deployment's pods restart their containers always (the only
            // policy it allows); an explicit other value would be rejected.
            let policy = pod["restartPolicy"].as_str().unwrap_or("Always");
            assert_eq!(policy, "Always");
        }
    }
}

#[test]
fn dockerfile_builds_in_rust_and_runs_on_debian_slim_as_non_root() {
    let d = read("Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "two stages");
    assert!(froms[0].contains("rust:") && froms[0].contains(" AS builder"));
    assert!(froms[1].contains("debian:") && froms[1].contains("-slim"));
    let user = d
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(!user.starts_with("root") && !user.starts_with('0'));
    assert!(d
        .lines()
        .any(|l| l.starts_with("ENTRYPOINT") && l.contains("tally")));
    assert!(d.lines().any(|l| l == "CMD [\"run\"]"));
    assert!(d.lines().any(|l| l == format!("EXPOSE {}", default_port())));
}

// ---------------------------------------------------------------------------
// The configuration file on the command line
// ---------------------------------------------------------------------------

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let path = temp_file(
        "database = \"filedb\"\ntimezone = \"Europe/Paris\"\nsettle_seconds = 7\n\
         initial_days = 5\nlog_format = \"json\"\n",
    );
    let p = path.to_str().unwrap();
    let e = Effective::of(&tally(
        &["--config", p, "config", "--settle-seconds", "11"],
        &[
            ("TALLY_DATABASE", "envdb"),
            ("TALLY_SETTLE_SECONDS", "9"),
            ("TALLY_LOG_FORMAT", "text"),
        ],
    ));
    assert_eq!(
        (e.int("settle_seconds"), e.source("settle_seconds")),
        (11, "flag")
    );
    assert_eq!(
        (e.str("database"), e.source("database")),
        ("envdb", "env TALLY_DATABASE")
    );
    assert_eq!(
        (e.str("log_format"), e.source("log_format")),
        ("text", "env TALLY_LOG_FORMAT")
    );
    assert_eq!(
        (e.str("timezone"), e.source("timezone")),
        ("Europe/Paris", "file")
    );
    assert_eq!(
        (e.int("initial_days"), e.source("initial_days")),
        (5, "file")
    );
    assert_eq!(
        (e.str("snapshot_at"), e.source("snapshot_at")),
        ("00:00", "default")
    );

    // A global flag wins over the environment wherever it is written, and
    // TALLY_CONFIG names the file.
    let e = Effective::of(&tally(
        &["--database", "flagdb", "config"],
        &[("TALLY_DATABASE", "envdb"), ("TALLY_CONFIG", p)],
    ));
    assert_eq!(
        (e.str("database"), e.source("database")),
        ("flagdb", "flag")
    );
    assert_eq!(e.source("timezone"), "file");
    let e = Effective::of(&tally(
        &["config", "--database", "late"],
        &[("TALLY_CONFIG", p)],
    ));
    assert_eq!((e.str("database"), e.source("database")), ("late", "flag"));
    std::fs::remove_file(&path).ok();

    // Without a file, the defaults.
    let e = Effective::of(&tally(&["config"], &[]));
    for s in SETTINGS {
        assert_eq!(e.source(s.key), "default", "{}", s.key);
    }
}

#[test]
fn the_commands_use_the_file_unless_a_flag_overrides_it() {
    // An unparsable URI fails at once, before any connection: it shows
    // which value the command used, redacted.
    let path = temp_file("mongodb_uri = \"mongodb://alice:s3cret@[file\"\n");
    let p = path.to_str().unwrap();
    let o = tally(&["--config", p, "status"], &[]);
    let err = assert_one_line_exit_2(&o);
    assert!(err.contains("mongodb://***@[file"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let o = tally(
        &["--config", p, "status"],
        &[("TALLY_MONGODB_URI", "mongodb://bob:pw@[env")],
    );
    assert!(assert_one_line_exit_2(&o).contains("mongodb://***@[env"));
    let o = tally(
        &[
            "--config",
            p,
            "status",
            "--mongodb-uri",
            "mongodb://carol:pw@[flag",
        ],
        &[("TALLY_MONGODB_URI", "mongodb://bob:pw@[env")],
    );
    assert!(assert_one_line_exit_2(&o).contains("mongodb://***@[flag"));
    std::fs::remove_file(&path).ok();
}

#[test]
fn an_unknown_key_exits_2_naming_it() {
    let path = temp_file("database = \"coin\"\nsettle_secs = 3\n");
    let o = tally(&["--config", path.to_str().unwrap(), "config"], &[]);
    std::fs::remove_file(&path).ok();
    let err = assert_one_line_exit_2(&o);
    assert!(err.contains("settle_secs"), "{err}");
    assert!(err.contains(":2:"), "names the line: {err}");
}

#[test]
fn a_bad_value_exits_2_naming_the_key() {
    for (text, key) in [
        ("settle_seconds = \"soon\"\n", "settle_seconds"),
        ("timezone = \"Mars/Base\"\n", "timezone"),
        ("daily_report_at = \"25:00\"\n", "daily_report_at"),
        ("http_addr = \"localhost\"\n", "http_addr"),
        ("log_format = \"xml\"\n", "log_format"),
        ("lease_ttl_seconds = 0\n", "lease_ttl_seconds"),
        ("quiet = \"yes\"\n", "quiet"),
    ] {
        let path = temp_file(text);
        let o = tally(&["--config", path.to_str().unwrap(), "status"], &[]);
        std::fs::remove_file(&path).ok();
        let err = assert_one_line_exit_2(&o);
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let o = tally(&["--config", "/nonexistent/tally.toml", "config"], &[]);
    assert!(assert_one_line_exit_2(&o).contains("/nonexistent/tally.toml"));
}

#[test]
fn tally_config_redacts_the_uri_password() {
    let path = temp_file(
        "mongodb_uri = \"mongodb://alice:s3cret@db.example:27017/coin?replicaSet=rs0\"\n",
    );
    let o = tally(&["--config", path.to_str().unwrap(), "config"], &[]);
    std::fs::remove_file(&path).ok();
    let e = Effective::of(&o);
    assert!(!stdout(&o).contains("s3cret"));
    assert_eq!(
        e.str("mongodb_uri"),
        "mongodb://***@db.example:27017/coin?replicaSet=rs0"
    );
    let o = tally(
        &["config"],
        &[("TALLY_MONGODB_URI", "mongodb://u:hunter2@h:1/")],
    );
    assert!(!stdout(&o).contains("hunter2"));
    assert_eq!(
        Effective::of(&o).source("mongodb_uri"),
        "env TALLY_MONGODB_URI"
    );
}
