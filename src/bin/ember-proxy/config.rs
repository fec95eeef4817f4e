//! `--config FILE`: the command line, in TOML, with as many listeners as you like, each
//! with its own backends, shadows, checks, timeouts and limits. SIGHUP re-reads the file
//! (see `workers.rs`): listeners it adds open, listeners it drops close, the others take
//! their new settings for new clients.
//!
//! Every flag has a key: its long name without the dashes, `-` or `_` between words
//! (`--connect-timeout 5` is `connect_timeout = 5`). A value is a string, a number, a
//! list of strings (joined with commas for `duplex` and `balance`; for a flag given once
//! per value — `tls_cert`, `tls_key`, `sni_route`, `shadow_header`,
//! `compare_ignore_header`, `compare_ignore_json` — the flag repeated), or `true` for a
//! flag that takes none (`check = true`). Keys at the top level apply to every
//! `[[listener]]`, which may override them. `admin`, `access_log`, `log_format`,
//! `workers`, `max_conn` (on the sum of every listener's clients), `grace`, `no_splice`, `relay_mode`,
//! `resolve_interval` and `compare_log` belong to the whole process ([`Process`]): they are only
//! allowed at the top level, and a reload does not change them. Two listeners on one
//! address are refused.
//!
//! ```toml
//! connect_timeout = 5
//! access_log = "/var/log/ember-proxy.log"
//! admin = "127.0.0.1:9100"
//!
//! [[listener]]
//! listen = "0.0.0.0:8080"
//! balance = ["10.0.0.1:80 weight=3 maxconn=100", "10.0.0.2:80"]
//! check_http = "/health"
//!
//! [[listener]]
//! listen = "0.0.0.0:6379"
//! relay = "10.0.0.5:6379"
//! duplex = ["10.0.1.5:6379"]
//! ```
//!
//! Each listener's keys become a command line and go through the same parser and checks
//! as the flags (`args::parse`), so the two can never disagree. A mistake is one line:
//! `FILE:LINE: key: what is wrong`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use toml::de::{DeTable, DeValue};

use crate::args::{self, Command, FlagKind, RunArgs};

/// Keys that belong to the process, not to one listener ([`Process`]).
const PROCESS_WIDE: &[&str] = &[
    "admin",
    "access-log",
    "log-format",
    "workers",
    "max-conn",
    "grace",
    "no-splice",
    "relay-mode",
    "resolve-interval",
    "compare-log",
];

/// What the process has once, whatever its listeners: the [`PROCESS_WIDE`] keys (or
/// their flags). A reload does not change them: they take a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub workers: usize,
    pub admin: Option<std::net::SocketAddr>,
    pub access_log: crate::logging::AccessLog,
    pub log_format: crate::access::Format,
    /// `--max-conn`: on the sum of every listener's clients, over every worker.
    pub max_conn: Option<usize>,
    pub grace: std::time::Duration,
    pub relay_mode: ember::RelayMode,
    pub resolve_interval: std::time::Duration,
    /// `--compare-log`: one file for every listener's comparisons.
    pub compare_log: Option<std::path::PathBuf>,
}

impl Process {
    /// The process-wide settings `run` carries (every listener of a file carries the
    /// same: they can only be set at its top level).
    pub fn of(run: &RunArgs) -> Process {
        Process {
            workers: run.workers,
            admin: run.admin,
            access_log: run.access_log.clone(),
            log_format: run.log_format,
            max_conn: run.max_conn,
            grace: run.grace,
            relay_mode: run.relay_mode,
            resolve_interval: run.resolve_interval,
            compare_log: run.compare.as_ref().and_then(|c| c.log.clone()),
        }
    }

    /// The keys whose values differ between `self` and `other`.
    pub fn differences(&self, other: &Process) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut differs = |key, different: bool| {
            if different {
                keys.push(key);
            }
        };
        differs("workers", self.workers != other.workers);
        differs("admin", self.admin != other.admin);
        differs("access-log", self.access_log != other.access_log);
        differs("log-format", self.log_format != other.log_format);
        differs("max-conn", self.max_conn != other.max_conn);
        differs("grace", self.grace != other.grace);
        differs("relay-mode", self.relay_mode != other.relay_mode);
        differs(
            "resolve-interval",
            self.resolve_interval != other.resolve_interval,
        );
        keys
    }
}

/// One key of the file as the command line will see it: its flag, its argument (for a
/// flag that takes one), and where it is written (for messages).
struct Setting {
    flag: String,
    /// Its arguments: none for a switch, one for most flags, one per item of a list for
    /// a flag that is given once per value (`--tls-cert`, `--shadow-header`, ...).
    values: Vec<String>,
    line: usize,
    key: String,
}

/// `ember-proxy --config FILE`: loads the file and serves what it says.
pub fn serve_file(path: &Path) -> ExitCode {
    let runs = match load(path) {
        Ok(runs) => runs,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "ember-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::serve(&runs, Some(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "ember-proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads `path`: one set of run arguments per `[[listener]]` (at least one).
pub fn load(path: &Path) -> Result<Vec<RunArgs>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}:{e}", path.display()))
}

/// The file's text to run arguments; errors are `LINE: message`.
pub fn parse(text: &str) -> Result<Vec<RunArgs>, String> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        format!("{line}: {}", e.message())
    })?;
    let mut top = BTreeMap::new();
    let mut listeners = Vec::new();
    for (key, value) in doc.get_ref() {
        let line = line_of(key.span().start);
        if key.get_ref() == "listener" {
            let DeValue::Array(tables) = value.get_ref() else {
                return Err(format!(
                    "{line}: listener: write each as a [[listener]] table"
                ));
            };
            for table in tables {
                let DeValue::Table(table) = table.get_ref() else {
                    return Err(format!(
                        "{line}: listener: write each as a [[listener]] table"
                    ));
                };
                let line = line_of(table_start(table, value.span().start));
                let mut settings = BTreeMap::new();
                for (key, value) in table {
                    let setting =
                        setting(key.get_ref(), value.get_ref(), line_of(key.span().start))?;
                    if PROCESS_WIDE.contains(&setting.flag.trim_start_matches('-')) {
                        return Err(format!(
                            "{}: {}: belongs to the whole process: set it at the top level",
                            setting.line, setting.key
                        ));
                    }
                    settings.insert(setting.flag.clone(), setting);
                }
                listeners.push((line, settings));
            }
        } else {
            let setting = setting(key.get_ref(), value.get_ref(), line)?;
            top.insert(setting.flag.clone(), setting);
        }
    }
    if listeners.is_empty() {
        return Err("1: no [[listener]]: say where to listen and where to relay".into());
    }
    listeners
        .into_iter()
        .map(|(line, own)| {
            // The listener's own keys override the top level's.
            let mut merged: BTreeMap<&str, &Setting> =
                top.iter().map(|(flag, s)| (flag.as_str(), s)).collect();
            merged.extend(own.iter().map(|(flag, s)| (flag.as_str(), s)));
            run_args(line, merged.into_values().collect())
        })
        .collect()
}

/// Where a table starts: the smallest offset among its keys (the header's when empty).
fn table_start(table: &DeTable<'_>, header: usize) -> usize {
    table
        .keys()
        .map(|k| k.span().start)
        .min()
        .map_or(header, |first| first.saturating_sub(1))
}

/// One key and value to a flag and its argument.
fn setting(key: &str, value: &DeValue<'_>, line: usize) -> Result<Setting, String> {
    let flag = format!("--{}", key.replace('_', "-"));
    let kind = args::flag_kind(&flag)
        .ok_or_else(|| format!("{line}: {key}: no such setting (see ember-proxy --help)"))?;
    let scalar = |v: &DeValue<'_>| -> Option<String> {
        match v {
            DeValue::String(s) => Some(s.to_string()),
            DeValue::Integer(i) => Some(i.to_string()),
            DeValue::Float(f) => Some(f.to_string()),
            _ => None,
        }
    };
    let values = match (kind, value) {
        (FlagKind::Switch, DeValue::Boolean(true)) => Vec::new(),
        (FlagKind::Switch, DeValue::Boolean(false)) => {
            return Ok(Setting {
                flag: String::new(),
                values: Vec::new(),
                line,
                key: key.into(),
            });
        }
        (FlagKind::Switch, _) => return Err(format!("{line}: {key}: write true or false")),
        (FlagKind::Value, DeValue::Array(items)) => {
            let items: Option<Vec<String>> = items.iter().map(|i| scalar(i.get_ref())).collect();
            let items = items.ok_or_else(|| format!("{line}: {key}: a list of strings"))?;
            // A flag given once per value takes each item as its own; the others (`-d`,
            // `-b`) take the list joined with commas, as on the command line.
            if args::is_repeatable(&flag) {
                items
            } else {
                vec![items.join(",")]
            }
        }
        (FlagKind::Value, v) => {
            vec![scalar(v).ok_or_else(|| format!("{line}: {key}: give a string or a number"))?]
        }
    };
    Ok(Setting {
        flag,
        values,
        line,
        key: key.into(),
    })
}

/// One listener's settings through the command-line parser; a mistake names the key.
fn run_args(line: usize, settings: Vec<&Setting>) -> Result<RunArgs, String> {
    let mut argv = Vec::new();
    for s in settings.iter().filter(|s| !s.flag.is_empty()) {
        if s.values.is_empty() {
            argv.push(s.flag.clone());
        }
        for value in &s.values {
            argv.push(s.flag.clone());
            argv.push(value.clone());
        }
    }
    match args::parse(&argv) {
        Ok(Command::Run(run)) => Ok(run),
        Ok(_) => Err(format!(
            "{line}: listener: say where to listen and where to relay"
        )),
        Err(message) => {
            // The message names a flag: point at the key that gave it.
            let culprit = settings
                .iter()
                .filter(|s| !s.flag.is_empty() && message.contains(s.flag.as_str()))
                .max_by_key(|s| s.flag.len());
            Err(match culprit {
                Some(s) => format!("{}: {}: {}", s.line, s.key, message),
                None => format!("{line}: listener: {message}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Upstream;

    #[test]
    fn listeners_get_their_own_keys_and_the_top_levels() {
        let runs = parse(
            "connect_timeout = 7\nadmin = \"127.0.0.1:9100\"\n\
             [[listener]]\nlisten = \"127.0.0.1:8080\"\n\
             balance = [\"10.0.0.1:80 weight=3\", \"10.0.0.2:80\"]\ncheck = true\n\
             [[listener]]\nlisten = 6379\nrelay = \"10.0.0.5:6379\"\nconnect-timeout = 2\n\
             duplex = [\"10.0.1.5:6379\"]\n",
        )
        .unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].listen, "127.0.0.1:8080");
        assert!(
            matches!(&runs[0].upstream, Upstream::Balance(m, _) if m.len() == 2 && m[0].weight == 3)
        );
        assert!(runs[0].check.is_some());
        assert_eq!(runs[0].connect_timeout.as_secs(), 7);
        assert_eq!(runs[1].listen, "6379");
        assert_eq!(runs[1].connect_timeout.as_secs(), 2, "a listener overrides");
        assert_eq!(runs[1].duplex, ["10.0.1.5:6379"]);
        assert!(runs.iter().all(|r| r.admin.is_some()));
    }

    #[test]
    fn a_list_for_a_repeatable_flag_repeats_it() {
        let runs = parse(
            "[[listener]]\nlisten = 1\nrelay = \"a:1\"\nduplex = [\"b:1\", \"c:1\"]\n\
             compare = true\ncompare_ignore_header = [\"X-A\", \"X-B\"]\n\
             shadow_header = [\"X-Shadow: 1\", \"X-Two: 2\"]\n",
        )
        .unwrap();
        assert_eq!(
            runs[0].duplex,
            ["b:1", "c:1"],
            "joined with commas, split again"
        );
        let compare = runs[0].compare.as_ref().unwrap();
        assert_eq!(compare.ignore_headers, ["X-A", "X-B"]);
        let http = runs[0].http.as_ref().unwrap();
        assert_eq!(http.headers.len(), 2);
    }

    #[test]
    fn a_mistake_is_one_line_with_the_line_and_the_key() {
        for (text, want) in [
            (
                "[[listener]]\nlisten = 1\nrelay = \"a:1\"\nretries = \"many\"\n",
                "4: retries: ",
            ),
            (
                "[[listener]]\nlisten = 1\nrelay = \"a:1\"\nbogus = 3\n",
                "4: bogus: no such setting",
            ),
            (
                "[[listener]]\nlisten = 1\nrelay = \"a:1\"\nadmin = \"x:1\"\n",
                "4: admin: belongs to the whole process",
            ),
            (
                "[[listener]]\nlisten = 1\nrelay = \"a:1\"\nmax_conn = 10\n",
                "4: max_conn: belongs to the whole process",
            ),
            (
                "[[listener]]\nlisten = 1\nrelay = \"a:1\"\ncheck = 3\n",
                "4: check: write true or false",
            ),
            ("x = \n", "1: "),
            ("retries = 2\n", "1: no [[listener]]"),
            ("\n[[listener]]\nlisten = 1\n", "2: listener: "),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
