//! The command line: em-proxy's flags (`-l`, `-r`, `-s`, `-d`, `-v`, `-h`) plus ember's
//! (`--balance`, `--strategy`, `--shadow-buffer`, `--grace`, `-V`, `demo`). Parsing only;
//! names are resolved later, in `resolve`, before the reactor starts.
//!
//! Short flags combine as getopt's do: `-vl 8080` and `-vl8080` are `-v -l 8080`. A value
//! that starts with `-` and a digit (`--retries -1`) is taken as the value, so the flag
//! can say what is wrong with it instead of "needs a value".
//!
//! Every mistake becomes one `Err(String)` that `main` prints as a single line.

use ember::RelayMode;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ember::proxy::{
    DEFAULT_FIN_TIMEOUT, DEFAULT_SHADOW_BUFFER, Strategy, Target, parse_port, proxy_protocol,
};

use crate::access;
use crate::logging::AccessLog;

/// Retries of a failed backend connect (HAProxy's default).
pub const DEFAULT_RETRIES: u32 = 3;
/// How long a backend connect may take (HAProxy configurations commonly use 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client or backend may stay idle before it is closed. Long enough for
/// keep-alive HTTP between requests; long-lived quiet protocols want `0` (never).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub const USAGE: &str = "\
Usage: ember-proxy -l [HOST:]PORT (-r HOST:PORT | -s PATH | -b HOST:PORT[ weight=N][ maxconn=N],...) [options]
       ember-proxy demo [-n REQUESTS]
       ember-proxy report COMPARE_LOG [--html OUT.html]

A transparent proxy: clients are answered from the relay; duplex backends get a copy of
every byte the clients send, and their answers are discarded.

  -l, --listen [HOST:]PORT          Address to listen on; a bare PORT listens on all
                                    interfaces (0.0.0.0), 127.0.0.1:PORT on loopback only
  -r, --relay HOST:PORT             Relay endpoint: answers the clients
  -s, --socket PATH                 Relay endpoint: a Unix socket
  -d, --duplex HOST:PORT[,...]      Backends to duplex the traffic to (answers discarded)
  -b, --balance HOST:PORT,...       Relay each client to one of these instead of one relay;
                                    an entry may carry a weight (default 1, up to 1000)
                                    and a cap on its clients at once (maxconn; beyond it
                                    clients queue): -b '10.0.0.1:80 weight=3 maxconn=100,
                                    10.0.0.2:80'
      --queue-timeout SECONDS       How long a client waits for a backend under its
                                    maxconn before it is closed (default 5)
      --strategy NAME               How --balance picks, weights honoured: round-robin
                                    (default; weighted, interleaved), least-conn, random,
                                    p2c (the less loaded of two random picks) or source
                                    (by client IP: a client keeps its backend)
      --shadow-buffer BYTES         How far a duplex backend may fall behind before it is
                                    cut off (default 4M; K, M and G suffixes)
      --shadow-max-conns N          At most N duplex connections open at once; clients
                                    beyond it skip the duplex backends (default: a
                                    quarter of the descriptor limit)
      --shadow-max-memory BYTES     At most this much memory for duplex queues; each
                                    duplex connection reserves its --shadow-buffer
                                    (default: an eighth of physical memory). With
                                    --compare, for the comparisons waiting for their
                                    answers, shared out over the workers: each request
                                    reserves its answers at --compare-max-body until
                                    they are in, and requests that do not fit are not
                                    mirrored (ember_mirror_skipped_total)
      --retries N                   Retries of a backend connect that fails (refused,
                                    timed out), each on another -b backend in rotation;
                                    what the client sent is replayed (default 3)
      --connect-timeout SECONDS     How long a backend connect may take (default 5)
      --resolve-interval SECONDS    How long a backend name's addresses are used before
                                    they are looked up again, in the background (default
                                    30; 0: on every connect)
      --max-conn N                  At most N clients at once; more wait in the kernel's
                                    backlog until others leave (default: no limit)
      --check                       Health-check every -r/-b/-d backend with a TCP connect;
                                    a backend that fails --fall checks in a row gets no
                                    new clients until it passes --rise in a row
      --check-http PATH             Check with `GET PATH` instead (2xx/3xx is up);
                                    implies --check
      --check-interval SECONDS      Time between checks (default 2)
      --rise N                      Passed checks that bring a backend up (default 2)
      --fall N                      Failed checks that take a backend down (default 3)
      --client-timeout SECONDS      Close a client idle this long (default 60; 0: never)
      --server-timeout SECONDS      Close a backend idle this long (default 60; 0: never)
      --fin-timeout SECONDS         How long a connection may idle once one side has
                                    sent FIN (default 5; 0 waits forever)
      --grace SECONDS               On SIGINT/SIGTERM, how long live clients may take to
                                    finish (default 10)
      --relay-mode MODE             How plain relays move bytes: auto (default:
                                    splice, but a long stream times splice against
                                    copy and keeps the faster), kernel (BPF sockmap:
                                    bytes never enter the process; needs CAP_BPF and
                                    CAP_NET_ADMIN, else splice), splice, or copy
      --no-splice                   The same as --relay-mode copy
      --send-proxy                  Start every backend connection with a PROXY protocol v1
                                    header naming the client (HAProxy's send-proxy)
      --send-proxy-v2               The same with the binary v2 header
      --accept-proxy                Every client starts with a PROXY v1/v2 header (from a
                                    balancer in front): its addresses are the client's
      --tls-cert FILE               Terminate TLS on the listener with this certificate
      --tls-key FILE                chain and key (PEM); repeat both for more certificates,
                                    chosen by the name the client asks for (SNI), the
                                    first one the default
      --tls-client-ca FILE          Require client certificates issued by these CAs
      --backend-tls                 Speak TLS to the backends (-r/-b/-d), verifying them
                                    against the system's roots
      --backend-ca FILE             ... against these CAs instead (implies --backend-tls)
      --backend-sni NAME            The name to verify and send as SNI (default: the
                                    backend's host name)
      --backend-tls-insecure        Verify nothing (for tests; says so loudly in the log)
      --sni-route NAME=HOST:PORT    Without terminating TLS, send clients whose TLS
                                    ClientHello asks for NAME to HOST:PORT (repeatable;
                                    others go to -r/-b)
      --http                        Mirror HTTP/1.1 requests to the -d shadows instead of
                                    bytes: each shadow gets whole requests on keep-alive
                                    connections of its own (its slowness or death never
                                    reaches a client); anything that is not HTTP/1.1 falls
                                    back to plain relaying for that client
      --shadow-sample FRACTION      Mirror this share of requests (with --http) or of
                                    client connections (without); default 1
      --shadow-methods LIST         With --http, mirror only these methods (GET,HEAD,...)
      --shadow-host NAME            With --http, the Host header the shadows get
      --shadow-header 'NAME: VALUE' With --http, a header added to mirrored requests
                                    (repeatable)
      --shadow-timeout SECONDS      With --http, how long a shadow may take to answer a
                                    mirrored request, its whole answer however slowly
                                    it comes (default 10)
      --compare                     Compare every mirrored response with the primary's
                                    (implies --http): same, or differs in status, a header,
                                    the body (with the JSON path); counted in /metrics
      --compare-tcp                 Without --http: compare each shadow's byte stream with
                                    the primary's, per client connection
      --compare-log PATH            One JSON line per comparison (`ember-proxy report`
                                    reads it)
      --compare-ignore-header NAME  A header whose differences are noise (repeatable; Date
                                    and the like are ignored already)
      --compare-ignore-json PATH    A JSON path whose differences are noise ($.a.b[*].c;
                                    repeatable)
      --compare-max-body BYTES      How much of each body is compared byte by byte and
                                    kept for the report (default 1m; beyond, by hash)
      --reference HOST:PORT         A second copy of production: differences it shows too
                                    are noise, not regressions (implies --compare)
      --workers N                   Event loops serving the port, one thread each, each
                                    with its own SO_REUSEPORT listener (the kernel spreads
                                    clients over them); default 1
      --admin HOST:PORT             Serve /metrics (Prometheus), /stats (a live page) and
                                    /health (503 while draining) on this address
      --access-log PATH             Where the access log goes: one line per client session
                                    (a file, appended to and reopened on SIGUSR1; `-`:
                                    stderr, the default; `off`)
      --log-format FORMAT           text (key=value pairs, the default) or json
  -c, --config FILE                 Read listeners and flags from a TOML file (flags'
                                    names as keys); SIGHUP reads it again
  -v, --verbose                     Also log every connection and backend event, and
                                    each long relay's splice-or-copy verdict
  -h, --help                        Show this help
  -V, --version                     Show the version

  demo                              Shadow-test a candidate with a regression against prod
                                    (and a second prod as --reference) in this process,
                                    then run `report` on the compare log and print the
                                    page's path
  -n, --requests N                  Requests per route in the demo (3 routes; default 200)

  report COMPARE_LOG                Summarise a --compare-log: the verdict, mismatch rates
                                    per route, the top differences, latencies; and write
                                    one self-contained HTML page
  --html OUT                        Where the page goes (default: COMPARE_LOG.html)

Short flags combine as in getopt: -vl 8080 and -vl8080 are -v -l 8080.
Example: ember-proxy -l 8080 -r localhost:8081 -d localhost:8082,localhost:8083 -v";

/// What the command line asks for.
#[derive(Debug)]
// Parsed once at startup: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// `-h`: usage on stdout, exit 0.
    Help,
    /// `-V`: `ember-proxy VERSION` on stdout, exit 0.
    Version,
    /// No arguments: usage on stderr, exit 2 (em-proxy prints its help).
    Usage,
    Run(RunArgs),
    /// `--config FILE`: everything else is in the file.
    Config(PathBuf),
    Demo(DemoArgs),
    /// `report FILE`: summarise a compare log.
    Report(ReportArgs),
}

/// `ember-proxy report COMPARE_LOG [--html OUT]`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReportArgs {
    /// The `--compare-log` file to read.
    pub log: PathBuf,
    /// Where the HTML page goes.
    pub html: PathBuf,
}

/// `report`'s own arguments: the log, and `--html OUT`.
fn parse_report(args: &[String]) -> Result<Command, String> {
    let mut log = None;
    let mut html = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--html" => {
                let out = iter
                    .next()
                    .filter(|v| !v.is_empty())
                    .ok_or("--html needs a value (OUT.html)")?;
                html = Some(PathBuf::from(out));
            }
            flag if flag.starts_with("--html=") => {
                html = Some(PathBuf::from(&flag["--html=".len()..]));
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("`{flag}` does not apply to `ember-proxy report`"));
            }
            file if log.is_none() => log = Some(PathBuf::from(file)),
            extra => return Err(format!("unexpected argument `{extra}`")),
        }
    }
    let log = log.ok_or("`report` needs the compare log to read (report FILE)")?;
    let html = html.unwrap_or_else(|| {
        let mut name = log.clone().into_os_string();
        name.push(".html");
        PathBuf::from(name)
    });
    Ok(Command::Report(ReportArgs { log, html }))
}

/// Where clients are relayed to, still unresolved.
#[derive(Debug)]
pub enum Upstream {
    Relay(String),
    Socket(PathBuf),
    Balance(Vec<Member>, Strategy),
}

/// One `-b` entry: `HOST:PORT`, then options as `key=value` separated by spaces
/// (`10.0.0.1:80 weight=3 maxconn=100`). An address never holds a space or `=`, so an IPv6 literal
/// (`[::1]:80 weight=2`) parses the same way.
#[derive(Debug, PartialEq, Eq)]
pub struct Member {
    pub target: String,
    pub weight: u32,
    /// `maxconn=N`: at most N clients at once on this backend; more wait in the queue.
    pub max_conn: Option<usize>,
}

/// The highest `weight=` accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// The highest per-backend `maxconn=` accepted.
pub const MAX_MAXCONN: usize = 1_000_000;

/// The most `--workers` accepted (threads, each with its own listener and pools).
pub const MAX_WORKERS: usize = 256;

#[derive(Debug)]
pub struct RunArgs {
    pub listen: String,
    pub upstream: Upstream,
    pub duplex: Vec<String>,
    pub verbose: bool,
    pub shadow_buffer: usize,
    pub grace: Duration,
    /// `--relay-mode` (`--no-splice` is `copy`).
    pub relay_mode: RelayMode,
    /// `None`: half-closed connections wait forever.
    pub fin_timeout: Option<Duration>,
    pub retries: u32,
    pub resolve_interval: Duration,
    pub max_conn: Option<usize>,
    /// `--check`/`--check-http`: active health checks.
    pub check: Option<ember::proxy::Check>,
    pub connect_timeout: Duration,
    /// How long a client waits for a backend under its `maxconn=`.
    pub queue_timeout: Duration,
    /// `None`: idle clients are never closed.
    pub client_timeout: Option<Duration>,
    /// `None`: idle backends are never closed.
    pub server_timeout: Option<Duration>,
    pub access_log: AccessLog,
    pub log_format: access::Format,
    /// `--admin`: where /metrics, /stats and /health are served.
    pub admin: Option<SocketAddr>,
    /// `--workers`: event loops, one thread each (1 to [`MAX_WORKERS`]).
    pub workers: usize,
    /// `--send-proxy`/`--send-proxy-v2`: a PROXY header before every backend's bytes.
    pub send_proxy: Option<proxy_protocol::Version>,
    /// `--accept-proxy`: clients start with a PROXY header.
    pub accept_proxy: bool,
    /// `--tls-cert`/`--tls-key`/`--tls-client-ca`: TLS terminated on the listener.
    pub tls: Option<ListenerTls>,
    /// `--backend-tls` and friends: TLS to the backends.
    pub backend_tls: Option<BackendTls>,
    /// `--sni-route NAME=HOST:PORT`: pass-through routing by the ClientHello's name.
    pub sni_routes: Vec<(String, String)>,
    pub shadow_max_conns: Option<usize>,
    pub shadow_max_memory: Option<usize>,
    /// `--shadow-sample`: the share of requests (HTTP) or clients (TCP) mirrored.
    pub shadow_sample: f64,
    /// `--http` and its options: shadows get whole requests.
    pub http: Option<HttpShadowing>,
    /// `--compare`/`--compare-tcp` and their options.
    pub compare: Option<CompareArgs>,
}

/// `--http`: how requests are mirrored to the shadows.
#[derive(Debug, Clone, Default)]
pub struct HttpShadowing {
    /// `--shadow-methods`: only these (upper-case); `None`: all.
    pub methods: Option<Vec<String>>,
    /// `--shadow-host`: the Host header the shadows get.
    pub host: Option<String>,
    /// `--shadow-header`: headers added to mirrored requests.
    pub headers: Vec<(String, String)>,
    /// `--shadow-timeout`: how long a shadow may take to answer.
    pub timeout: Duration,
}

/// `--compare` (HTTP responses) or `--compare-tcp` (byte streams).
#[derive(Debug, Clone, Default)]
pub struct CompareArgs {
    /// `--compare-log`: one JSON line per comparison.
    pub log: Option<PathBuf>,
    pub ignore_headers: Vec<String>,
    pub ignore_json: Vec<String>,
    /// `--compare-max-body`.
    pub max_body: usize,
    /// `--reference`: a second copy of production, for noise.
    pub reference: Option<String>,
}

/// The default `--compare-max-body`: 1 MiB.
pub const DEFAULT_COMPARE_MAX_BODY: usize = 1024 * 1024;

/// The default `--shadow-timeout`.
pub const DEFAULT_SHADOW_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS terminated on the listener.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Certificate chain and key files, the first the default, the others by SNI.
    pub identities: Vec<(PathBuf, PathBuf)>,
    /// Client certificates must be issued by these CAs.
    pub client_ca: Option<PathBuf>,
}

/// TLS to the backends.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
    /// Verify nothing.
    pub insecure: bool,
}

#[derive(Debug)]
pub struct DemoArgs {
    pub requests: usize,
    pub verbose: bool,
}

/// The flags that take a value, by every name they answer to.
const VALUE_FLAGS: &[(&str, &str)] = &[
    ("-l", "--listen"),
    ("-r", "--relay"),
    ("-s", "--socket"),
    ("-d", "--duplex"),
    ("-b", "--balance"),
    ("", "--strategy"),
    ("", "--shadow-buffer"),
    ("", "--grace"),
    ("", "--fin-timeout"),
    ("", "--retries"),
    ("", "--max-conn"),
    ("", "--resolve-interval"),
    ("", "--relay-mode"),
    ("", "--check-http"),
    ("", "--check-interval"),
    ("", "--rise"),
    ("", "--fall"),
    ("", "--connect-timeout"),
    ("", "--queue-timeout"),
    ("", "--client-timeout"),
    ("", "--server-timeout"),
    ("", "--shadow-max-conns"),
    ("", "--shadow-max-memory"),
    ("", "--access-log"),
    ("", "--log-format"),
    ("", "--admin"),
    ("", "--workers"),
    ("-c", "--config"),
    ("", "--tls-cert"),
    ("", "--tls-key"),
    ("", "--tls-client-ca"),
    ("", "--backend-ca"),
    ("", "--backend-sni"),
    ("", "--sni-route"),
    ("", "--shadow-sample"),
    ("", "--shadow-methods"),
    ("", "--shadow-host"),
    ("", "--shadow-header"),
    ("", "--shadow-timeout"),
    ("", "--compare-log"),
    ("", "--compare-ignore-header"),
    ("", "--compare-ignore-json"),
    ("", "--compare-max-body"),
    ("", "--reference"),
    ("-n", "--requests"),
];

/// The flags that take no value, by every name they answer to.
const SWITCHES: &[(&str, &str)] = &[
    ("-h", "--help"),
    ("-V", "--version"),
    ("-v", "--verbose"),
    ("", "--no-splice"),
    ("", "--check"),
    ("", "--send-proxy"),
    ("", "--send-proxy-v2"),
    ("", "--accept-proxy"),
    ("", "--backend-tls"),
    ("", "--backend-tls-insecure"),
    ("", "--http"),
    ("", "--compare"),
    ("", "--compare-tcp"),
];

/// The value flags given once per value, not as one comma-separated list (a config
/// file's list for them becomes the flag repeated).
const REPEATABLE: &[&str] = &[
    "--tls-cert",
    "--tls-key",
    "--sni-route",
    "--shadow-header",
    "--compare-ignore-header",
    "--compare-ignore-json",
];

/// Whether `flag` (a long name) is given once per value.
pub fn is_repeatable(flag: &str) -> bool {
    REPEATABLE.contains(&flag)
}

/// Whether a flag takes a value (for the config file, whose keys are flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    Switch,
    Value,
}

/// What kind of flag `flag` (a long or short name) is; `None` if there is no such flag.
/// `--help`, `--version` and `--config` itself are not settings.
pub fn flag_kind(flag: &str) -> Option<FlagKind> {
    if matches!(
        long_of(flag),
        "--help" | "--version" | "--config" | "--requests"
    ) {
        return None;
    }
    if is_switch(flag) {
        Some(FlagKind::Switch)
    } else if is_value_flag(flag) {
        Some(FlagKind::Value)
    } else {
        None
    }
}

fn long_of(flag: &str) -> &str {
    VALUE_FLAGS
        .iter()
        .chain(SWITCHES)
        .find(|(short, long)| (!short.is_empty() && flag == *short) || flag == *long)
        .map_or(flag, |(_, long)| long)
}

pub fn parse(args: &[String]) -> Result<Command, String> {
    if args.is_empty() {
        return Ok(Command::Usage);
    }
    if args[0] == "report" {
        return parse_report(&args[1..]);
    }
    let demo = args[0] == "demo";
    let rest = if demo { &args[1..] } else { args };
    let mut seen = Seen::default();
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        for (flag, inline) in flags_in(arg)? {
            let flag = flag.as_str();
            if is_switch(flag) && inline.is_some() {
                return Err(format!("{flag} takes no value"));
            }
            match flag {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "-v" | "--verbose" => seen.verbose = true,
                "--no-splice" => seen.no_splice = true,
                "--check" => seen.check = true,
                "--send-proxy" => seen.send_proxy = Some(proxy_protocol::Version::V1),
                "--send-proxy-v2" => seen.send_proxy = Some(proxy_protocol::Version::V2),
                "--accept-proxy" => seen.accept_proxy = true,
                "--backend-tls" => seen.backend_tls = true,
                "--backend-tls-insecure" => seen.backend_tls_insecure = true,
                "--http" => seen.http = true,
                "--compare" => seen.compare = true,
                "--compare-tcp" => seen.compare_tcp = true,
                _ if is_value_flag(flag) => {
                    let value = match inline {
                        Some(v) => v,
                        None => iter
                            .next()
                            .filter(|v| is_value(v))
                            .map(String::as_str)
                            .ok_or_else(|| {
                                format!("{flag} needs a value ({})", placeholder(flag))
                            })?,
                    };
                    if value.is_empty() {
                        return Err(format!("{flag} needs a value ({})", placeholder(flag)));
                    }
                    seen.set(long_name(flag), value.to_owned())?;
                }
                _ if arg.starts_with('-') && arg.len() > 1 => {
                    return Err(format!("unknown flag `{arg}`"));
                }
                _ if arg == "demo" => return Err("`demo` must come first".into()),
                _ => return Err(format!("unexpected argument `{arg}`")),
            }
        }
    }
    if demo { seen.demo() } else { seen.run() }
}

/// The flags one argument holds, each with the value it carries inline, if any:
/// `--flag`, `--flag=value`, or a getopt cluster of short flags. In a cluster every
/// letter is a flag until one that takes a value, which takes the rest of the cluster
/// (`-vl8080`) or, if nothing is left, the next argument (`-vl 8080`). Anything else
/// (`-`, `demo`, a stray word) comes back as it is, for `parse` to name.
fn flags_in(arg: &str) -> Result<Vec<(String, Option<&str>)>, String> {
    if let Some((flag, value)) = arg.split_once('=')
        && flag.starts_with("--")
    {
        return Ok(vec![(flag.to_owned(), Some(value))]);
    }
    let Some(letters) = arg
        .strip_prefix('-')
        .filter(|letters| !letters.is_empty() && !letters.starts_with('-'))
    else {
        return Ok(vec![(arg.to_owned(), None)]);
    };
    let mut flags = Vec::new();
    // By character, not byte: a multi-byte letter (`-é`) is an unknown flag, not a panic.
    for (at, letter) in letters.char_indices() {
        let flag = format!("-{letter}");
        if is_value_flag(&flag) {
            let value = &letters[at + letter.len_utf8()..];
            flags.push((flag, Some(value).filter(|v| !v.is_empty())));
            return Ok(flags);
        }
        if !is_switch(&flag) {
            return Err(if flag == arg {
                format!("unknown flag `{flag}`")
            } else {
                format!("unknown flag `{flag}` in `{arg}`")
            });
        }
        flags.push((flag, None));
    }
    Ok(flags)
}

/// Whether the argument after a flag is that flag's value: anything but another flag.
/// `-` is a value (`--access-log -`), and so is a negative number (`--retries -1`), which
/// the flag then rejects by name.
fn is_value(arg: &str) -> bool {
    let mut chars = arg.chars();
    chars.next() != Some('-') || matches!(chars.next(), None | Some('0'..='9'))
}

fn is_switch(flag: &str) -> bool {
    SWITCHES
        .iter()
        .any(|(short, long)| (!short.is_empty() && flag == *short) || flag == *long)
}

fn is_value_flag(flag: &str) -> bool {
    VALUE_FLAGS
        .iter()
        .any(|(short, long)| (!short.is_empty() && flag == *short) || flag == *long)
}

fn long_name(flag: &str) -> &'static str {
    VALUE_FLAGS
        .iter()
        .find(|(short, long)| flag == *short || flag == *long)
        .map_or("", |(_, long)| long)
}

fn placeholder(flag: &str) -> &'static str {
    match long_name(flag) {
        "--listen" => "[HOST:]PORT",
        "--relay" => "HOST:PORT",
        "--socket" => "PATH",
        "--duplex" => "HOST:PORT[,HOST:PORT...]",
        "--balance" => "HOST:PORT[ weight=N][ maxconn=N][,HOST:PORT...]",
        "--strategy" => "round-robin, least-conn, random, p2c or source",
        "--shadow-buffer" | "--shadow-max-memory" => "BYTES",
        "--grace" | "--fin-timeout" | "--connect-timeout" | "--queue-timeout"
        | "--client-timeout" | "--server-timeout" => "SECONDS",
        "--retries" | "--rise" | "--fall" | "--max-conn" => "N",
        "--check-http" => "PATH",
        "--check-interval" | "--resolve-interval" => "SECONDS",
        "--relay-mode" => "auto, kernel, splice or copy",
        "--shadow-max-conns" | "--workers" => "N",
        "--requests" => "N",
        "--access-log" => "PATH, - or off",
        "--admin" => "HOST:PORT",
        "--config" | "--tls-cert" | "--tls-key" | "--tls-client-ca" | "--backend-ca" => "FILE",
        "--backend-sni" => "NAME",
        "--sni-route" => "NAME=HOST:PORT",
        "--log-format" => "text or json",
        "--shadow-sample" => "FRACTION",
        "--shadow-methods" => "METHOD[,METHOD...]",
        "--shadow-host" => "NAME",
        "--shadow-header" => "'NAME: VALUE'",
        "--shadow-timeout" => "SECONDS",
        "--compare-log" => "PATH",
        "--compare-ignore-header" => "NAME",
        "--compare-ignore-json" => "PATH",
        "--compare-max-body" => "BYTES",
        "--reference" => "HOST:PORT",
        _ => "a value",
    }
}

#[derive(Default)]
struct Seen {
    listen: Option<String>,
    relay: Option<String>,
    socket: Option<String>,
    balance: Option<String>,
    strategy: Option<String>,
    duplex: Vec<String>,
    tls_certs: Vec<String>,
    tls_keys: Vec<String>,
    sni_routes: Vec<String>,
    tls_client_ca: Option<String>,
    backend_ca: Option<String>,
    backend_sni: Option<String>,
    backend_tls: bool,
    backend_tls_insecure: bool,
    shadow_buffer: Option<String>,
    grace: Option<String>,
    fin_timeout: Option<String>,
    retries: Option<String>,
    max_conn: Option<String>,
    resolve_interval: Option<String>,
    relay_mode: Option<String>,
    check: bool,
    check_http: Option<String>,
    check_interval: Option<String>,
    rise: Option<String>,
    fall: Option<String>,
    connect_timeout: Option<String>,
    queue_timeout: Option<String>,
    access_log: Option<String>,
    log_format: Option<String>,
    admin: Option<String>,
    workers: Option<String>,
    client_timeout: Option<String>,
    server_timeout: Option<String>,
    shadow_max_conns: Option<String>,
    shadow_max_memory: Option<String>,
    requests: Option<String>,
    config: Option<String>,
    verbose: bool,
    no_splice: bool,
    send_proxy: Option<proxy_protocol::Version>,
    accept_proxy: bool,
    http: bool,
    compare: bool,
    compare_tcp: bool,
    shadow_sample: Option<String>,
    shadow_methods: Option<String>,
    shadow_host: Option<String>,
    shadow_headers: Vec<String>,
    shadow_timeout: Option<String>,
    compare_log: Option<String>,
    compare_ignore_headers: Vec<String>,
    compare_ignore_json: Vec<String>,
    compare_max_body: Option<String>,
    reference: Option<String>,
}

impl Seen {
    fn set(&mut self, long: &str, value: String) -> Result<(), String> {
        let slot = match long {
            "--listen" => &mut self.listen,
            "--relay" => &mut self.relay,
            "--socket" => &mut self.socket,
            "--balance" => &mut self.balance,
            "--strategy" => &mut self.strategy,
            "--shadow-buffer" => &mut self.shadow_buffer,
            "--grace" => &mut self.grace,
            "--fin-timeout" => &mut self.fin_timeout,
            "--retries" => &mut self.retries,
            "--max-conn" => &mut self.max_conn,
            "--resolve-interval" => &mut self.resolve_interval,
            "--relay-mode" => &mut self.relay_mode,
            "--check-http" => &mut self.check_http,
            "--check-interval" => &mut self.check_interval,
            "--rise" => &mut self.rise,
            "--fall" => &mut self.fall,
            "--connect-timeout" => &mut self.connect_timeout,
            "--queue-timeout" => &mut self.queue_timeout,
            "--access-log" => &mut self.access_log,
            "--log-format" => &mut self.log_format,
            "--admin" => &mut self.admin,
            "--workers" => &mut self.workers,
            "--client-timeout" => &mut self.client_timeout,
            "--server-timeout" => &mut self.server_timeout,
            "--shadow-max-conns" => &mut self.shadow_max_conns,
            "--shadow-max-memory" => &mut self.shadow_max_memory,
            "--requests" => &mut self.requests,
            "--config" => &mut self.config,
            "--tls-client-ca" => &mut self.tls_client_ca,
            "--backend-ca" => &mut self.backend_ca,
            "--backend-sni" => &mut self.backend_sni,
            "--shadow-sample" => &mut self.shadow_sample,
            "--shadow-methods" => &mut self.shadow_methods,
            "--shadow-host" => &mut self.shadow_host,
            "--shadow-timeout" => &mut self.shadow_timeout,
            "--compare-log" => &mut self.compare_log,
            "--compare-max-body" => &mut self.compare_max_body,
            "--reference" => &mut self.reference,
            "--tls-cert"
            | "--tls-key"
            | "--sni-route"
            | "--shadow-header"
            | "--compare-ignore-header"
            | "--compare-ignore-json" => {
                let list = match long {
                    "--tls-cert" => &mut self.tls_certs,
                    "--tls-key" => &mut self.tls_keys,
                    "--shadow-header" => &mut self.shadow_headers,
                    "--compare-ignore-header" => &mut self.compare_ignore_headers,
                    "--compare-ignore-json" => &mut self.compare_ignore_json,
                    _ => &mut self.sni_routes,
                };
                list.push(value);
                return Ok(());
            }
            "--duplex" => {
                self.duplex.extend(split_list(&value, long)?);
                return Ok(());
            }
            _ => return Err(format!("unknown flag `{long}`")),
        };
        if slot.is_some() {
            return Err(format!("{long} given twice"));
        }
        *slot = Some(value);
        Ok(())
    }

    fn run(self) -> Result<Command, String> {
        if self.requests.is_some() {
            return Err("--requests belongs to `ember-proxy demo`".into());
        }
        if let Some(path) = &self.config {
            if self.listen.is_some() || self.relay.is_some() || self.balance.is_some() {
                return Err("--config: the listeners are in the file; give no -l/-r/-b".into());
            }
            return Ok(Command::Config(PathBuf::from(path)));
        }
        let check = self.check()?;
        let tls = self.listener_tls()?;
        let backend_tls = self.backend_tls()?;
        let (shadow_sample, http, compare) = self.shadowing(!self.sni_routes.is_empty())?;
        let listen = self.listen.ok_or("missing -l/--listen [HOST:]PORT")?;
        check_listen(&listen)?;
        let upstream = match (self.relay, self.socket, self.balance) {
            (Some(relay), None, None) => {
                check_host_port(&relay, "--relay")?;
                Upstream::Relay(relay)
            }
            (None, Some(path), None) => Upstream::Socket(path.into()),
            (None, None, Some(list)) => {
                let strategy = match &self.strategy {
                    Some(s) => s.parse::<Strategy>()?,
                    None => Strategy::RoundRobin,
                };
                Upstream::Balance(parse_members(&list)?, strategy)
            }
            (None, None, None) => {
                return Err("missing a relay: -r/--relay HOST:PORT, -s/--socket PATH or -b/--balance HOST:PORT,...".into());
            }
            _ => return Err("choose one of -r/--relay, -s/--socket and -b/--balance".into()),
        };
        if self.strategy.is_some() && !matches!(upstream, Upstream::Balance(..)) {
            return Err("--strategy only applies to -b/--balance".into());
        }
        let shadow_buffer = match &self.shadow_buffer {
            Some(s) => parse_size(s, "--shadow-buffer")?,
            None => DEFAULT_SHADOW_BUFFER,
        };
        let grace = match &self.grace {
            Some(s) => parse_seconds(s, "--grace")?,
            None => Duration::from_secs(10),
        };
        let fin_timeout =
            optional_seconds(&self.fin_timeout, "--fin-timeout", DEFAULT_FIN_TIMEOUT)?;
        let client_timeout = optional_seconds(
            &self.client_timeout,
            "--client-timeout",
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let server_timeout = optional_seconds(
            &self.server_timeout,
            "--server-timeout",
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let connect_timeout = match &self.connect_timeout {
            Some(s) => Some(parse_seconds(s, "--connect-timeout")?)
                .filter(|d| !d.is_zero())
                .ok_or("--connect-timeout must be more than 0 seconds")?,
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        let access_log = match self.access_log.as_deref() {
            None | Some("-") => AccessLog::Stderr,
            Some("off") => AccessLog::Off,
            Some(path) => AccessLog::File(PathBuf::from(path)),
        };
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => access::Format::Text,
            Some("json") => access::Format::Json,
            Some(other) => {
                return Err(format!("--log-format `{other}` is not text or json"));
            }
        };
        let admin = match &self.admin {
            Some(addr) => Some(resolve(addr, "--admin")?),
            None => None,
        };
        let workers = match &self.workers {
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    format!("--workers `{n}` is not a number from 1 to {MAX_WORKERS}")
                })?,
            None => 1,
        };
        let queue_timeout = match &self.queue_timeout {
            Some(s) => parse_seconds(s, "--queue-timeout")?,
            None => ember::proxy::DEFAULT_QUEUE_TIMEOUT,
        };
        let retries = match &self.retries {
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= 100)
                .ok_or_else(|| format!("--retries `{n}` is not a number from 0 to 100"))?,
            None => DEFAULT_RETRIES,
        };
        let relay_mode = match (&self.relay_mode, self.no_splice) {
            (Some(_), true) => {
                return Err("--no-splice and --relay-mode cannot be used together \
                            (--no-splice is --relay-mode copy)"
                    .into());
            }
            (Some(mode), false) => mode
                .parse::<RelayMode>()
                .map_err(|e| format!("--relay-mode: {e}"))?,
            (None, true) => RelayMode::Copy,
            (None, false) => RelayMode::Auto,
        };
        let resolve_interval = match &self.resolve_interval {
            Some(s) => parse_seconds(s, "--resolve-interval")?,
            None => ember::DEFAULT_RESOLVE_INTERVAL,
        };
        let max_conn = match &self.max_conn {
            Some(n) => Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("--max-conn `{n}` is not a number of clients, at least 1")
            })?),
            None => None,
        };
        let shadow_max_conns = match &self.shadow_max_conns {
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                format!("--shadow-max-conns `{n}` is not a number of connections, 0 or more")
            })?),
            None => None,
        };
        let shadow_max_memory = match &self.shadow_max_memory {
            Some(s) => Some(parse_size(s, "--shadow-max-memory")?),
            None => None,
        };
        let sni_routes = self
            .sni_routes
            .iter()
            .map(|route| {
                let (name, target) = route
                    .split_once('=')
                    .ok_or_else(|| format!("--sni-route `{route}` is not NAME=HOST:PORT"))?;
                if name.is_empty() {
                    return Err(format!("--sni-route `{route}` has no name"));
                }
                check_host_port(target, "--sni-route")?;
                Ok((name.to_ascii_lowercase(), target.to_owned()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if !sni_routes.is_empty() && tls.is_some() {
            return Err(
                "--sni-route passes TLS through untouched; it cannot be used with --tls-cert"
                    .into(),
            );
        }
        Ok(Command::Run(RunArgs {
            shadow_sample,
            http,
            compare,
            listen,
            upstream,
            duplex: self.duplex,
            verbose: self.verbose,
            shadow_buffer,
            grace,
            relay_mode,
            send_proxy: self.send_proxy,
            accept_proxy: self.accept_proxy,
            tls,
            backend_tls,
            sni_routes,
            fin_timeout,
            shadow_max_conns,
            shadow_max_memory,
            retries,
            resolve_interval,
            max_conn,
            check,
            connect_timeout,
            queue_timeout,
            client_timeout,
            server_timeout,
            access_log,
            log_format,
            admin,
            workers,
        }))
    }

    /// `--http`, `--shadow-*` and `--compare*`: (sample, HTTP mirroring, comparison).
    fn shadowing(
        &self,
        sni_routing: bool,
    ) -> Result<(f64, Option<HttpShadowing>, Option<CompareArgs>), String> {
        let sample = match &self.shadow_sample {
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| {
                    format!("--shadow-sample `{s}` is not a fraction above 0 and at most 1")
                })?,
            None => 1.0,
        };
        let compare_http = self.compare
            || self.reference.is_some()
            || !self.compare_ignore_headers.is_empty()
            || !self.compare_ignore_json.is_empty();
        if self.compare_tcp && (self.http || compare_http) {
            return Err(
                "--compare-tcp compares byte streams; it cannot be used with --http, \
                 --compare, --reference or --compare-ignore-*"
                    .into(),
            );
        }
        let http_only = [
            (self.shadow_methods.is_some(), "--shadow-methods"),
            (self.shadow_host.is_some(), "--shadow-host"),
            (!self.shadow_headers.is_empty(), "--shadow-header"),
            (self.shadow_timeout.is_some(), "--shadow-timeout"),
        ];
        let http = self.http || compare_http;
        if !http && let Some((_, flag)) = http_only.iter().find(|(given, _)| *given) {
            return Err(format!("{flag} needs --http"));
        }
        let comparing = compare_http || self.compare_tcp;
        if !comparing {
            for (given, flag) in [
                (self.compare_log.is_some(), "--compare-log"),
                (self.compare_max_body.is_some(), "--compare-max-body"),
            ] {
                if given {
                    return Err(format!("{flag} needs --compare or --compare-tcp"));
                }
            }
        }
        if (http || comparing || self.shadow_sample.is_some()) && self.duplex.is_empty() {
            return Err("--http, --compare and --shadow-sample need shadows: -d HOST:PORT".into());
        }
        if http && sni_routing {
            return Err(
                "--sni-route passes TLS through untouched; it cannot be used with \
                 --http or --compare"
                    .into(),
            );
        }
        let http = if http {
            let methods = match &self.shadow_methods {
                Some(list) => {
                    let methods: Vec<String> = list
                        .split(',')
                        .map(|m| m.trim().to_ascii_uppercase())
                        .collect();
                    if methods
                        .iter()
                        .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
                    {
                        return Err(format!(
                            "--shadow-methods `{list}` is not METHOD[,METHOD...]"
                        ));
                    }
                    Some(methods)
                }
                None => None,
            };
            let headers = self
                .shadow_headers
                .iter()
                .map(|h| {
                    let (name, value) = h
                        .split_once(':')
                        .filter(|(n, _)| is_header_name(n))
                        .ok_or_else(|| format!("--shadow-header `{h}` is not 'NAME: VALUE'"))?;
                    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                        return Err(format!("--shadow-header `{h}` has a line break"));
                    }
                    Ok((name.to_owned(), value.trim().to_owned()))
                })
                .collect::<Result<_, String>>()?;
            if let Some(host) = &self.shadow_host
                && (host.is_empty()
                    || host
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
            {
                return Err(format!("--shadow-host `{host}` is not a host name"));
            }
            let timeout = match &self.shadow_timeout {
                Some(s) => Some(parse_seconds(s, "--shadow-timeout")?)
                    .filter(|d| !d.is_zero())
                    .ok_or("--shadow-timeout must be more than 0 seconds")?,
                None => DEFAULT_SHADOW_TIMEOUT,
            };
            Some(HttpShadowing {
                methods,
                host: self.shadow_host.clone(),
                headers,
                timeout,
            })
        } else {
            None
        };
        let compare = if comparing {
            if let Some(reference) = &self.reference {
                check_host_port(reference, "--reference")?;
            }
            let max_body = match &self.compare_max_body {
                Some(s) => parse_size(s, "--compare-max-body")?,
                None => DEFAULT_COMPARE_MAX_BODY,
            };
            for name in &self.compare_ignore_headers {
                if !is_header_name(name) {
                    return Err(format!(
                        "--compare-ignore-header `{name}` is not a header name"
                    ));
                }
            }
            for path in &self.compare_ignore_json {
                if !path.starts_with('$') {
                    return Err(format!(
                        "--compare-ignore-json `{path}` is not a JSON path ($.a.b[0], $.items[*].id)"
                    ));
                }
            }
            Some(CompareArgs {
                log: self.compare_log.as_ref().map(PathBuf::from),
                ignore_headers: self.compare_ignore_headers.clone(),
                ignore_json: self.compare_ignore_json.clone(),
                max_body,
                reference: self.reference.clone(),
            })
        } else {
            None
        };
        Ok((sample, http, compare))
    }

    fn demo(self) -> Result<Command, String> {
        if let Some(flag) = [
            (self.listen.is_some(), "-l"),
            (self.relay.is_some(), "-r"),
            (self.socket.is_some(), "-s"),
            (self.balance.is_some(), "-b"),
            (!self.duplex.is_empty(), "-d"),
            (self.strategy.is_some(), "--strategy"),
            (self.shadow_buffer.is_some(), "--shadow-buffer"),
            (self.grace.is_some(), "--grace"),
            (self.fin_timeout.is_some(), "--fin-timeout"),
            (self.retries.is_some(), "--retries"),
            (self.max_conn.is_some(), "--max-conn"),
            (self.resolve_interval.is_some(), "--resolve-interval"),
            (self.check, "--check"),
            (self.check_http.is_some(), "--check-http"),
            (self.check_interval.is_some(), "--check-interval"),
            (self.rise.is_some(), "--rise"),
            (self.fall.is_some(), "--fall"),
            (self.connect_timeout.is_some(), "--connect-timeout"),
            (self.queue_timeout.is_some(), "--queue-timeout"),
            (self.access_log.is_some(), "--access-log"),
            (self.log_format.is_some(), "--log-format"),
            (self.admin.is_some(), "--admin"),
            (self.workers.is_some(), "--workers"),
            (self.config.is_some(), "--config"),
            (self.send_proxy.is_some(), "--send-proxy"),
            (self.accept_proxy, "--accept-proxy"),
            (
                !self.tls_certs.is_empty() || !self.tls_keys.is_empty(),
                "--tls-cert",
            ),
            (self.tls_client_ca.is_some(), "--tls-client-ca"),
            (
                self.backend_tls
                    || self.backend_tls_insecure
                    || self.backend_ca.is_some()
                    || self.backend_sni.is_some(),
                "--backend-tls",
            ),
            (!self.sni_routes.is_empty(), "--sni-route"),
            (self.client_timeout.is_some(), "--client-timeout"),
            (self.server_timeout.is_some(), "--server-timeout"),
            (self.shadow_max_conns.is_some(), "--shadow-max-conns"),
            (self.shadow_max_memory.is_some(), "--shadow-max-memory"),
        ]
        .iter()
        .find_map(|(given, flag)| given.then_some(flag))
        {
            return Err(format!("{flag} does not apply to `ember-proxy demo`"));
        }
        let requests = match &self.requests {
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=1_000_000).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "--requests `{n}` is not a number from 1 to 1000000"
                    ));
                }
            },
            None => 200,
        };
        Ok(Command::Demo(DemoArgs {
            requests,
            verbose: self.verbose,
        }))
    }
}

/// An HTTP header name: a token (RFC 9110 5.1).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn split_list(list: &str, flag: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!("{flag} `{list}` has an empty entry"));
    }
    for item in &items {
        check_host_port(item, flag)?;
    }
    Ok(items)
}

/// `-b`'s list: `HOST:PORT[ weight=N][ maxconn=N]`, comma-separated.
fn parse_members(list: &str) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    for entry in list.split(',') {
        let mut words = entry.split_whitespace();
        let Some(target) = words.next() else {
            return Err(format!("--balance `{list}` has an empty entry"));
        };
        check_host_port(target, "--balance")?;
        let entry = entry.trim();
        let (mut weight, mut max_conn) = (None, None);
        for option in words {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let (slot, range) = match key {
                "weight" => (&mut weight, 1..=MAX_WEIGHT as usize),
                "maxconn" => (&mut max_conn, 1..=MAX_MAXCONN),
                _ => {
                    return Err(format!(
                        "--balance `{entry}`: unknown option `{option}` (weight=N, maxconn=N)"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("--balance `{entry}`: {key} given twice"));
            }
            let n = value.parse::<usize>().ok().filter(|n| range.contains(n));
            *slot = Some(n.ok_or_else(|| {
                format!(
                    "--balance `{entry}`: {key} `{value}` is not a whole number from 1 to {}",
                    range.end()
                )
            })?);
        }
        members.push(Member {
            target: target.to_owned(),
            weight: weight.map_or(1, |w| w as u32),
            max_conn,
        });
    }
    Ok(members)
}

/// HOST:PORT with a valid port (the host is checked when it is resolved).
fn check_host_port(s: &str, flag: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{flag} `{s}` is not HOST:PORT"));
    };
    if host.is_empty() {
        return Err(format!("{flag} `{s}` has no host"));
    }
    parse_port(port).map_err(|why| format!("{flag} `{s}`: {why}"))?;
    Ok(())
}

/// PORT or HOST:PORT; port 0 asks the kernel for a free port.
fn check_listen(s: &str) -> Result<(), String> {
    let port = s.rsplit_once(':').map_or(s, |(_, p)| p);
    if port == "0" {
        return Ok(());
    }
    parse_port(port).map_err(|why| format!("--listen `{s}`: {why}"))?;
    Ok(())
}

/// BYTES: a whole number with an optional K, M or G suffix (powers of 1024), at least 1.
fn parse_size(s: &str, flag: &str) -> Result<usize, String> {
    let not_a_size = || {
        format!(
            "{flag} `{s}` is not a size: give bytes with an optional K, M or G suffix, at least 1"
        )
    };
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let multiplier: usize = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(not_a_size()),
    };
    let n = digits
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(not_a_size)?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{flag} `{s}` is more bytes than this machine can address"))
}

impl Seen {
    /// `--check`, `--check-http`, `--check-interval`, `--rise`, `--fall`.
    fn listener_tls(&self) -> Result<Option<ListenerTls>, String> {
        if self.tls_certs.len() != self.tls_keys.len() {
            return Err(format!(
                "--tls-cert and --tls-key come in pairs ({} certificates, {} keys)",
                self.tls_certs.len(),
                self.tls_keys.len()
            ));
        }
        if self.tls_certs.is_empty() {
            if self.tls_client_ca.is_some() {
                return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
            }
            return Ok(None);
        }
        Ok(Some(ListenerTls {
            identities: self
                .tls_certs
                .iter()
                .zip(&self.tls_keys)
                .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k)))
                .collect(),
            client_ca: self.tls_client_ca.as_ref().map(PathBuf::from),
        }))
    }

    fn backend_tls(&self) -> Result<Option<BackendTls>, String> {
        let asked = self.backend_tls
            || self.backend_tls_insecure
            || self.backend_ca.is_some()
            || self.backend_sni.is_some();
        if !asked {
            return Ok(None);
        }
        if self.backend_tls_insecure && self.backend_ca.is_some() {
            return Err("--backend-tls-insecure verifies nothing: drop --backend-ca or it".into());
        }
        Ok(Some(BackendTls {
            ca: self.backend_ca.as_ref().map(PathBuf::from),
            sni: self.backend_sni.clone(),
            insecure: self.backend_tls_insecure,
        }))
    }

    fn check(&self) -> Result<Option<ember::proxy::Check>, String> {
        let tuning = [
            (self.check_interval.is_some(), "--check-interval"),
            (self.rise.is_some(), "--rise"),
            (self.fall.is_some(), "--fall"),
        ];
        if !self.check && self.check_http.is_none() {
            if let Some((_, flag)) = tuning.iter().find(|(given, _)| *given) {
                return Err(format!("{flag} needs --check or --check-http"));
            }
            return Ok(None);
        }
        let mut check = ember::proxy::Check::default();
        if let Some(path) = &self.check_http {
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return Err(format!("--check-http `{path}` is not a path like /health"));
            }
            check.http_path = Some(path.clone());
        }
        if let Some(s) = &self.check_interval {
            check.interval = Some(parse_seconds(s, "--check-interval")?)
                .filter(|d| !d.is_zero())
                .ok_or("--check-interval must be more than 0 seconds")?;
            check.timeout = check.interval;
        }
        for (value, flag, slot) in [
            (&self.rise, "--rise", &mut check.rise),
            (&self.fall, "--fall", &mut check.fall),
        ] {
            if let Some(n) = value {
                *slot = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("{flag} `{n}` is not a number from 1 to 100"))?;
            }
        }
        Ok(Some(check))
    }
}

/// A timeout flag where 0 means "never": `None`.
fn optional_seconds(
    value: &Option<String>,
    flag: &str,
    default: Duration,
) -> Result<Option<Duration>, String> {
    match value {
        Some(s) => {
            let timeout = parse_seconds(s, flag).map_err(|e| format!("{e}; 0 means never"))?;
            Ok(Some(timeout).filter(|d| !d.is_zero()))
        }
        None => Ok(Some(default)),
    }
}

/// The longest any SECONDS flag accepts: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// SECONDS: a number, fractions allowed, from 0 to a day.
fn parse_seconds(s: &str, flag: &str) -> Result<Duration, String> {
    let seconds = s
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("{flag} `{s}` is not a number of seconds, like 5 or 0.2"))?;
    if seconds > MAX_SECONDS {
        return Err(format!(
            "{flag} `{s}` is more than a day ({MAX_SECONDS} seconds)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Resolves `[HOST:]PORT` for listening (blocking; before the reactor starts).
pub fn resolve_listen(s: &str) -> Result<SocketAddr, String> {
    if !s.contains(':') {
        return Ok(SocketAddr::from((
            [0, 0, 0, 0],
            s.parse::<u16>().unwrap_or(0),
        )));
    }
    resolve(s, "--listen")
}

/// A relay or shadow target: a numeric address as it is, a name checked to resolve now
/// (blocking; before the reactor starts) and kept as a name.
pub fn resolve_target(s: &str, flag: &str) -> Result<Target, String> {
    let target = Target::parse(s).map_err(|e| format!("{flag} `{s}`: {e}"))?;
    match target {
        Target::Tcp(_) => {}
        Target::Host(..) => {
            resolve(s, flag)?;
        }
        Target::Unix(_) => return Err(format!("{flag} `{s}` is not HOST:PORT")),
    }
    Ok(target)
}

/// Resolves HOST:PORT once (blocking; before the reactor starts).
pub fn resolve(s: &str, flag: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{flag}: cannot resolve host `{host}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{flag}: host `{host}` has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn run(line: &str) -> RunArgs {
        match parse(&args(line)) {
            Ok(Command::Run(run)) => run,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse(&args(line)) {
            Err(e) => e,
            other => panic!("{line} should fail: {other:?}"),
        }
    }

    #[test]
    fn shadowing_flags_parse_and_imply_http() {
        let r = run("-l 1 -r a:1 -d b:1 --compare --compare-log /tmp/c.log \
             --compare-ignore-header X-Trace --compare-ignore-json $.meta.id \
             --shadow-sample 0.25 --shadow-methods get,head --shadow-host staging.test \
             --shadow-header X-Shadow:1 --reference c:1");
        assert_eq!(r.shadow_sample, 0.25);
        let http = r.http.expect("--compare implies --http");
        assert_eq!(
            http.methods.as_deref(),
            Some(&["GET".to_owned(), "HEAD".to_owned()][..])
        );
        assert_eq!(http.host.as_deref(), Some("staging.test"));
        assert_eq!(http.headers, [("X-Shadow".to_owned(), "1".to_owned())]);
        let compare = r.compare.unwrap();
        assert_eq!(compare.ignore_headers, ["X-Trace"]);
        assert_eq!(compare.ignore_json, ["$.meta.id"]);
        assert_eq!(compare.reference.as_deref(), Some("c:1"));
        assert_eq!(compare.max_body, DEFAULT_COMPARE_MAX_BODY);
        let tcp = run("-l 1 -r a:1 -d b:1 --compare-tcp");
        assert!(tcp.http.is_none() && tcp.compare.is_some());
        let plain = run("-l 1 -r a:1 -d b:1");
        assert!(plain.http.is_none() && plain.compare.is_none());
        assert_eq!(plain.shadow_sample, 1.0);
    }

    #[test]
    fn shadowing_mistakes_are_named() {
        for (line, want) in [
            ("-l 1 -r a:1 --http", "need shadows: -d"),
            ("-l 1 -r a:1 -d b:1 --shadow-sample 0", "not a fraction"),
            ("-l 1 -r a:1 -d b:1 --shadow-sample 1.5", "not a fraction"),
            (
                "-l 1 -r a:1 -d b:1 --shadow-host x",
                "--shadow-host needs --http",
            ),
            ("-l 1 -r a:1 -d b:1 --compare-log x", "needs --compare"),
            (
                "-l 1 -r a:1 -d b:1 --compare --compare-tcp",
                "cannot be used with --http",
            ),
            (
                "-l 1 -r a:1 -d b:1 --http --shadow-header nocolon",
                "not 'NAME: VALUE'",
            ),
            (
                "-l 1 -r a:1 -d b:1 --http --shadow-methods GET,,HEAD",
                "not METHOD",
            ),
            (
                "-l 1 -r a:1 -d b:1 --compare --compare-ignore-json a.b",
                "not a JSON path",
            ),
            ("-l 1 -r a:1 -d b:1 --reference nope", "--reference"),
            (
                "-l 1 -r a:1 -d b:1 --http --sni-route x=c:1",
                "cannot be used with --http",
            ),
        ] {
            let e = error(line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn em_proxy_command_lines_parse() {
        let r = run("-l 8080 -r localhost:8081 -d localhost:8082,localhost:8083 -v");
        assert_eq!(r.listen, "8080");
        assert!(matches!(r.upstream, Upstream::Relay(ref h) if h == "localhost:8081"));
        assert_eq!(r.duplex, ["localhost:8082", "localhost:8083"]);
        assert!(r.verbose);
        let r = run("--listen=127.0.0.1:0 --socket /tmp/x.sock -d a:1 -d b:2");
        assert!(matches!(r.upstream, Upstream::Socket(_)));
        assert_eq!(r.duplex, ["a:1", "b:2"]);
        let r = run("-l8080 -b a:1,b:2 --strategy least-conn --grace 0.5 --shadow-buffer 64K");
        assert!(
            matches!(r.upstream, Upstream::Balance(ref l, Strategy::LeastConn) if l.len() == 2)
        );
        assert_eq!(r.grace, Duration::from_millis(500));
        assert_eq!(r.shadow_buffer, 64 * 1024);
        let r = run("-l 1 -b a:1,[::1]:2 --strategy p2c");
        assert!(matches!(r.upstream, Upstream::Balance(ref l, Strategy::P2c)
            if l[1] == Member { target: "[::1]:2".into(), weight: 1, max_conn: None }));
    }

    fn balance(value: &str) -> Result<Vec<Member>, String> {
        let line = ["-l", "1", "-b", value, "--strategy", "source"].map(str::to_owned);
        match parse(&line)? {
            Command::Run(RunArgs {
                upstream: Upstream::Balance(members, Strategy::Source),
                ..
            }) => Ok(members),
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn balance_entries_may_carry_a_weight() {
        let member = |target: &str, weight| Member {
            target: target.into(),
            weight,
            max_conn: None,
        };
        assert_eq!(
            balance("10.0.0.1:80 weight=3,10.0.0.2:80").unwrap(),
            [member("10.0.0.1:80", 3), member("10.0.0.2:80", 1)]
        );
        assert_eq!(
            balance("10.0.0.1:80 maxconn=100 weight=3,10.0.0.2:80 maxconn=7").unwrap(),
            [
                Member {
                    max_conn: Some(100),
                    ..member("10.0.0.1:80", 3)
                },
                Member {
                    max_conn: Some(7),
                    ..member("10.0.0.2:80", 1)
                }
            ]
        );
        assert_eq!(
            balance(" [::1]:80  weight=2 , app.internal:8080 weight=1000").unwrap(),
            [member("[::1]:80", 2), member("app.internal:8080", 1000)]
        );
        let line = ["-l", "1", "--balance=a:1 weight=7"].map(str::to_owned);
        assert!(matches!(parse(&line), Ok(Command::Run(RunArgs {
            upstream: Upstream::Balance(ref l, Strategy::RoundRobin), ..
        })) if l[0].weight == 7));
        for (value, why) in [
            ("a:1 weight=0", "from 1 to 1000"),
            ("a:1 weight=1001", "from 1 to 1000"),
            ("a:1 weight=x", "from 1 to 1000"),
            ("a:1 weight=2 weight=3", "given twice"),
            (
                "a:1 maxconn=0",
                "maxconn `0` is not a whole number from 1 to 1000000",
            ),
            ("a:1 maxconn=5 maxconn=6", "maxconn given twice"),
            ("a:1 weight", "weight `` is not a whole number"),
            ("a:1 max=5", "unknown option `max=5`"),
            ("a:1 3", "unknown option `3`"),
            ("a:1, ,b:2", "empty entry"),
            ("weight=3 a:1", "not HOST:PORT"),
            ("a:1=3", "not a port number"),
        ] {
            let e = balance(value).unwrap_err();
            assert!(e.contains(why), "{value}: {e}");
        }
    }

    #[test]
    fn failing_backend_flags_parse_with_production_defaults() {
        let r = run("-l 1 -b a:1,b:2");
        assert_eq!(r.retries, 3);
        assert_eq!(r.connect_timeout, Duration::from_secs(5));
        assert_eq!(r.client_timeout, Some(Duration::from_secs(60)));
        assert!(r.check.is_none());
        let r = run(
            "-l 1 -b a:1,b:2 --retries 0 --client-timeout 0 --check-http /health --check-interval 0.5 --rise 1 --fall 4",
        );
        assert_eq!(r.retries, 0);
        assert_eq!(r.client_timeout, None, "0 means never");
        let check = r.check.expect("--check-http implies --check");
        assert_eq!(check.http_path.as_deref(), Some("/health"));
        assert_eq!(check.interval, Duration::from_millis(500));
        assert_eq!((check.rise, check.fall), (1, 4));
        assert!(
            run("-l 1 -r a:1 --check")
                .check
                .is_some_and(|c| c.http_path.is_none())
        );
        assert!(error("-l 1 -r a:1 --rise 2").contains("needs --check"));
        assert!(error("-l 1 -r a:1 --check --fall 0").contains("from 1 to 100"));
        assert!(error("-l 1 -r a:1 --check-http health").contains("not a path"));
        assert!(error("-l 1 -r a:1 --retries many").contains("--retries"));
        assert!(error("-l 1 -r a:1 --connect-timeout 0").contains("more than 0"));
        assert!(error("-l 1 -r a:1 --check=yes").contains("takes no value"));
    }

    #[test]
    fn backend_names_stay_names_once_they_resolve() {
        assert_eq!(
            resolve_target("localhost:8081", "--relay"),
            Ok(Target::Host("localhost".into(), 8081))
        );
        assert_eq!(
            resolve_target("127.0.0.1:8081", "--relay"),
            Ok(Target::Tcp("127.0.0.1:8081".parse().unwrap()))
        );
        assert!(
            resolve_target("no-such-host.invalid:1", "--relay")
                .unwrap_err()
                .contains("cannot resolve")
        );
        assert_eq!(
            run("-l 1 -r a:1 --resolve-interval 0").resolve_interval,
            Duration::ZERO
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(error("-l 8080 -r h:1 --bogus").contains("unknown flag `--bogus`"));
        assert!(error("-l abc -r h:1").contains("not a port number"));
        assert!(error("-l 70000 -r h:1").contains("out of range"));
        assert!(error("-l 8080 -r").contains("-r needs a value"));
        assert!(error("-l -r h:1").contains("-l needs a value"));
        assert!(error("-r h:1").contains("missing -l"));
        assert!(error("-l 1").contains("missing a relay"));
        assert!(error("-l 1 -r h:1 -s /x").contains("choose one"));
        assert!(error("-l 1 -r nohostport").contains("not HOST:PORT"));
        assert!(error("-l 1 -r h:1 -d a:1,,b:2").contains("empty entry"));
        assert!(error("-l 1 -r h:1 --strategy random").contains("only applies"));
        assert!(error("-l 1 -b a:1 --strategy fastest").contains("unknown strategy"));
        assert!(error("-l 1 -l 2 -r h:1").contains("given twice"));
        assert!(error("-l 1 -r h:1 extra").contains("unexpected argument"));
        assert!(error("-l 1 -r h:1 --shadow-buffer 4X").contains("not a size"));
        assert!(error("demo -l 1").contains("does not apply"));
        assert!(error("demo -n 0").contains("--requests"));
        assert!(error("-l 1 -b a:1 --strategy fastest").contains("p2c or source"));
        assert!(matches!(parse(&[]), Ok(Command::Usage)));
        assert!(matches!(parse(&args("-l 1 -h")), Ok(Command::Help)));
    }

    #[test]
    fn the_usage_names_every_flag_and_where_a_bare_port_listens() {
        let usage = USAGE.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            usage.contains("a bare PORT listens on all interfaces (0.0.0.0)"),
            "{USAGE}"
        );
        for (short, long) in VALUE_FLAGS.iter().chain(SWITCHES) {
            let named = if short.is_empty() {
                long.to_string()
            } else {
                format!("{short}, {long}")
            };
            assert!(usage.contains(&named), "the usage lacks {named}");
        }
    }

    #[test]
    fn workers_are_one_unless_asked_and_at_least_one() {
        assert_eq!(run("-l 1 -r a:1").workers, 1);
        assert_eq!(run("-l 1 -r a:1 --workers 4").workers, 4);
        assert_eq!(run("-l 1 -r a:1 --workers=2").workers, 2);
        for n in ["0", "-1", "two", "257"] {
            assert_eq!(
                error(&format!("-l 1 -r a:1 --workers {n}")),
                format!("--workers `{n}` is not a number from 1 to 256")
            );
        }
        assert_eq!(
            error("demo --workers 2"),
            "--workers does not apply to `ember-proxy demo`"
        );
    }

    #[test]
    fn version_flags_ask_for_the_version_wherever_they_stand() {
        for line in ["-V", "--version", "-l 1 -r a:1 --version", "-vV", "demo -V"] {
            assert!(matches!(parse(&args(line)), Ok(Command::Version)), "{line}");
        }
        assert!(error("--version=2").contains("--version takes no value"));
    }

    #[test]
    fn short_flags_combine_as_in_getopt() {
        for line in [
            "-vl 8080 -r a:1",
            "-vl8080 -r a:1",
            "-vvl8080 -ra:1",
            "-r a:1 -vl 8080",
        ] {
            let r = run(line);
            assert!(r.verbose, "{line}");
            assert_eq!(r.listen, "8080", "{line}");
            assert!(
                matches!(r.upstream, Upstream::Relay(ref h) if h == "a:1"),
                "{line}"
            );
        }
        // The value flag takes the rest of the cluster, letters and all.
        assert_eq!(run("-l1 -vd a:1,b:2 -r c:3").duplex, ["a:1", "b:2"]);
        assert!(matches!(parse(&args("-vh")), Ok(Command::Help)));
        assert!(matches!(
            parse(&args("demo -vn 5")),
            Ok(Command::Demo(DemoArgs {
                requests: 5,
                verbose: true
            }))
        ));
        assert_eq!(error("-vx -l 1 -r a:1"), "unknown flag `-x` in `-vx`");
        assert_eq!(error("-xv -l 1 -r a:1"), "unknown flag `-x` in `-xv`");
        assert_eq!(error("-vé"), "unknown flag `-é` in `-vé`");
        assert_eq!(error("-é"), "unknown flag `-é`");
        assert!(error("-r a:1 -vl").contains("-l needs a value"));
        assert!(error("-r a:1 -vl -d b:1").contains("-l needs a value"));
        // Only the last letter may take a value: `-lv` is `-l v`.
        assert!(error("-lv -r a:1").contains("`v` is not a port number"));
    }

    #[test]
    fn sizes_durations_and_counts_say_what_they_accept() {
        let size_hint = "give bytes with an optional K, M or G suffix, at least 1";
        let seconds_hint = "is not a number of seconds, like 5 or 0.2";
        for (flags, want) in [
            (
                "--shadow-buffer 0",
                format!("--shadow-buffer `0` is not a size: {size_hint}"),
            ),
            (
                "--shadow-buffer -1",
                format!("--shadow-buffer `-1` is not a size: {size_hint}"),
            ),
            (
                "--shadow-buffer 4X",
                format!("--shadow-buffer `4X` is not a size: {size_hint}"),
            ),
            (
                "--shadow-buffer M",
                format!("--shadow-buffer `M` is not a size: {size_hint}"),
            ),
            (
                "--shadow-max-memory 0K",
                format!("--shadow-max-memory `0K` is not a size: {size_hint}"),
            ),
            (
                "--shadow-buffer 99999999999999999G",
                "--shadow-buffer `99999999999999999G` is more bytes than this machine can address"
                    .into(),
            ),
            ("--grace -1", format!("--grace `-1` {seconds_hint}")),
            ("--grace soon", format!("--grace `soon` {seconds_hint}")),
            ("--grace inf", format!("--grace `inf` {seconds_hint}")),
            (
                "--grace 90000",
                "--grace `90000` is more than a day (86400 seconds)".into(),
            ),
            (
                "--connect-timeout -2",
                format!("--connect-timeout `-2` {seconds_hint}"),
            ),
            (
                "--connect-timeout 0",
                "--connect-timeout must be more than 0 seconds".into(),
            ),
            (
                "--queue-timeout -1",
                format!("--queue-timeout `-1` {seconds_hint}"),
            ),
            (
                "--resolve-interval -1",
                format!("--resolve-interval `-1` {seconds_hint}"),
            ),
            (
                "--client-timeout -1",
                format!("--client-timeout `-1` {seconds_hint}; 0 means never"),
            ),
            (
                "--server-timeout x",
                format!("--server-timeout `x` {seconds_hint}; 0 means never"),
            ),
            (
                "--fin-timeout -0.5",
                format!("--fin-timeout `-0.5` {seconds_hint}; 0 means never"),
            ),
            (
                "--check --check-interval -1",
                format!("--check-interval `-1` {seconds_hint}"),
            ),
            (
                "--check --check-interval 0",
                "--check-interval must be more than 0 seconds".into(),
            ),
            (
                "--retries -1",
                "--retries `-1` is not a number from 0 to 100".into(),
            ),
            (
                "--max-conn 0",
                "--max-conn `0` is not a number of clients, at least 1".into(),
            ),
            (
                "--max-conn -5",
                "--max-conn `-5` is not a number of clients, at least 1".into(),
            ),
            (
                "--shadow-max-conns -1",
                "--shadow-max-conns `-1` is not a number of connections, 0 or more".into(),
            ),
            (
                "--check --rise -1",
                "--rise `-1` is not a number from 1 to 100".into(),
            ),
            (
                "--check --fall 0",
                "--fall `0` is not a number from 1 to 100".into(),
            ),
        ] {
            assert_eq!(error(&format!("-l 1 -r a:1 {flags}")), want, "{flags}");
        }
        assert_eq!(
            error("demo -n -1"),
            "--requests `-1` is not a number from 1 to 1000000"
        );
        // A flag after a value flag is still a missing value, and `-` is still a value.
        assert!(error("-l 1 -r a:1 --grace --check").contains("--grace needs a value (SECONDS)"));
        assert!(error("-l 1 -r a:1 --grace -x").contains("--grace needs a value"));
        assert!(matches!(
            run("-l 1 -r a:1 --access-log -").access_log,
            AccessLog::Stderr
        ));
        assert_eq!(run("-l 1 -r a:1 --shadow-buffer 1").shadow_buffer, 1);
        assert_eq!(
            run("-l 1 -r a:1 --grace 0.2").grace,
            Duration::from_millis(200)
        );
    }
}
