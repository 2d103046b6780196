//! The configuration file (`--config tally.toml`, or `TALLY_CONFIG`) and the
//! effective configuration that `tally config` prints.
//!
//! Precedence: flags > `TALLY_*` environment > file > built-in defaults.
//! The file's keys are the flags' names with `_` for `-` (see [`KEYS`]). A
//! key that names a clap argument becomes that argument's *default value*
//! and the command line is parsed again, so clap itself keeps flags and
//! environment above the file and parses the result. Keys without a flag
//! (yet) are resolved here and carried as plain values in [`Settings`].
//!
//! Invariant: a file value never overrides a value given on the command
//! line or in the environment, and every file value is validated — with the
//! key named — whether or not the command uses it. The MongoDB URI is
//! printed only redacted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use serde::Deserialize;

use crate::cli::{Cli, RunArgs};
use crate::core::calendar::Calendar;
use crate::core::schedule;
use crate::mongo::connect::redact_uri;

/// How a value is written in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
}

/// One configuration setting: its file key, the clap argument id that
/// carries it (if any), its environment variable and built-in default.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub name: &'static str,
    /// Clap argument id; `None` when no flag exists for it.
    pub arg: Option<&'static str>,
    pub env: Option<&'static str>,
    pub ty: Type,
    pub default: &'static str,
}

const fn key(
    name: &'static str,
    arg: Option<&'static str>,
    env: Option<&'static str>,
    ty: Type,
    default: &'static str,
) -> Key {
    Key {
        name,
        arg,
        env,
        ty,
        default,
    }
}

/// Every setting, in the order `tally config` prints them. Defaults must
/// equal clap's (a unit test checks those that have a flag).
pub const KEYS: &[Key] = &[
    key(
        "mongodb_uri",
        Some("mongodb_uri"),
        Some("TALLY_MONGODB_URI"),
        Type::Str,
        "mongodb://127.0.0.1:27017",
    ),
    key(
        "database",
        Some("database"),
        Some("TALLY_DATABASE"),
        Type::Str,
        "coin",
    ),
    key(
        "timezone",
        Some("timezone"),
        Some("TALLY_TIMEZONE"),
        Type::Str,
        "UTC",
    ),
    key("quiet", Some("quiet"), None, Type::Bool, "false"),
    key("log", None, Some("TALLY_LOG"), Type::Str, "info"),
    key(
        "log_format",
        Some("log_format"),
        Some("TALLY_LOG_FORMAT"),
        Type::Str,
        "text",
    ),
    key(
        "http_addr",
        Some("http_addr"),
        Some("TALLY_HTTP_ADDR"),
        Type::Str,
        "127.0.0.1:9187",
    ),
    key(
        "daily_report_at",
        Some("daily_report_at"),
        Some("TALLY_DAILY_REPORT_AT"),
        Type::Str,
        "23:59",
    ),
    key(
        "snapshot_at",
        Some("snapshot_at"),
        Some("TALLY_SNAPSHOT_AT"),
        Type::Str,
        "00:00",
    ),
    key(
        "monthly_at",
        Some("monthly_at"),
        Some("TALLY_MONTHLY_AT"),
        Type::Str,
        "00:01",
    ),
    key(
        "initial_days",
        Some("initial_days"),
        Some("TALLY_INITIAL_DAYS"),
        Type::Int,
        "60",
    ),
    key(
        "settle_seconds",
        Some("settle_seconds"),
        Some("TALLY_SETTLE_SECONDS"),
        Type::Int,
        "20",
    ),
    key(
        "no_pre_images",
        Some("no_pre_images"),
        Some("TALLY_NO_PRE_IMAGES"),
        Type::Bool,
        "false",
    ),
    key(
        "lease_ttl_seconds",
        Some("lease_ttl"),
        Some("TALLY_LEASE_TTL"),
        Type::Int,
        "15",
    ),
    key(
        "give_up_after_seconds",
        Some("give_up_after"),
        Some("TALLY_GIVE_UP_AFTER"),
        Type::Int,
        "300",
    ),
];

/// Looks a key up by its file name.
pub fn key_named(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

macro_rules! file_config {
    ($($name:ident: $ty:ty),* $(,)?) => {
        /// The file as written: every key optional, unknown keys refused.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $name: Option<$ty>,)*
        }

        impl FileConfig {
            /// The keys the file sets, each spelled as its flag would take it.
            pub fn entries(&self) -> BTreeMap<&'static str, String> {
                let mut out = BTreeMap::new();
                $(if let Some(v) = &self.$name {
                    out.insert(stringify!($name), v.to_string());
                })*
                out
            }
        }
    };
}

file_config! {
    mongodb_uri: String,
    database: String,
    timezone: String,
    quiet: bool,
    log: String,
    log_format: String,
    http_addr: String,
    daily_report_at: String,
    snapshot_at: String,
    monthly_at: String,
    initial_days: u64,
    settle_seconds: u64,
    no_pre_images: bool,
    lease_ttl_seconds: u64,
    give_up_after_seconds: u64,
}

pub use crate::ops::logging::LogFormat;

/// Where an effective value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(&'static str),
    File,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One effective setting.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: &'static Key,
    pub value: String,
    pub source: Source,
}

/// The effective configuration: every key with its value and source, plus
/// typed values of the settings no flag carries yet.
#[derive(Clone, Debug)]
pub struct Settings {
    pub file: Option<PathBuf>,
    pub entries: Vec<Entry>,
    pub log: String,
    pub log_format: LogFormat,
    /// `None`: `off`.
    pub http_addr: Option<SocketAddr>,
    pub lease_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        let entries = KEYS
            .iter()
            .map(|k| Entry {
                key: k,
                value: k.default.to_owned(),
                source: Source::Default,
            })
            .collect();
        Settings::typed(None, entries).expect("built-in defaults are valid")
    }
}

impl Settings {
    /// Checks the settings no flag carries yet and keeps their typed values;
    /// an error names where the bad value came from (variable, file and key).
    fn typed(file: Option<PathBuf>, entries: Vec<Entry>) -> Result<Settings> {
        let get = |name: &str| -> (&Entry, String) {
            let e = entries
                .iter()
                .find(|e| e.key.name == name)
                .expect("every key resolved");
            let label = match e.source {
                Source::Env(var) => var.to_owned(),
                Source::File => format!(
                    "{}: {name}",
                    file.as_deref().unwrap_or(Path::new("")).display()
                ),
                Source::Flag => format!("--{}", name.replace('_', "-")),
                Source::Default => name.to_owned(),
            };
            (e, label)
        };
        let parsed = |name: &str| -> Result<&str> {
            let (e, label) = get(name);
            validate(name, &e.value).map_err(|m| anyhow!("{label}: {m}"))?;
            Ok(e.value.as_str())
        };
        let log = parsed("log")?.to_owned();
        let log_format = match parsed("log_format")? {
            "json" => LogFormat::Json,
            _ => LogFormat::Text,
        };
        let http_addr = parsed("http_addr")?.parse().ok();
        let lease_ttl =
            Duration::from_secs(seconds(parsed("lease_ttl_seconds")?).expect("validated"));
        Ok(Settings {
            file,
            entries,
            log,
            log_format,
            http_addr,
            lease_ttl,
        })
    }

    /// The effective value of `name` as a flag would spell it.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.entry(name).map(|e| e.value.as_str())
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key.name == name)
    }

    /// The effective configuration as TOML, the URI's credentials redacted,
    /// each line commented with where its value came from.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# tally's effective configuration.\n\
             # Precedence: flags > TALLY_* environment > file > defaults.\n",
        );
        match &self.file {
            Some(p) => out.push_str(&format!("# file: {}\n", p.display())),
            None => out.push_str("# file: none (--config / TALLY_CONFIG not set)\n"),
        }
        for e in &self.entries {
            let shown = if e.key.name == "mongodb_uri" {
                redact_uri(&e.value)
            } else {
                e.value.clone()
            };
            let literal = match e.key.ty {
                Type::Str => toml::Value::String(shown).to_string(),
                Type::Int | Type::Bool => shown,
            };
            out.push_str(&format!("{} = {literal}  # {}\n", e.key.name, e.source));
        }
        out
    }
}

/// `tally config` takes the run flags too, so that it shows what `tally
/// run` would use with the same command line and environment.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// Why the command line could not become a [`Cli`].
#[derive(Debug)]
pub enum LoadError {
    /// Clap's own error (usage, `--help`, `--version`): `exit()` it.
    Usage(clap::Error),
    /// A bad configuration file or value: one line, exit 2.
    Invalid(anyhow::Error),
}

/// Parses the command line, reads the configuration file it names, and
/// returns the command with flags > environment > file > defaults applied.
pub fn parse_cli<I, T>(args: I) -> Result<Cli, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Cli::command()
        .try_get_matches_from(&args)
        .map_err(LoadError::Usage)?;
    let path = first.get_one::<PathBuf>("config").cloned();
    let file = match &path {
        Some(p) => read_file(p).map_err(LoadError::Invalid)?,
        None => BTreeMap::new(),
    };
    let mut cmd = Cli::command();
    for (name, value) in &file {
        if let Some(id) = key_named(name).and_then(|k| k.arg) {
            cmd = set_default(cmd, id, value);
        }
    }
    let mut matches = cmd.try_get_matches_from(&args).map_err(|e| {
        // The first parse passed, so the file's value is what clap refused.
        let text = e.to_string();
        let line = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        let shown = path.as_deref().unwrap_or(Path::new("")).display();
        LoadError::Invalid(anyhow!("{shown}: {line}"))
    })?;
    // Resolve first: building the Cli takes the values out of the matches.
    let settings = resolve(&matches, path, &file).map_err(LoadError::Invalid)?;
    let mut cli = Cli::from_arg_matches_mut(&mut matches).map_err(LoadError::Usage)?;
    cli.settings = settings;
    Ok(cli)
}

/// Makes `value` the default of every argument with this id (global
/// arguments live on the root, the others on their subcommands).
fn set_default(mut cmd: clap::Command, id: &'static str, value: &str) -> clap::Command {
    let has = |c: &clap::Command| c.get_arguments().any(|a| a.get_id() == id);
    if has(&cmd) {
        let v = value.to_owned();
        cmd = cmd.mut_arg(id, move |a| a.default_value(v));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| has(s))
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        let v = value.to_owned();
        cmd = cmd.mut_subcommand(name, move |s| s.mut_arg(id, move |a| a.default_value(v)));
    }
    cmd
}

/// Reads and validates the file; returns the keys it sets.
pub fn read_file(path: &Path) -> Result<BTreeMap<&'static str, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let parsed: FileConfig = toml::from_str(&text).map_err(|e| {
        let (line, key) = e
            .span()
            .map(|s| locate(&text, s.start))
            .unwrap_or((0, None));
        let at = if line > 0 {
            format!(":{line}")
        } else {
            String::new()
        };
        let message = e.message().trim();
        match message.strip_prefix("unknown field") {
            Some(rest) => anyhow!("{}{at}: unknown key{rest}", path.display()),
            None => {
                let key = key.map(|k| format!(" {k}:")).unwrap_or_default();
                anyhow!("{}{at}:{key} {message}", path.display())
            }
        }
    })?;
    let entries = parsed.entries();
    for (name, value) in &entries {
        validate(name, value).map_err(|m| anyhow!("{}: {name}: {m}", path.display()))?;
    }
    Ok(entries)
}

/// The 1-based line of byte `offset` and the key written on that line.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let before = &text[..offset.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    (line_no, key)
}

/// Whole seconds, `15` or `15s` (a flag may spell a duration with its unit).
fn seconds(value: &str) -> Option<u64> {
    value.strip_suffix('s').unwrap_or(value).parse().ok()
}

/// Checks one value as its key expects it. Messages never echo the URI.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    match name {
        "mongodb_uri" => {
            if value.starts_with("mongodb://") || value.starts_with("mongodb+srv://") {
                Ok(())
            } else {
                Err("expected a mongodb:// or mongodb+srv:// connection string".to_owned())
            }
        }
        "database" => {
            if value.is_empty() || value.contains(['/', '\\', '.', ' ', '"', '$']) {
                Err(format!("{value:?} is not a database name"))
            } else {
                Ok(())
            }
        }
        "timezone" => Calendar::from_name(value).map(|_| ()),
        "daily_report_at" | "snapshot_at" | "monthly_at" => schedule::parse_time(value).map(|_| ()),
        "initial_days" | "settle_seconds" => value
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| format!("{value:?} is not a whole number")),
        "lease_ttl_seconds" | "give_up_after_seconds" => match seconds(value) {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(format!(
                "{value:?} is not a number of seconds of at least 1"
            )),
        },
        "quiet" | "no_pre_images" => value
            .parse::<bool>()
            .map(|_| ())
            .map_err(|_| format!("{value:?} is not true or false")),
        "http_addr" => match value {
            "off" => Ok(()),
            _ => value
                .parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|_| format!("{value:?} is not an address such as 127.0.0.1:9187, or off")),
        },
        "log_format" => match value {
            "text" | "json" => Ok(()),
            _ => Err(format!("{value:?} is not a log format: use text or json")),
        },
        "log" => tracing_subscriber::EnvFilter::try_new(value)
            .map(|_| ())
            .map_err(|e| format!("{value:?} is not a log filter: {e}")),
        _ => Err(format!("unknown key {name:?}")),
    }
}

/// Every key's effective value: from clap where the command has the
/// argument, else environment, file, default in that order.
fn resolve(
    matches: &ArgMatches,
    file_path: Option<PathBuf>,
    file: &BTreeMap<&'static str, String>,
) -> Result<Settings> {
    let sub = matches.subcommand().map(|(_, m)| m);
    let mut entries = Vec::with_capacity(KEYS.len());
    for k in KEYS {
        let from_clap = k.arg.and_then(|id| {
            // A global given after the subcommand is a flag in the
            // subcommand's matches: look there first.
            [sub, Some(matches)]
                .into_iter()
                .flatten()
                .find_map(|m| Some((m.try_get_raw(id).ok()??, m.value_source(id)?)))
        });
        let (value, source) = if let Some((raw, source)) = from_clap {
            let value = raw
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let source = match source {
                ValueSource::CommandLine => Source::Flag,
                ValueSource::EnvVariable => Source::Env(k.env.unwrap_or("?")),
                _ if file.contains_key(k.name) => Source::File,
                _ => Source::Default,
            };
            (value, source)
        } else if let Some((var, v)) = k
            .env
            .and_then(|var| std::env::var(var).ok().map(|v| (var, v)))
            .filter(|(_, v)| !v.is_empty())
        {
            (v, Source::Env(var))
        } else if let Some(v) = file.get(k.name) {
            (v.clone(), Source::File)
        } else {
            (k.default.to_owned(), Source::Default)
        };
        entries.push(Entry {
            key: k,
            value,
            source,
        });
    }
    Settings::typed(file_path, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_agree_with_clap() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run").clone();
        for k in KEYS {
            let Some(id) = k.arg else { continue };
            let arg = cmd
                .get_arguments()
                .chain(run.get_arguments())
                .find(|a| a.get_id() == id);
            let Some(arg) = arg else { continue };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                assert_eq!(
                    defaults,
                    vec![k.default.to_owned()],
                    "default of {}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn every_key_is_a_file_field_and_validates_its_default() {
        let all = FileConfig::default().entries();
        assert!(all.is_empty());
        for k in KEYS {
            let doc = match k.ty {
                Type::Str => format!("{} = {:?}", k.name, k.default),
                _ => format!("{} = {}", k.name, k.default),
            };
            let f: FileConfig = toml::from_str(&doc).expect(&doc);
            assert_eq!(f.entries().get(k.name).map(String::as_str), Some(k.default));
            validate(k.name, k.default).expect(k.name);
        }
    }

    #[test]
    fn a_type_error_names_line_and_key() {
        assert_eq!(
            locate("a = 1\ninitial_days = \"x\"\n", 21),
            (2, Some("initial_days".to_owned()))
        );
    }

    #[test]
    fn lease_ttl_takes_plain_or_suffixed_seconds() {
        assert_eq!(seconds("15"), Some(15));
        assert_eq!(seconds("15s"), Some(15));
        assert!(validate("lease_ttl_seconds", "0").is_err());
        assert!(validate("lease_ttl_seconds", "1m").is_err());
    }

    #[test]
    fn uri_errors_never_echo_the_uri() {
        let e = validate("mongodb_uri", "http://u:s3cret@h").unwrap_err();
        assert!(!e.contains("s3cret"));
    }
}
