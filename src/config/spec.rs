//! What a row of the settings table says about its setting besides its key and type — the
//! default, the rule its values must follow, whether a reload may change it — and what is
//! derived from that: its flag and variable, and how a value from any layer is read.

use std::ffi::OsStr;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches};

use super::values::Value;

/// One setting, as its row of the table declares it.
pub struct Spec<T> {
    key: &'static str,
    help: String,
    /// The default in the text form, read like a flag's value.
    default: String,
    show_default: bool,
    value_name: Option<&'static str>,
    rule: Option<Rule<T>>,
    restart_only: bool,
}

/// A setting whose default is `text`, read as a flag's value would be.
pub fn default<T>(text: impl Into<String>) -> Spec<T> {
    Spec {
        key: "",
        help: String::new(),
        default: text.into(),
        show_default: true,
        value_name: None,
        rule: None,
        restart_only: false,
    }
}

/// A setting that is unset (`""`) unless given.
pub fn none<T: Value>() -> Spec<Option<T>> {
    default("").hide_default()
}

impl<T: Value> Spec<T> {
    /// The `<NAME>` for the value in `--help`, when the type's own would not say enough.
    pub fn value_name(self, name: &'static str) -> Self {
        Spec {
            value_name: Some(name),
            ..self
        }
    }

    /// Values that break `rule` are refused, whichever layer they come from.
    pub fn must_be(self, rule: Rule<T>) -> Self {
        Spec {
            rule: Some(rule),
            ..self
        }
    }

    /// A reload keeps the running value; a change takes effect at the next start.
    pub fn restart_only(self) -> Self {
        Spec {
            restart_only: true,
            ..self
        }
    }

    /// `--help` does not show the default (the help text explains it).
    pub fn hide_default(self) -> Self {
        Spec {
            show_default: false,
            ..self
        }
    }

    /// Names the setting and gives it its doc comment as help, joined into one line and
    /// without the final period, as clap's derive does.
    pub fn describe(self, key: &'static str, doc: &[&str]) -> Self {
        let help = doc
            .iter()
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ");
        let help = help.strip_suffix('.').unwrap_or(&help).to_owned();
        Spec { key, help, ..self }
    }

    pub fn key(&self) -> &'static str {
        self.key
    }

    pub fn is_restart_only(&self) -> bool {
        self.restart_only
    }

    /// Reads a flag's or variable's value.
    pub fn read_text(&self, text: &str) -> Result<T, String> {
        T::parse(text).and_then(|v| self.check(v))
    }

    /// Reads the file's value.
    pub fn read_toml(&self, value: &toml::Value) -> Result<T, String> {
        T::from_toml(value).and_then(|v| self.check(v))
    }

    fn check(&self, value: T) -> Result<T, String> {
        match &self.rule {
            Some(rule) if !(rule.holds)(&value) => Err(format!("it must be {}", rule.says)),
            _ => Ok(value),
        }
    }

    /// The value when no layer gives one.
    pub fn default_value(&self) -> T {
        self.read_text(&self.default).unwrap_or_else(|e| {
            panic!(
                "the default of {} ({:?}) is refused: {e}",
                self.key, self.default
            )
        })
    }

    /// The value given by a flag or, failing that, its variable (not clap's default).
    pub fn given(&self, matches: &ArgMatches) -> Option<T> {
        // A subcommand that does not use this setting has no flag for it.
        if matches.try_contains_id(self.key).is_err() {
            return None;
        }
        match matches.value_source(self.key) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => {
                matches.get_one::<T>(self.key).cloned()
            }
            _ => None,
        }
    }

    /// The flag `--KEY` (with `-` for `_`) and the variable `{env_prefix}KEY`.
    pub fn arg(&'static self, env_prefix: &str) -> Arg {
        let mut help = self.help.clone();
        if let Some(rule) = &self.rule {
            help += &format!(" [must be {}]", rule.says);
        }
        if self.restart_only {
            help += " [restart to change]";
        }
        let value_name = self.value_name.or(T::VALUE_NAME);
        let arg = Arg::new(self.key)
            .long(self.key.replace('_', "-"))
            .env(format!("{env_prefix}{}", self.key.to_uppercase()))
            .value_name(value_name.map_or_else(|| self.key.to_uppercase(), str::to_owned))
            .value_parser(Reader(self))
            .help(help);
        if self.show_default {
            arg.default_value(self.default.clone())
        } else {
            arg
        }
    }
}

/// What values a setting accepts beyond its type, said the way messages and `--help` say it.
pub struct Rule<T> {
    says: String,
    holds: Box<dyn Fn(&T) -> bool + Send + Sync>,
}

/// From `range.start()` to `range.end()`, both included.
pub fn within<T>(range: RangeInclusive<T>) -> Rule<T>
where
    T: PartialOrd + Display + Send + Sync + 'static,
{
    Rule {
        says: format!("{}–{}", range.start(), range.end()),
        holds: Box::new(move |v| range.contains(v)),
    }
}

/// `low` or more.
pub fn at_least<T>(low: T) -> Rule<T>
where
    T: PartialOrd + Display + Send + Sync + 'static,
{
    Rule {
        says: format!("at least {low}"),
        holds: Box::new(move |v| *v >= low),
    }
}

/// Any duration but zero.
pub fn longer_than_zero() -> Rule<Duration> {
    Rule {
        says: "longer than 0".into(),
        holds: Box::new(|d| !d.is_zero()),
    }
}

/// A list of environment variable names (`[A-Za-z_][A-Za-z0-9_]*`), each optionally ending
/// in `*` for every variable with that prefix; kindler's own `KINDLER_*` are not among them.
pub fn variable_names() -> Rule<Vec<String>> {
    Rule {
        says: "names of variables (NAME, or PREFIX*), not KINDLER_*".into(),
        holds: Box::new(|names| {
            names
                .iter()
                .all(|n| is_variable_name(n.strip_suffix('*').unwrap_or(n)))
        }),
    }
}

/// A list of `NAME=value` assignments of environment variables, not kindler's own.
pub fn assignments() -> Rule<Vec<String>> {
    Rule {
        says: "NAME=value assignments, not KINDLER_*".into(),
        holds: Box::new(|items| {
            items
                .iter()
                .all(|a| a.split_once('=').is_some_and(|(n, _)| is_variable_name(n)))
        }),
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("KINDLER_")
}

/// Reads a flag's or variable's value for clap, with the same reasons as the file's.
struct Reader<T: 'static>(&'static Spec<T>);

impl<T> Clone for Reader<T> {
    fn clone(&self) -> Self {
        Reader(self.0)
    }
}

impl<T: Value> TypedValueParser for Reader<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let spec = self.0;
        StringValueParser::new()
            .try_map(|text| spec.read_text(&text))
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let choices = T::choices();
        (!choices.is_empty()).then(|| Box::new(choices.into_iter()) as Box<_>)
    }
}

/// A host name: 1–253 characters of letters, digits, `.`, `-` and `_` (it is shown, logged
/// and compared, never run).
pub fn host_name() -> Rule<String> {
    Rule {
        says: "a host name (letters, digits, '.', '-', '_'; at most 253)".into(),
        holds: Box::new(|name| {
            (1..=253).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }),
    }
}
