//! Loading the command line: clap parses the flags (and their `TALLY_*`
//! variables), the configuration file it names (`--config tally.toml`, or
//! `TALLY_CONFIG`) is read, and every setting is resolved and parsed into
//! the [`Cli`]'s [`Settings`](crate::cli::settings::Settings), flags >
//! environment > file > defaults.
//!
//! The settings themselves — flags, variables, keys, defaults, parsers —
//! are defined in `cli::settings`; this file only joins the sources.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::settings::{self, Setting};
use crate::cli::Cli;

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
        Some(p) => settings::read_file(p).map_err(LoadError::Invalid)?,
        None => BTreeMap::new(),
    };
    let settings = settings::resolve(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::{Scope, Type, GLOBAL_HEADING, SETTINGS};

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
}
