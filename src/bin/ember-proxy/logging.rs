//! Where the binary's lines go. Diagnostics (the `log` facade: the library's lines and
//! the binary's own) go to stderr, one line each with an RFC 3339 UTC timestamp and a
//! level; access-log lines (one per client session) go to stderr, a file, or nowhere.
//!
//! The reactor never writes itself: it hands each line to one writer thread through a
//! bounded channel and moves on. A full channel (a disk or a pipe that stopped taking
//! bytes) drops the line and counts it; the count is written once the writer catches up.
//! The writer flushes at most 50 ms after a line was written, so a quiet proxy's log is
//! on disk at once and a busy one's is written in large chunks (one write per batch, not
//! one per line). SIGUSR1 asks it to reopen the
//! access-log file (what logrotate sends after it renamed the old one). At exit the
//! writer gets [`FINISH_WAIT`] to write what is queued: a log nobody reads (stderr a
//! full pipe) blocks it for good, and must not keep the process from exiting.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use log::{LevelFilter, Log, Metadata, Record};

/// Lines waiting for the writer at most; beyond, lines are dropped (and counted).
const QUEUE_LINES: usize = 16 * 1024;

/// How long a written line may wait in the writer's buffer before it is flushed.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// How long [`LogWriter::finish`] waits for the writer to write what is queued before it
/// gives the rest up and lets the process exit.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The buffer of each log file: a batch of 50 ms of compare-log lines at 15,000 requests
/// a second is about 250 KB, which BufWriter's default 8 KiB wrote in some 30 writes.
const FILE_BUFFER: usize = 256 * 1024;

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Stderr,
    File(PathBuf),
    Off,
}

#[derive(Debug)]
enum Message {
    Diagnostic(String),
    Access(String),
    Compare(String),
    Reopen,
    Stop,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct LogHandle {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    access: bool,
}

impl LogHandle {
    /// A diagnostic line (already formatted, without its newline).
    pub fn diagnostic(&self, line: String) {
        self.send(Message::Diagnostic(line));
    }

    /// An access-log line, unless the access log is off.
    pub fn access(&self, line: String) {
        if self.access {
            self.send(Message::Access(line));
        }
    }

    /// Whether access-log lines are wanted at all (skip formatting them if not).
    pub fn wants_access(&self) -> bool {
        self.access
    }

    /// A `--compare-log` line (dropped if there is no compare log).
    pub fn compare(&self, line: String) {
        self.send(Message::Compare(line));
    }

    /// Reopen the access-log file (SIGUSR1).
    pub fn reopen(&self) {
        self.send(Message::Reopen);
    }

    fn send(&self, message: Message) {
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The writer thread; [`finish`](Self::finish) writes what is queued and stops it.
pub struct LogWriter {
    handle: LogHandle,
    thread: Option<JoinHandle<()>>,
    /// Set by `finish`: the writer stops at the first empty queue it finds (the stop
    /// message cannot always be queued: the queue may be full).
    stopping: Arc<AtomicBool>,
    /// Disconnected once the writer thread has ended (its sender goes with it).
    ended: Receiver<()>,
}

impl LogWriter {
    /// Starts the writer. Opening the access-log file (and the compare log, if any) is
    /// checked here, so a path that can't be written is an error at start, not a silent
    /// loss.
    pub fn start(access: &AccessLog, compare: Option<&Path>) -> io::Result<LogWriter> {
        let file = match access {
            AccessLog::File(path) => Some(
                open_append(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log {e}")))?,
            ),
            _ => None,
        };
        let compare = match compare {
            Some(path) => {
                let file = open_append(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("compare log {e}")))?;
                Some((
                    path.to_path_buf(),
                    BufWriter::with_capacity(FILE_BUFFER, file),
                ))
            }
            None => None,
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (thread_alive, ended) = mpsc::channel::<()>();
        let writer = Writer {
            stderr: BufWriter::new(io::stderr()),
            access: match (access, file) {
                (AccessLog::File(path), Some(file)) => {
                    Some((path.clone(), BufWriter::with_capacity(FILE_BUFFER, file)))
                }
                _ => None,
            },
            compare,
            dropped: Arc::clone(&dropped),
            stopping: Arc::clone(&stopping),
        };
        let thread = thread::Builder::new()
            .name("ember-proxy log".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends: `finish` sees it go.
                let _thread_alive = thread_alive;
                writer.run(rx);
            })?;
        Ok(LogWriter {
            handle: LogHandle {
                tx,
                dropped,
                access: *access != AccessLog::Off,
            },
            thread: Some(thread),
            stopping,
            ended,
        })
    }

    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    /// Writes everything queued, then stops the thread; waits at most [`FINISH_WAIT`]
    /// for that. A writer still blocked then (a log nobody reads: a full pipe) is left
    /// behind with the lines it had not written, and the process exits around it.
    pub fn finish(mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes a writer waiting for lines. A full queue refuses it, but then the writer
        // is busy, and stops at the first empty queue it finds.
        let _ = self.handle.tx.try_send(Message::Stop);
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.ended.recv_timeout(FINISH_WAIT) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                let _ = thread.join();
            }
            Err(RecvTimeoutError::Timeout) => {} // stuck: not joined, never waited for
        }
    }
}

struct Writer {
    stderr: BufWriter<io::Stderr>,
    /// The access-log file and its path (`None`: access lines go to stderr).
    access: Option<(PathBuf, BufWriter<File>)>,
    /// The `--compare-log` file and its path.
    compare: Option<(PathBuf, BufWriter<File>)>,
    dropped: Arc<AtomicU64>,
    /// `LogWriter::finish` was called: stop once the queue is empty.
    stopping: Arc<AtomicBool>,
}

impl Writer {
    /// Writes lines as they come, in batches: an idle writer blocks until a line
    /// arrives; then it lets the burst gather for [`FLUSH_AFTER`], takes everything
    /// queued, writes it with one flush, and goes on so until a pause finds nothing new.
    /// A busy proxy thus wakes this thread once per batch, not once per line (the
    /// reactor's `try_send` wakes only a receiver that is blocked waiting), and a quiet
    /// one's lines are on disk within 50 ms.
    fn run(mut self, rx: Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            if !self.handle(first) {
                break;
            }
            let mut stopped = false;
            while !stopped {
                thread::sleep(FLUSH_AFTER);
                let mut took = false;
                loop {
                    match rx.try_recv() {
                        Ok(message) => {
                            took = true;
                            if !self.handle(message) {
                                stopped = true;
                                break;
                            }
                        }
                        Err(TryRecvError::Empty) => {
                            stopped = self.stopping.load(Ordering::Acquire);
                            break;
                        }
                        Err(TryRecvError::Disconnected) => {
                            stopped = true;
                            break;
                        }
                    }
                }
                self.flush();
                if !took {
                    break;
                }
            }
            if stopped {
                break;
            }
        }
        self.flush();
    }

    /// Writes one message; `false` for [`Message::Stop`].
    fn handle(&mut self, message: Message) -> bool {
        match message {
            Message::Diagnostic(line) => {
                let _ = writeln!(self.stderr, "{line}");
            }
            Message::Access(line) => match &mut self.access {
                Some((_, file)) => {
                    let _ = writeln!(file, "{line}");
                }
                None => {
                    let _ = writeln!(self.stderr, "{line}");
                }
            },
            Message::Compare(line) => {
                if let Some((_, file)) = &mut self.compare {
                    let _ = writeln!(file, "{line}");
                }
            }
            Message::Reopen => self.reopen(),
            Message::Stop => return false,
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                self.stderr,
                "{} WARN  ember-proxy: {dropped} log lines dropped: the log could not keep up",
                rfc3339(SystemTime::now())
            );
        }
        true
    }

    fn flush(&mut self) {
        let _ = self.stderr.flush();
        for (_, file) in [&mut self.access, &mut self.compare].into_iter().flatten() {
            let _ = file.flush();
        }
    }

    /// Reopens the log files (logrotate renamed them).
    fn reopen(&mut self) {
        for (path, file) in [&mut self.access, &mut self.compare].into_iter().flatten() {
            let _ = file.flush();
            match open_append(path) {
                Ok(new) => *file = BufWriter::with_capacity(FILE_BUFFER, new),
                Err(e) => {
                    let _ = writeln!(
                        self.stderr,
                        "{} ERROR ember-proxy: cannot reopen {}: {e}; still writing to the old file",
                        rfc3339(SystemTime::now()),
                        path.display()
                    );
                }
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The `log` facade's backend: every line through the writer thread.
struct Logger {
    handle: LogHandle,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Below info, only ember's own lines: rustls's debug output is not for operators.
        metadata.level() <= self.level
            && (metadata.level() <= log::Level::Info || metadata.target().starts_with("ember"))
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.handle.diagnostic(format!(
                "{} {:<5} {}",
                rfc3339(SystemTime::now()),
                record.level(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// Routes the `log` facade to `handle` for lines at `level` and above.
pub fn install(handle: LogHandle, level: LevelFilter) {
    // Once per process: the logger lives as long as the process does.
    let logger: &'static Logger = Box::leak(Box::new(Logger { handle, level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// `2026-11-30T12:00:00.123Z`: RFC 3339, UTC, milliseconds.
pub use ember::timestamp::rfc3339;
