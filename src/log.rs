//! Logging: structured events to journald's native protocol, or readable lines on stderr.
//!
//! Records are handed to one writer thread through a bounded queue, so logging never
//! blocks the daemon (a busy journald slows the writer thread, not the reconciler). When
//! the queue is full a record is dropped and counted; the count is reported with the next
//! record that gets through.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use clap::ValueEnum;

/// How much the daemon logs (the `log_level` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Where log records go (the `log_target` setting). `auto` uses the journal's native
/// protocol when stderr is connected to journald (JOURNAL_STREAM), plain lines on stderr
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    Auto,
    Journal,
    Stderr,
}

/// Stable ids of the events kindler logs; `systemd/kindler.catalog` explains each.
pub mod ids {
    pub const RECONCILE_STARTED: &str = "5c56fab6401c4283810770711566ceaa";
    pub const RECONCILE_SUCCEEDED: &str = "3f2b684baf7645c7ae2f851840eb3cc7";
    pub const RECONCILE_FAILED: &str = "3b3f55ce48354dda8c7701bd7b06937e";
    pub const RECONCILE_CANCELLED: &str = "6bdbdd8824904e0ba89970a1da2faf0b";
    pub const RECONCILE_TIMED_OUT: &str = "32108095a47f40beb19af6acf98dc71e";
    pub const RETRY_SCHEDULED: &str = "dd2bb64052f4459489c2b1850ae2678f";
    pub const CLUSTER_REMOVED: &str = "592611f6a8984762ba80b2d61d77071c";
    pub const DAEMON_READY: &str = "708c5ccd94a3444eae3387f93d1ee423";
    pub const DAEMON_STOPPING: &str = "6b58901958a2451ea351c5e1239deba8";
    pub const CONFIG_RELOADED: &str = "04787b545f174ed6973dac0bf331bb69";
    pub const CONFIG_REJECTED: &str = "1f2bed3d0abf4f129cf986a998a56ded";
    pub const ACTION_INTERRUPTED: &str = "18c5f41dc900478aa1ed5a51375cab91";
    pub const ORPHANS_ENDED: &str = "b711e2f26a02499c8e7fa334b692f6cd";
    pub const SCRIPT_OUTPUT: &str = "798ce792c45b48f4baa179a34bd51a4c";
    pub const CLUSTER_DECLARED: &str = "664c2109974e4b8291e18ac5c409d8e1";
    pub const ROW_IGNORED: &str = "c5c62a3a6c684cd0bd60eab0bad800fb";
    pub const ROW_RENUMBERED: &str = "727de53ebe494ccb803a13e2607f1a89";
    pub const DEGRADED: &str = "7d913e9ab9a34967a077369ef7265eea";
    pub const RECOVERED: &str = "261c896e197442ac90a1141d0df2c849";
    pub const CLUSTER_FORGOTTEN: &str = "a4bb035218744bfa960f0f3cc5f9a372";
    pub const LEASE_ACQUIRED: &str = "4dd8fb38062e41e9a8ad12fa5ee8666b";
    pub const LEASE_LOST: &str = "d3be76658aa741c78d5d485235739a19";
    pub const HOST_UNREACHABLE: &str = "c5b647c5892347298deb28adc977b975";
    pub const HOST_BACK: &str = "bf6c558acb044a6e99fe60a02c6b7ee5";
}

/// syslog priorities, as journald stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::Error => "ERROR",
            Priority::Warning => "WARN",
            Priority::Notice => "NOTICE",
            Priority::Info => "INFO",
            Priority::Debug => "DEBUG",
        }
    }

    fn allowed(self, level: u8) -> bool {
        let needed = match self {
            Priority::Error => LogLevel::Error,
            Priority::Warning => LogLevel::Warn,
            Priority::Notice | Priority::Info => LogLevel::Info,
            Priority::Debug => LogLevel::Debug,
        };
        needed as u8 <= level
    }
}

/// One log record: a message, an optional event id and `KINDLER_*` fields.
#[derive(Debug, Clone)]
pub struct Event {
    pub priority: Priority,
    pub message_id: Option<&'static str>,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(priority: Priority, message: impl Into<String>) -> Self {
        Event {
            priority,
            message_id: None,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn id(mut self, id: &'static str) -> Self {
        self.message_id = Some(id);
        self
    }

    /// Adds a field; `name` is given without the `KINDLER_` prefix (`CLUSTER`, `RUN_ID`).
    pub fn field(mut self, name: &'static str, value: impl ToString) -> Self {
        self.fields.push((name, value.to_string()));
        self
    }

    pub fn message_text(mut self, message: String) -> Self {
        self.message = message;
        self
    }

    /// Sets a field, replacing an earlier value of the same name.
    pub fn replace_field(mut self, name: &'static str, value: impl ToString) -> Self {
        self.fields.retain(|(n, _)| *n != name);
        self.field(name, value)
    }

    pub fn field_opt(self, name: &'static str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    pub fn emit(self) {
        emit(self)
    }
}

enum Message {
    Record(Event),
    Flush(SyncSender<()>),
}

struct Logger {
    queue: SyncSender<Message>,
    level: AtomicU8,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread. Records logged before this go straight to stderr.
pub fn init(target: LogTarget, level: LogLevel) {
    let journal = match target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let (tx, rx) = sync_channel(4096);
    let logger = Logger {
        queue: tx,
        level: AtomicU8::new(level as u8),
        dropped: AtomicU64::new(0),
    };
    if LOGGER.set(logger).is_ok() {
        std::thread::Builder::new()
            .name("kindler-log".into())
            .spawn(move || write_loop(rx, journal))
            .expect("cannot start the log thread");
    }
}

pub fn set_level(level: LogLevel) {
    if let Some(l) = LOGGER.get() {
        l.level.store(level as u8, Ordering::Relaxed);
    }
}

pub fn emit(event: Event) {
    let Some(logger) = LOGGER.get() else {
        eprintln!("{}", format_line(&event));
        return;
    };
    if !event.priority.allowed(logger.level.load(Ordering::Relaxed)) {
        return;
    }
    match logger.queue.try_send(Message::Record(event)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            logger.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Waits (briefly) until every record queued so far is written; used before exiting.
pub fn flush() {
    if let Some(logger) = LOGGER.get() {
        let (tx, rx) = sync_channel(1);
        if logger.queue.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

pub fn error(msg: &str) {
    Event::new(Priority::Error, msg).emit()
}
pub fn warn(msg: &str) {
    Event::new(Priority::Warning, msg).emit()
}
pub fn info(msg: &str) {
    Event::new(Priority::Info, msg).emit()
}
pub fn debug(msg: &str) {
    Event::new(Priority::Debug, msg).emit()
}

/// Is stderr connected to journald? systemd sets JOURNAL_STREAM to the device and inode
/// of the stream it connected; if stderr is still that stream, the journal is listening.
fn stderr_is_journal() -> bool {
    libsystemd::logging::connected_to_journal()
}

fn write_loop(rx: Receiver<Message>, journal: bool) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Message::Flush(done) => {
                let _ = done.send(());
            }
            Message::Record(event) => {
                report_drops();
                if !journal || send_to_journal(&event).is_err() {
                    let _ = writeln!(std::io::stderr().lock(), "{}", format_line(&event));
                }
            }
        }
    }
}

fn report_drops() {
    let Some(logger) = LOGGER.get() else { return };
    let dropped = logger.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let note = Event::new(
            Priority::Warning,
            format!("{dropped} log records were dropped because logging fell behind"),
        );
        if send_to_journal(&note).is_err() {
            eprintln!("{}", format_line(&note));
        }
    }
}

fn send_to_journal(event: &Event) -> Result<(), libsystemd::errors::SdError> {
    use libsystemd::logging::{journal_send, Priority as P};
    let priority = match event.priority {
        Priority::Error => P::Error,
        Priority::Warning => P::Warning,
        Priority::Notice => P::Notice,
        Priority::Info => P::Info,
        Priority::Debug => P::Debug,
    };
    let fields = [("SYSLOG_IDENTIFIER", "kindler".to_owned())]
        .into_iter()
        .chain(event.message_id.map(|id| ("MESSAGE_ID", id.to_owned())))
        .map(|(k, v)| (k.to_owned(), v))
        .chain(
            event
                .fields
                .iter()
                .map(|(k, v)| (format!("KINDLER_{k}"), v.clone())),
        );
    journal_send(priority, &event.message, fields)
}

/// Control characters written as escapes (`\x1b`, `\r`, `\0`): a script's output goes into
/// these lines, and raw escape sequences, carriage returns and NULs on a terminal or in a
/// log file would recolour, overwrite or cut what is shown. Tabs stay.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A record as one readable line: `LEVEL message [key=value ...]`.
pub fn format_line(event: &Event) -> String {
    let mut line = format!(
        "{:<6} {}",
        event.priority.label(),
        escape_controls(&event.message)
    );
    if !event.fields.is_empty() {
        line.push_str(" [");
        for (i, (name, value)) in event.fields.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let key = name.to_ascii_lowercase();
            let value = escape_controls(value);
            if value.contains(char::is_whitespace) || value.is_empty() {
                let _ = write!(line, "{key}={value:?}");
            } else {
                let _ = write!(line, "{key}={value}");
            }
        }
        line.push(']');
    }
    line
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let e = Event::new(Priority::Info, "red \x1b[31mX\x1b[0m\rover\0nul\ttab");
        assert_eq!(
            format_line(&e),
            "INFO   red \\x1b[31mX\\x1b[0m\\rover\\0nul\ttab"
        );
        let e = Event::new(Priority::Info, "plain").field("ERROR", "a\x1bb");
        assert_eq!(format_line(&e), "INFO   plain [error=a\\x1bb]");
    }
}
