//! Every setting of tally, each defined once in the `settings!` list below:
//! its file key, flag, `TALLY_*` variable, default, help and parser. From
//! that list come [`SETTINGS`] (the table the rest reads), the clap
//! arguments ([`GlobalFlags`], [`RunFlags`]), the file's shape
//! ([`FileConfig`]) and the typed settings ([`Settings`]), whose rows
//! `tally config` prints. `cli::config` joins flags, environment, file and
//! defaults into them.
//!
//! A file key is the flag's name with `_` for `-`, save where it spells out
//! a unit (`lease_ttl_seconds` for `--lease-ttl`).
//!
//! Invariant: every value, wherever it came from, passes its setting's
//! parser before a command runs, and an error names where the value came
//! from (the flag, the variable, or the file and key). The MongoDB URI is
//! never echoed in an error.
//!
//! May use: core, mongo, ops (the parsers and types of the values); not the
//! rest of `cli`, which uses this.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use chrono::NaiveTime;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use serde::Deserialize;

use crate::core::calendar::Calendar;
use crate::core::schedule::parse_time;
use crate::ops::http::{parse_addr, HttpAddr};
use crate::ops::logging::LogFormat;

/// The help heading of the global flags: in a subcommand's `--help` they
/// come after the subcommand's own flags.
pub const GLOBAL_HEADING: &str = "Global options";

/// How a value is written in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
}

/// Which commands take a setting's flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every command (a global flag).
    Global,
    /// `tally run`, and `tally config`, which shows what run would use.
    Run,
}

/// One setting, as the `settings!` list defines it.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The file key, the row of `tally config`, the clap argument id.
    pub key: &'static str,
    /// The long flag without its dashes. `None` only for `log`: the logger
    /// reads `TALLY_LOG` itself (`ops::logging::init`), so a flag could not
    /// win over the variable.
    pub flag: Option<&'static str>,
    pub env: &'static str,
    pub scope: Scope,
    pub ty: Type,
    pub default: &'static str,
    /// The flag's help, and what the key means.
    pub help: &'static str,
    /// The setting's parser, its value dropped: `Err` says what to fix.
    pub check: fn(&str) -> Result<(), String>,
}

impl Setting {
    /// The URI may carry a password: never echoed, printed redacted.
    pub fn is_secret(&self) -> bool {
        self.key == "mongodb_uri"
    }

    /// The clap argument of the setting (`None` without a flag).
    pub fn arg(&'static self) -> Option<Arg> {
        let flag = self.flag?;
        let mut arg = Arg::new(self.key).long(flag).env(self.env).help(self.help);
        arg = match self.ty {
            Type::Bool => arg.action(ArgAction::SetTrue),
            Type::Str | Type::Int => arg
                .value_name(flag.to_uppercase().replace('-', "_"))
                .default_value(self.default)
                .value_parser(Check(self)),
        };
        if self.scope == Scope::Global {
            arg = arg.global(true).help_heading(GLOBAL_HEADING);
        }
        if self.is_secret() {
            arg = arg.hide_env_values(true);
        }
        Some(arg)
    }
}

/// The Rust type a key is read as from TOML.
trait FileValue: ToString {
    const TYPE: Type;
}

impl FileValue for String {
    const TYPE: Type = Type::Str;
}

impl FileValue for u64 {
    const TYPE: Type = Type::Int;
}

impl FileValue for bool {
    const TYPE: Type = Type::Bool;
}

/// Writes, from one entry per setting, [`SETTINGS`], [`FileConfig`] and
/// [`Settings`] (a typed field per setting).
macro_rules! settings {
    ($(
        $key:ident: $ty:ty {
            flag: $flag:expr,
            env: $env:literal,
            scope: $scope:ident,
            file: $file:ty,
            default: $default:literal,
            parse: $parse:expr,
            help: $help:literal $(,)?
        }
    ),* $(,)?) => {
        /// Every setting, in the order `tally config` prints them.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            key: stringify!($key),
            flag: $flag,
            env: $env,
            scope: Scope::$scope,
            ty: <$file as FileValue>::TYPE,
            default: $default,
            help: $help,
            check: |value| ($parse)(value).map(|_| ()),
        }),*];

        /// The file as written: every key optional, unknown keys refused.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $key: Option<$file>,)*
        }

        impl FileConfig {
            /// The keys the file sets, each spelled as its flag would take it.
            pub fn entries(&self) -> BTreeMap<&'static str, String> {
                let mut out = BTreeMap::new();
                $(if let Some(v) = &self.$key {
                    out.insert(stringify!($key), v.to_string());
                })*
                out
            }
        }

        /// The effective configuration: every setting typed, and as `tally
        /// config` prints it (value and source).
        #[derive(Clone, Debug)]
        pub struct Settings {
            /// The configuration file read, if any.
            pub file: Option<PathBuf>,
            /// Every setting's value as a flag spells it, with its source.
            pub entries: Vec<Entry>,
            $(#[doc = $help] pub $key: $ty,)*
        }

        impl Settings {
            /// Parses every entry into its field; an error names where the
            /// bad value came from.
            pub(super) fn typed(file: Option<PathBuf>, entries: Vec<Entry>) -> Result<Settings> {
                Ok(Settings {
                    $($key: parsed(&entries, file.as_deref(), stringify!($key), $parse)?,)*
                    file,
                    entries,
                })
            }
        }
    };
}

settings! {
    mongodb_uri: String {
        flag: Some("mongodb-uri"),
        env: "TALLY_MONGODB_URI",
        scope: Global,
        file: String,
        default: "mongodb://127.0.0.1:27017",
        parse: mongodb_uri,
        help: "MongoDB connection string (credentials are never logged)",
    },
    database: String {
        flag: Some("database"),
        env: "TALLY_DATABASE",
        scope: Global,
        file: String,
        default: "coin",
        parse: database,
        help: "Database holding coin's collections and tally's output",
    },
    timezone: Calendar {
        flag: Some("timezone"),
        env: "TALLY_TIMEZONE",
        scope: Global,
        file: String,
        default: "UTC",
        parse: Calendar::from_name,
        help: "Reporting time zone, an IANA name",
    },
    quiet: bool {
        flag: Some("quiet"),
        env: "TALLY_QUIET",
        scope: Global,
        file: bool,
        default: "false",
        parse: boolean,
        help: "No progress bar or progress lines",
    },
    log: String {
        flag: None,
        env: "TALLY_LOG",
        scope: Global,
        file: String,
        default: "info",
        parse: log_filter,
        help: "Log filter, tracing-subscriber syntax such as tally=debug,info",
    },
    log_format: LogFormat {
        flag: Some("log-format"),
        env: "TALLY_LOG_FORMAT",
        scope: Global,
        file: String,
        default: "text",
        parse: log_format,
        help: "Log lines on stderr: text, or json for one JSON object per line",
    },
    http_addr: HttpAddr {
        flag: Some("http-addr"),
        env: "TALLY_HTTP_ADDR",
        scope: Run,
        file: String,
        default: "127.0.0.1:9187",
        parse: parse_addr,
        help: "Address of the HTTP endpoint (/healthz, /readyz, /metrics, status \
               page), or `off`. Port 0 picks a free port (logged)",
    },
    ready_max_lag: u64 {
        flag: Some("ready-max-lag"),
        env: "TALLY_READY_MAX_LAG",
        scope: Run,
        file: u64,
        default: "30",
        parse: whole_number,
        help: "Most stream lag, in seconds, at which /readyz still answers 200",
    },
    daily_report_at: NaiveTime {
        flag: Some("daily-report-at"),
        env: "TALLY_DAILY_REPORT_AT",
        scope: Run,
        file: String,
        default: "23:59",
        parse: parse_time,
        help: "Local time at which the day's reports become final (HH:MM)",
    },
    snapshot_at: NaiveTime {
        flag: Some("snapshot-at"),
        env: "TALLY_SNAPSHOT_AT",
        scope: Run,
        file: String,
        default: "00:00",
        parse: parse_time,
        help: "Local time at which the snapshots of the day just ended are written",
    },
    monthly_at: NaiveTime {
        flag: Some("monthly-at"),
        env: "TALLY_MONTHLY_AT",
        scope: Run,
        file: String,
        default: "00:01",
        parse: parse_time,
        help: "Local time on the 1st at which last month's summaries are written",
    },
    initial_days: u64 {
        flag: Some("initial-days"),
        env: "TALLY_INITIAL_DAYS",
        scope: Run,
        file: u64,
        default: "60",
        parse: whole_number,
        help: "Days before today built on a first start",
    },
    settle_seconds: u64 {
        flag: Some("settle-seconds"),
        env: "TALLY_SETTLE_SECONDS",
        scope: Run,
        file: u64,
        default: "20",
        parse: whole_number,
        help: "Seconds a balance change no transaction explains must persist before \
               it is applied (20 s keeps the whole path within 30 s: contract §4.4)",
    },
    no_pre_images: bool {
        flag: Some("no-pre-images"),
        env: "TALLY_NO_PRE_IMAGES",
        scope: Run,
        file: bool,
        default: "false",
        parse: boolean,
        help: "Neither enable nor ask for change-stream pre-images",
    },
    command_stats: bool {
        flag: Some("command-stats"),
        env: "TALLY_COMMAND_STATS",
        scope: Run,
        file: bool,
        default: "false",
        parse: boolean,
        help: "Count the commands sent to MongoDB and their round trips, by command \
               and collection (tally_server_commands_total and \
               tally_server_command_seconds_total); for diagnosis: the driver then \
               copies every command and reply",
    },
    lease_ttl_seconds: u64 {
        flag: Some("lease-ttl"),
        env: "TALLY_LEASE_TTL",
        scope: Run,
        file: u64,
        default: "15",
        parse: lease_ttl,
        help: "Seconds the leader lease lasts without renewal (renewed every third): \
               a standby (or a restarted instance) leads within this time, plus up to \
               a third of it, of the leader's death",
    },
    give_up_after_seconds: u64 {
        flag: Some("give-up-after"),
        env: "TALLY_GIVE_UP_AFTER",
        scope: Run,
        file: u64,
        default: "300",
        parse: seconds_at_least_1,
        help: "Seconds a failure of the active instance (a server error, a timeout, \
               the server away) may persist, retried with pauses, before `tally run` \
               exits with status 3 for its supervisor to restart it",
    },
}

/// Looks a setting up by its file key.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

// ---------------------------------------------------------------------------
// The parsers. Messages never echo the URI.
// ---------------------------------------------------------------------------

fn mongodb_uri(value: &str) -> Result<String, String> {
    if value.starts_with("mongodb://") || value.starts_with("mongodb+srv://") {
        Ok(value.to_owned())
    } else {
        Err(
            "invalid MongoDB URI: expected a mongodb:// or mongodb+srv:// connection string"
                .to_owned(),
        )
    }
}

fn database(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(['/', '\\', '.', ' ', '"', '$']) {
        Err(format!("{value:?} is not a database name"))
    } else {
        Ok(value.to_owned())
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not true or false"))
}

fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("{value:?} is not a log filter: {e}"))
}

fn log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{value:?} is not a log format: use text or json")),
    }
}

fn whole_number(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))
}

/// Whole seconds, `15` or `15s`.
fn seconds(value: &str) -> Option<u64> {
    value.strip_suffix('s').unwrap_or(value).parse().ok()
}

fn seconds_at_least_1(value: &str) -> Result<u64, String> {
    match seconds(value) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a number of seconds of at least 1"
        )),
    }
}

/// At most an hour: a longer lease leaves the reports stale that long
/// after the leader dies.
fn lease_ttl(value: &str) -> Result<u64, String> {
    match seconds_at_least_1(value)? {
        n if n > 3600 => Err(format!("{value:?} is more than 3600 seconds (an hour)")),
        n => Ok(n),
    }
}

// ---------------------------------------------------------------------------
// The clap arguments
// ---------------------------------------------------------------------------

/// A setting's parser as clap's: the value stays a string (its typed value
/// is [`Settings`]'), a refusal says what to fix and never shows the URI.
#[derive(Clone)]
struct Check(&'static Setting);

impl TypedValueParser for Check {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let flag = arg.map_or_else(String::new, |a| format!(" for '{a}'"));
        let Some(text) = value.to_str() else {
            return Err(
                clap::Error::raw(ErrorKind::InvalidUtf8, format!("invalid UTF-8{flag}\n"))
                    .with_cmd(cmd),
            );
        };
        (self.0.check)(text).map(|()| text.to_owned()).map_err(|m| {
            let shown = if self.0.is_secret() {
                String::new()
            } else {
                format!(" '{text}'")
            };
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value{shown}{flag}: {m}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

fn add_args(mut cmd: clap::Command, scope: Scope) -> clap::Command {
    for s in SETTINGS.iter().filter(|s| s.scope == scope) {
        if let Some(arg) = s.arg() {
            cmd = cmd.arg(arg);
        }
    }
    cmd
}

/// Makes a unit struct the clap arguments of one scope's settings; their
/// values are read back by `config::resolve`, not by the struct.
macro_rules! flag_group {
    ($(#[$doc:meta])* $name:ident, $scope:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl FromArgMatches for $name {
            fn from_arg_matches(_: &ArgMatches) -> Result<Self, clap::Error> {
                Ok($name)
            }

            fn update_from_arg_matches(&mut self, _: &ArgMatches) -> Result<(), clap::Error> {
                Ok(())
            }
        }

        impl Args for $name {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                add_args(cmd, Scope::$scope)
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                add_args(cmd, Scope::$scope)
            }
        }
    };
}

flag_group!(
    /// The flags of the global settings, under [`GLOBAL_HEADING`].
    GlobalFlags,
    Global
);
flag_group!(
    /// The flags of `tally run`'s settings.
    RunFlags,
    Run
);

// ---------------------------------------------------------------------------
// The effective configuration
// ---------------------------------------------------------------------------

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
    pub setting: &'static Setting,
    pub value: String,
    pub source: Source,
}

impl Entry {
    /// Where the value came from, for an error: the flag, the variable, or
    /// the file and key.
    fn label(&self, file: Option<&Path>) -> String {
        let s = self.setting;
        match self.source {
            Source::Flag => format!("--{}", s.flag.unwrap_or(s.key)),
            Source::Env(var) => var.to_owned(),
            Source::File => format!("{}: {}", file.unwrap_or(Path::new("")).display(), s.key),
            Source::Default => s.key.to_owned(),
        }
    }
}

/// The entry of `key` parsed by `parse`.
fn parsed<T>(
    entries: &[Entry],
    file: Option<&Path>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T> {
    let e = entries
        .iter()
        .find(|e| e.setting.key == key)
        .expect("every setting resolved");
    parse(&e.value).map_err(|m| anyhow!("{}: {m}", e.label(file)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_setting_has_a_flag_env_file_key_and_help() {
        let (mut keys, mut flags, mut envs) = (HashSet::new(), HashSet::new(), HashSet::new());
        for s in SETTINGS {
            let snake = |t: &str| t.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            assert!(!s.key.is_empty() && snake(s.key), "file key {:?}", s.key);
            assert!(keys.insert(s.key), "{} defined twice", s.key);
            // `log` alone has no flag: see `Setting::flag`.
            match s.flag {
                Some(f) => {
                    assert!(
                        !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                        "{}: flag {f:?}",
                        s.key
                    );
                    assert!(flags.insert(f), "flag --{f} used twice");
                }
                None => assert_eq!(s.key, "log", "{} has no flag", s.key),
            }
            let var = s.env.strip_prefix("TALLY_").unwrap_or("");
            assert!(
                !var.is_empty() && var.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{}: variable {:?}",
                s.key,
                s.env
            );
            assert!(envs.insert(s.env), "{} used twice", s.env);
            assert!(!s.help.trim().is_empty(), "{} has no help", s.key);
            (s.check)(s.default).unwrap_or_else(|m| panic!("default of {}: {m}", s.key));
        }
    }

    #[test]
    fn lease_ttl_takes_plain_or_suffixed_seconds_up_to_an_hour() {
        assert_eq!(lease_ttl("15"), Ok(15));
        assert_eq!(lease_ttl("15s"), Ok(15));
        assert_eq!(lease_ttl("3600"), Ok(3600));
        assert!(lease_ttl("0").is_err());
        assert!(lease_ttl("1m").is_err());
        assert!(lease_ttl("3601").is_err());
    }

    #[test]
    fn uri_errors_never_echo_the_uri() {
        let e = mongodb_uri("http://u:s3cret@h").unwrap_err();
        assert!(!e.contains("s3cret"));
    }
}
