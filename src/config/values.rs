//! The types settings have, and how each is read: from text (a flag, a `KINDLER_*`
//! variable, a default in the table) and from a TOML value. A reason for refusing a value
//! reads "it …", so that every layer can say "KEY is VALUE; it …" or put it after the flag.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::ValueEnum;
use toml::Value as Toml;

use crate::log::{LogLevel, LogTarget};
use crate::model::PortRange;

/// A type a setting can have.
pub trait Value: Sized + Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// The `<NAME>` `--help` shows for the value, unless the setting names its own.
    const VALUE_NAME: Option<&'static str> = None;

    /// What a value looks like, as in "it must be {expected}".
    fn expected() -> String;

    /// Reads the text form.
    fn parse(text: &str) -> Result<Self, String>;

    /// Reads the file's form; by default a string in the text form.
    fn from_toml(value: &Toml) -> Result<Self, String> {
        match value {
            Toml::String(text) => Self::parse(text),
            _ => Err(format!("it must be {}", Self::expected())),
        }
    }

    /// The only values there are, when there is a fixed list (`--help` shows them).
    fn choices() -> Vec<PossibleValue> {
        Vec::new()
    }
}

/// "it is not {expected}" (with the parser's own words, when it has some).
fn not<T: Value>(detail: impl fmt::Display) -> String {
    let detail = detail.to_string();
    if detail.is_empty() {
        format!("it is not {}", T::expected())
    } else {
        format!("it is not {} ({detail})", T::expected())
    }
}

impl Value for String {
    fn expected() -> String {
        "a string".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Value for PathBuf {
    const VALUE_NAME: Option<&'static str> = Some("PATH");
    fn expected() -> String {
        "a path".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
}

/// The `database` setting: a file path, or a `postgres://` URL.
impl Value for crate::store::Database {
    const VALUE_NAME: Option<&'static str> = Some("FILE|URL");
    fn expected() -> String {
        "a file path or a postgres:// URL".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err(format!("it must be {}", Self::expected()));
        }
        Ok(crate::store::Database::parse(text))
    }
}

/// A list: comma-separated as text, an array (or that text) in TOML.
impl Value for Vec<String> {
    const VALUE_NAME: Option<&'static str> = Some("LIST");
    fn expected() -> String {
        "a list like [\"a\", \"b\"] or \"a,b\"".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn from_toml(value: &Toml) -> Result<Self, String> {
        match value {
            Toml::Array(items) => items.iter().map(String::from_toml).collect(),
            _ => Toml::as_str(value)
                .ok_or_else(|| format!("it must be {}", Self::expected()))
                .and_then(Self::parse),
        }
    }
}

/// Whole numbers: digits as text, an integer (not a string) in TOML.
macro_rules! whole_numbers {
    ($($t:ty),+) => {$(
        impl Value for $t {
            const VALUE_NAME: Option<&'static str> = Some("N");
            fn expected() -> String {
                "a whole number".into()
            }
            fn parse(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| not::<Self>(""))
            }
            fn from_toml(value: &Toml) -> Result<Self, String> {
                let number = value
                    .as_integer()
                    .ok_or_else(|| format!("it must be {}", Self::expected()))?;
                <$t>::try_from(number).map_err(|_| match number {
                    ..0 => "it must not be negative".to_owned(),
                    _ => format!("it must be at most {}", <$t>::MAX),
                })
            }
        }
    )+};
}
whole_numbers!(u32, usize);

/// A duration written the human way: `500ms`, `10s`, `5m`, `1h 30m`, `30days`.
impl Value for Duration {
    const VALUE_NAME: Option<&'static str> = Some("DURATION");
    fn expected() -> String {
        "a duration like \"10s\", \"5m\" or \"1h\"".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim()).map_err(not::<Self>)
    }
}

/// How a duration is written back in messages.
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Value for SocketAddr {
    const VALUE_NAME: Option<&'static str> = Some("ADDR");
    fn expected() -> String {
        "an address like 127.0.0.1:8765".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| not::<Self>(""))
    }
}

/// A value that may be left out: `""` means none, in every layer.
impl<T: Value> Value for Option<T> {
    const VALUE_NAME: Option<&'static str> = T::VALUE_NAME;
    fn expected() -> String {
        format!("{}, or \"\" for none", T::expected())
    }
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" => Ok(None),
            _ => T::parse(text).map(Some).map_err(|e| e + " (\"\" for none)"),
        }
    }
    fn from_toml(value: &Toml) -> Result<Self, String> {
        match value.as_str() {
            Some(text) => Self::parse(text),
            None => T::from_toml(value).map(Some),
        }
    }
}

/// A port range (`model::PortRange`): `19001-19999` as text, `[19001, 19999]` (or that
/// text) in TOML.
impl Value for PortRange {
    const VALUE_NAME: Option<&'static str> = Some("FIRST-LAST");
    fn expected() -> String {
        "a port range like \"19001-19999\" or [19001, 19999]".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| not::<Self>(""));
        let (first, last) = text.split_once('-').ok_or_else(|| not::<Self>(""))?;
        PortRange::new(port(first)?, port(last)?)
    }
    fn from_toml(value: &Toml) -> Result<Self, String> {
        let port = |v: &Toml| v.as_integer().and_then(|i| u16::try_from(i).ok());
        match value {
            Toml::String(text) => Self::parse(text),
            Toml::Array(pair) => match pair.as_slice() {
                [first, last] => match (port(first), port(last)) {
                    (Some(first), Some(last)) => PortRange::new(first, last),
                    _ => Err(not::<Self>("ports are 1 to 65535")),
                },
                _ => Err(not::<Self>("two ports")),
            },
            _ => Err(format!("it must be {}", Self::expected())),
        }
    }
}

/// A command to run: a program and its leading arguments, never a shell line.
/// As text it is a program path; in TOML a path or an array `["program", "arg", …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

impl Value for CommandLine {
    const VALUE_NAME: Option<&'static str> = Some("PROGRAM");
    fn expected() -> String {
        "a program, or an array like [\"program\", \"argument\"]".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        Self::from_argv(vec![text.to_owned()])
    }
    fn from_toml(value: &Toml) -> Result<Self, String> {
        match value {
            Toml::Array(_) => Self::from_argv(Vec::<String>::from_toml(value)?),
            _ => Toml::as_str(value)
                .ok_or_else(|| format!("it must be {}", Self::expected()))
                .and_then(Self::parse),
        }
    }
}

impl CommandLine {
    fn from_argv(mut argv: Vec<String>) -> Result<Self, String> {
        if argv.first().is_none_or(|program| program.trim().is_empty()) {
            return Err("it must name a program".into());
        }
        let program = PathBuf::from(argv.remove(0));
        Ok(CommandLine {
            program,
            args: argv,
        })
    }
}

/// Enumerations: their words are the ones clap's `ValueEnum` gives (lower case).
macro_rules! words {
    ($($t:ty),+) => {$(
        impl Value for $t {
            fn expected() -> String {
                let words: Vec<String> =
                    Self::choices().iter().map(|w| w.get_name().to_owned()).collect();
                format!("one of {}", words.join(", "))
            }
            fn parse(text: &str) -> Result<Self, String> {
                <Self as ValueEnum>::from_str(text.trim(), false).map_err(|_| not::<Self>(""))
            }
            fn choices() -> Vec<PossibleValue> {
                Self::value_variants()
                    .iter()
                    .filter_map(ValueEnum::to_possible_value)
                    .collect()
            }
        }
    )+};
}
words!(LogLevel, LogTarget);
