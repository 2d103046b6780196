//! The effective configuration: clap parses the flags (and their
//! `TALLY_*` variables), the configuration file it names (`--config
//! tally.toml`, or `TALLY_CONFIG`) is read and checked, and every setting is
//! resolved — flags > environment > file > defaults — and parsed into the
//! [`Cli`]'s [`Settings`]; `tally config` prints them with their sources.
//!
//! The settings themselves — flags, variables, keys, defaults, parsers,
//! help — are defined once, in `cli::settings`; this file only joins the
//! sources.
//!
//! Invariant: a file value never overrides a flag or a variable, and the
//! file is checked whole — every key, with the file, line and key named —
//! whether or not the command uses it. The MongoDB URI is printed only
//! redacted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::settings::{setting, Entry, FileConfig, Setting, Settings, Source, Type, SETTINGS};
use crate::cli::Cli;
use crate::mongo::connect::redact_uri;

/// Why the command line could not become a [`Cli`].
#[derive(Debug)]
pub enum LoadError {
    /// Clap's own error (usage, a bad flag, `--help`, `--version`): `exit()`
    /// it (status 2 for an error, 0 for help).
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
    let mut matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(LoadError::Usage)?;
    let path = matches.get_one::<PathBuf>("config").cloned();
    let file = match &path {
        Some(p) => read_file(p).map_err(LoadError::Invalid)?,
        None => BTreeMap::new(),
    };
    let settings = resolve(
        |s| given(&matches, s),
        |var| std::env::var(var).ok().filter(|v| !v.is_empty()),
        path,
        &file,
    )
    .map_err(LoadError::Invalid)?;
    let mut cli = Cli::from_arg_matches_mut(&mut matches).map_err(LoadError::Usage)?;
    cli.global.log_format = settings.log_format;
    cli.settings = settings;
    Ok(cli)
}

/// The value of the setting's flag when the command line has it (clap has
/// already parsed it, and its variable: those are read by `resolve`).
fn given(matches: &ArgMatches, s: &Setting) -> Option<String> {
    // A global given after the subcommand is in the subcommand's matches.
    let sub = matches.subcommand().map(|(_, m)| m);
    [sub, Some(matches)].into_iter().flatten().find_map(|m| {
        // Ask for the raw values first: an id the command lacks is an error
        // there, but a panic in `value_source`.
        let raw = m.try_get_raw(s.key).ok()??;
        if m.value_source(s.key)? != ValueSource::CommandLine {
            return None;
        }
        Some(
            raw.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
        )
    })
}

/// Every setting's effective value: its flag (`flag` gives the value of a
/// setting's flag when the command line has it), else its variable (`env`
/// looks one up), else the file, else the default; then every value parsed.
pub fn resolve(
    flag: impl Fn(&Setting) -> Option<String>,
    env: impl Fn(&str) -> Option<String>,
    file_path: Option<PathBuf>,
    file: &BTreeMap<&'static str, String>,
) -> Result<Settings> {
    let entries = SETTINGS
        .iter()
        .map(|s| {
            let (value, source) = if let Some(v) = flag(s) {
                (v, Source::Flag)
            } else if let Some(v) = env(s.env) {
                (v, Source::Env(s.env))
            } else if let Some(v) = file.get(s.key) {
                (v.clone(), Source::File)
            } else {
                (s.default.to_owned(), Source::Default)
            };
            Entry {
                setting: s,
                value,
                source,
            }
        })
        .collect();
    Settings::typed(file_path, entries)
}

impl Default for Settings {
    fn default() -> Settings {
        resolve(|_| None, |_| None, None, &BTreeMap::new()).expect("built-in defaults are valid")
    }
}

impl Settings {
    /// The effective value of `key` as a flag would spell it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| e.value.as_str())
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.setting.key == key)
    }

    /// The effective configuration as TOML, the URI's credentials redacted,
    /// each line commented with where its value came from. It reads back
    /// as a configuration file.
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
            let shown = if e.setting.is_secret() {
                redact_uri(&e.value)
            } else {
                e.value.clone()
            };
            let literal = match e.setting.ty {
                Type::Str => toml::Value::String(shown).to_string(),
                Type::Int | Type::Bool => shown,
            };
            out.push_str(&format!("{} = {literal}  # {}\n", e.setting.key, e.source));
        }
        out
    }
}

/// Reads and checks the file; returns the keys it sets.
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
    for (key, value) in &entries {
        let s = setting(key).expect("a file field is a setting");
        (s.check)(value).map_err(|m| anyhow!("{}: {key}: {m}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::{Scope, GLOBAL_HEADING};

    /// The commands that take a setting's flag.
    fn commands_of(scope: Scope) -> &'static [&'static str] {
        match scope {
            Scope::Global => &[
                "init",
                "seed",
                "backfill",
                "reconcile",
                "run",
                "finalize",
                "status",
                "config",
            ],
            Scope::Run => &["run", "config"],
        }
    }

    #[test]
    fn every_flag_is_an_argument_of_its_commands_as_the_table_says() {
        let mut cmd = Cli::command();
        cmd.build();
        for s in SETTINGS {
            let Some(flag) = s.flag else { continue };
            for name in commands_of(s.scope) {
                let sub = cmd.find_subcommand(name).expect(name);
                let arg = sub
                    .get_arguments()
                    .find(|a| a.get_id() == s.key)
                    .unwrap_or_else(|| panic!("tally {name} lacks --{flag}"));
                assert_eq!(arg.get_long(), Some(flag), "{}", s.key);
                assert_eq!(
                    arg.get_env(),
                    Some(std::ffi::OsStr::new(s.env)),
                    "{}",
                    s.key
                );
                assert_eq!(
                    arg.get_help().map(|h| h.to_string()),
                    Some(s.help.to_owned())
                );
                let defaults: Vec<_> = arg.get_default_values().iter().collect();
                match s.ty {
                    Type::Bool => assert_eq!(defaults, ["false"], "{}", s.key),
                    _ => assert_eq!(defaults, [s.default], "{}", s.key),
                }
                let heading = (s.scope == Scope::Global).then_some(GLOBAL_HEADING);
                assert_eq!(arg.get_help_heading(), heading, "{} in tally {name}", s.key);
            }
        }
    }

    #[test]
    fn a_subcommands_help_lists_its_own_flags_before_the_global_ones() {
        let mut cmd = Cli::command();
        cmd.build();
        for (name, own) in [("run", "--daily-report-at"), ("backfill", "--from")] {
            let help = cmd
                .find_subcommand_mut(name)
                .expect(name)
                .render_long_help()
                .to_string();
            let at = |text: &str| {
                help.find(text)
                    .unwrap_or_else(|| panic!("{text} not in tally {name} --help:\n{help}"))
            };
            let heading = at(&format!("{GLOBAL_HEADING}:"));
            assert!(at(own) < heading, "tally {name} --help:\n{help}");
            for global in [
                "--mongodb-uri",
                "--database",
                "--timezone",
                "--log-format",
                "--config",
            ] {
                assert!(
                    at(global) > heading,
                    "{global} in tally {name} --help:\n{help}"
                );
            }
        }
    }

    #[test]
    fn a_bad_flag_exits_2_saying_what_to_fix() {
        let usage = |args: &[&str]| match parse_cli(args) {
            Err(LoadError::Usage(e)) => e,
            other => panic!("{args:?}: {other:?}"),
        };
        let e = usage(&["tally", "run", "--lease-ttl", "0"]);
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("--lease-ttl") && text.contains("at least 1"),
            "{text}"
        );
        let e = usage(&["tally", "status", "--mongodb-uri", "http://u:s3cret@h"]);
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("mongodb://") && !text.contains("s3cret"),
            "{text}"
        );
    }

    /// A temporary file holding `text`, removed on drop.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str, text: &str) -> Temp {
            let p = std::env::temp_dir()
                .join(format!("tally-settings-{}-{name}.toml", std::process::id()));
            std::fs::write(&p, text).expect("temp file");
            Temp(p)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }

    /// A value other than the default, so that a key lost on the way would
    /// show.
    fn other_value(s: &Setting) -> toml::Value {
        match s.key {
            "mongodb_uri" => "mongodb://db.example:27017/?replicaSet=rs0".into(),
            "database" => "ledger".into(),
            "timezone" => "Europe/Paris".into(),
            "log" => "tally=debug,info".into(),
            "log_format" => "json".into(),
            "http_addr" => "0.0.0.0:9188".into(),
            "daily_report_at" | "snapshot_at" | "monthly_at" => "03:30".into(),
            _ => match s.ty {
                Type::Bool => true.into(),
                Type::Int => (s.default.parse::<i64>().expect("int default") + 1).into(),
                Type::Str => panic!("give {} a value in this test", s.key),
            },
        }
    }

    #[test]
    fn every_file_key_round_trips_through_tally_config() {
        let mut doc = toml::Table::new();
        for s in SETTINGS {
            doc.insert(s.key.to_owned(), other_value(s));
        }
        let written = Temp::new("written", &doc.to_string());
        let file = read_file(&written.0).expect("a file of every key loads");
        assert_eq!(file.len(), SETTINGS.len(), "every key read: {file:?}");
        let shown = resolve(|_| None, |_| None, Some(written.0.clone()), &file)
            .expect("valid")
            .render();

        let printed: toml::Table = shown.parse().expect("tally config prints TOML");
        assert_eq!(printed, doc, "tally config prints what the file holds");
        for s in SETTINGS {
            let line = shown
                .lines()
                .find(|l| l.starts_with(&format!("{} = ", s.key)))
                .unwrap_or_else(|| panic!("{} missing from:\n{shown}", s.key));
            assert!(line.ends_with("  # file"), "{line}");
            assert_ne!(file[s.key], s.default, "{} kept its value", s.key);
        }
        // And the output is itself a configuration file.
        let again = Temp::new("again", &shown);
        assert_eq!(read_file(&again.0).expect("reads back"), file);
    }

    #[test]
    fn a_flag_beats_the_environment_beats_the_file_beats_the_default() {
        let file = BTreeMap::from([("database", "f".to_owned()), ("timezone", "UTC".to_owned())]);
        let s = resolve(
            |s| (s.key == "database").then(|| "flag".to_owned()),
            |var| {
                ["TALLY_DATABASE", "TALLY_TIMEZONE"]
                    .contains(&var)
                    .then(|| "Asia/Tokyo".to_owned())
            },
            None,
            &file,
        )
        .expect("valid");
        assert_eq!(
            (s.database.as_str(), s.entry("database").unwrap().source),
            ("flag", Source::Flag)
        );
        assert_eq!(s.timezone.name(), "Asia/Tokyo");
        assert_eq!(
            s.entry("timezone").unwrap().source,
            Source::Env("TALLY_TIMEZONE")
        );
        assert_eq!(s.entry("initial_days").unwrap().source, Source::Default);
        assert_eq!(s.initial_days, 60);
    }

    #[test]
    fn a_bad_value_names_its_source() {
        let bad = |env: &'static str| move |var: &str| (var == env).then(|| "soon".to_owned());
        let e = resolve(
            |_| None,
            bad("TALLY_SETTLE_SECONDS"),
            None,
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "TALLY_SETTLE_SECONDS: \"soon\" is not a whole number");
        let file = BTreeMap::from([("lease_ttl_seconds", "0".to_owned())]);
        let e = resolve(|_| None, |_| None, Some("t.toml".into()), &file)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.toml: lease_ttl_seconds: \"0\" is not a number of seconds of at least 1"
        );
    }

    #[test]
    fn a_type_error_names_line_and_key() {
        assert_eq!(
            locate("a = 1\ninitial_days = \"x\"\n", 21),
            (2, Some("initial_days".to_owned()))
        );
    }
}
