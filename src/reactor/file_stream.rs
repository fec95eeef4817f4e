//! Streaming a file to a connection (EventMachine's `stream_file_data` and
//! `send_file_data`). This module owns the files being sent, how far each has got, and
//! the bytes the handler queued behind each.
//!
//! On Linux a connection without TLS gets the file with `sendfile(2)`: page-cache pages
//! go to the socket without entering the process, as much per call as the socket takes,
//! so a slow reader costs no memory at all. Over TLS (the bytes must be encrypted here),
//! or where the kernel refuses the pair, the file is read a chunk at a time and the next
//! chunk is read only once the last has left the queue: one chunk in memory at most.
//!
//! A file keeps its place in the connection's byte order: what was queued before it
//! goes first; what the handler sends while it streams waits behind it (and counts in
//! [`Reactor::outbound_size`]); `close_write` and `close_after_writing` take effect once
//! it has gone. The file is read on the reactor thread, like every other descriptor: a
//! file in the page cache costs nothing to wait for, one on a slow disk stalls the loop
//! while it is read.

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io::{self, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Reactor;
use crate::buffer::OutBuffer;
use crate::handler::UnbindReason;
use crate::id::ConnId;
use crate::sys::sendfile::{self, SENDFILE_SUPPORTED};
use crate::sys::socket::Stream;

/// Bytes read per step when the file is copied rather than sent by the kernel.
const COPY_CHUNK: usize = 64 * 1024;
/// The most one `sendfile` call is asked for (it moves what the socket has room for).
const SENDFILE_CHUNK: usize = 16 * 1024 * 1024;
/// Bytes sent to one connection before other connections get their turn; the rest
/// follows next tick.
const BYTES_PER_TURN: u64 = 8 * 1024 * 1024;

/// How a file streamed with [`Reactor::stream_file`] did not reach the connection whole.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileStreamFailed {
    /// The file could not be read to its end: an I/O error, or it shrank while it was
    /// sent (`UnexpectedEof`). The connection was closed, since the peer was promised
    /// bytes that will not come and would take what was queued behind them for the rest.
    Read(io::Error),
    /// The connection ended first, after `sent` bytes of the file went to its socket.
    ConnectionClosed {
        /// Bytes of the file handed to the socket.
        sent: u64,
        /// Why the connection ended (its `unbind` reason).
        reason: UnbindReason,
    },
}

impl fmt::Display for FileStreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileStreamFailed::Read(e) => write!(f, "reading the file failed: {e}"),
            FileStreamFailed::ConnectionClosed { sent, reason } => {
                write!(
                    f,
                    "the connection ended ({reason}) after {sent} bytes of the file"
                )
            }
        }
    }
}

impl Error for FileStreamFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            FileStreamFailed::Read(e) => Some(e),
            FileStreamFailed::ConnectionClosed { .. } => None,
        }
    }
}

/// What [`Reactor::stream_file`]'s callback gets: the bytes sent, or why not all were.
pub type FileStreamResult = Result<u64, FileStreamFailed>;

type Done = Box<dyn FnOnce(&mut Reactor, FileStreamResult)>;

/// A file on its way to one connection (`Connection::file_streams`).
pub(crate) struct FileStream {
    file: File,
    /// Where the stream started (the file's position when it was handed over).
    start: u64,
    /// The next byte to send.
    offset: u64,
    /// Where it ends: the file's length when it was handed over.
    end: u64,
    /// Sent by the kernel (`sendfile`); off over TLS and once the kernel refused.
    zero_copy: bool,
    /// The copying path's buffer (empty until it is needed).
    chunk: Vec<u8>,
    /// A continuation is scheduled for next tick (this turn's bytes were spent).
    continues: bool,
    /// Bytes the handler sent while the file streams: they go out after it.
    pub(crate) after: OutBuffer,
    /// Told how it went; `None` for `send_file_data`.
    done: Option<Done>,
}

impl FileStream {
    fn sent(&self) -> u64 {
        self.offset - self.start
    }
}

/// Why one pumping step stopped.
enum Step {
    /// The socket is full (or the queue not empty): wait for the next writable edge.
    Wait,
    /// The file failed; the connection must close.
    FileFailed(io::Error),
    /// The socket failed (handled already, by `io_failed`).
    SocketFailed,
    /// This turn's bytes are spent: continue next tick.
    Yield,
}

impl Reactor {
    /// Streams `file`, from its current position to its end, to connection `id`, then
    /// calls `done` (on a later tick, never from inside this call) with the bytes sent
    /// or why they were not all sent. Returns how many bytes it will send.
    ///
    /// Without TLS on Linux the kernel sends it (`sendfile(2)`); otherwise it is copied a
    /// chunk at a time as the connection drains. Either way memory stays flat whatever the
    /// peer's speed, bytes queued before it go first and bytes sent while it streams wait
    /// behind it (see the module docs of `file_stream.rs`). Files streamed one after
    /// another queue in order, like `send_data`'s bytes (a keep-alive server may answer
    /// pipelined requests with a file each).
    pub fn stream_file(
        &mut self,
        id: ConnId,
        file: File,
        done: impl FnOnce(&mut Reactor, FileStreamResult) + 'static,
    ) -> io::Result<u64> {
        self.start_file_stream(id, file, Some(Box::new(done)))
    }

    /// Opens the file at `path` and [streams](Self::stream_file) all of it to `id`
    /// (EventMachine's `stream_file_data`).
    pub fn stream_file_data(
        &mut self,
        id: ConnId,
        path: impl AsRef<Path>,
        done: impl FnOnce(&mut Reactor, FileStreamResult) + 'static,
    ) -> io::Result<u64> {
        let file = File::open(path)?;
        self.stream_file(id, file, done)
    }

    /// Queues the whole file at `path` for `id`, as `send_data` would queue its bytes but
    /// without reading it into memory (EventMachine's `send_file_data`, without its
    /// 32 KiB limit). Returns its length. Nothing reports completion: a file that fails to
    /// read closes the connection; use [`stream_file_data`](Self::stream_file_data) to
    /// be told.
    pub fn send_file_data(&mut self, id: ConnId, path: impl AsRef<Path>) -> io::Result<u64> {
        let file = File::open(path)?;
        self.start_file_stream(id, file, None)
    }

    fn start_file_stream(
        &mut self,
        id: ConnId,
        mut file: File,
        done: Option<Done>,
    ) -> io::Result<u64> {
        let start = file.stream_position()?;
        let end = file.metadata()?.len().max(start);
        let Some(conn) = self.conn_mut(id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no stream connection with this id",
            ));
        };
        if !conn.life.accepts_output() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection no longer accepts output",
            ));
        }
        conn.file_streams.push_back(FileStream {
            file,
            start,
            offset: start,
            end,
            zero_copy: SENDFILE_SUPPORTED && conn.tls.is_none(),
            chunk: Vec::new(),
            continues: false,
            after: OutBuffer::default(),
            done,
        });
        self.flush(id);
        Ok(end - start)
    }

    /// Sends what the socket takes of `id`'s first file, and of those after it; called by
    /// `flush` once nothing else is queued ahead.
    pub(crate) fn pump_file(&mut self, id: ConnId) {
        let mut budget = BYTES_PER_TURN;
        let step = loop {
            let now = self.now;
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            let ahead = conn.pending_out_ahead_of_file();
            let tls = conn.tls.is_some();
            let Some(out) = conn.stream.as_ref().map(Stream::write_fd) else {
                return;
            };
            let Some(fs) = conn.file_streams.front_mut() else {
                return;
            };
            // TLS started after the file was handed over: its bytes must be encrypted.
            fs.zero_copy &= !tls;
            if ahead > 0 {
                break Step::Wait; // what is queued goes first; flush calls again
            }
            if fs.continues {
                break Step::Wait; // the scheduled continuation sends the rest
            }
            if fs.offset >= fs.end {
                // Its `after` bytes now go ahead of the next file, if there is one.
                self.finish_file_stream(id);
                continue;
            }
            if budget == 0 {
                break Step::Yield;
            }
            let left = fs.end - fs.offset;
            if fs.zero_copy {
                let want = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(SENDFILE_CHUNK);
                match sendfile::send_file(out, fs.file.as_raw_fd(), &mut fs.offset, want) {
                    Ok(0) => break Step::FileFailed(shrank()),
                    Ok(n) => {
                        conn.last_activity = now;
                        budget = budget.saturating_sub(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Step::Wait,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if sendfile::refused(&e) => fs.zero_copy = false,
                    Err(e) if is_socket_error(&e) => {
                        self.io_failed(id, &e);
                        break Step::SocketFailed;
                    }
                    Err(e) => break Step::FileFailed(e),
                }
            } else {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(COPY_CHUNK);
                let mut chunk = std::mem::take(&mut fs.chunk);
                chunk.resize(COPY_CHUNK, 0);
                match fs.file.read_at(&mut chunk[..want], fs.offset) {
                    Ok(0) => break Step::FileFailed(shrank()),
                    Ok(n) => {
                        fs.offset += n as u64;
                        budget = budget.saturating_sub(n as u64);
                        // Through TLS if the connection speaks it; what the socket does
                        // not take now is queued, and the next chunk waits for it.
                        let queued = self.enqueue_accepted(id, &chunk[..n]);
                        if let Some(fs) = self.conn_mut(id).and_then(|c| c.file_streams.front_mut())
                        {
                            fs.chunk = chunk;
                        }
                        if !queued {
                            break Step::SocketFailed;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => fs.chunk = chunk,
                    Err(e) => break Step::FileFailed(e),
                }
            }
        };
        match step {
            Step::Wait | Step::SocketFailed => {}
            Step::FileFailed(e) => self.fail_file_stream(id, e),
            Step::Yield => {
                if let Some(fs) = self.conn_mut(id).and_then(|c| c.file_streams.front_mut()) {
                    fs.continues = true;
                }
                self.next_tick(move |r| {
                    if let Some(fs) = r.conn_mut(id).and_then(|c| c.file_streams.front_mut()) {
                        fs.continues = false;
                        r.flush(id);
                    }
                });
            }
        }
    }

    /// The whole file went: what the handler sent behind it follows (before any next
    /// file), and `done` hears.
    fn finish_file_stream(&mut self, id: ConnId) {
        let Some(fs) = self.conn_mut(id).and_then(|c| c.file_streams.pop_front()) else {
            return;
        };
        if !fs.after.is_empty() {
            self.enqueue_accepted(id, fs.after.as_slice());
        }
        let sent = fs.sent();
        if let Some(done) = fs.done {
            self.next_tick(move |r| done(r, Ok(sent)));
        }
    }

    /// The file could not be read: the connection closes (see [`FileStreamFailed::Read`];
    /// files queued behind it hear that the connection closed).
    fn fail_file_stream(&mut self, id: ConnId, e: io::Error) {
        let Some(fs) = self.conn_mut(id).and_then(|c| c.file_streams.pop_front()) else {
            return;
        };
        self.close_now(id, UnbindReason::Error(e.kind()));
        if let Some(done) = fs.done {
            self.next_tick(move |r| done(r, Err(FileStreamFailed::Read(e))));
        }
    }

    /// `id` ended with a file still streaming: its `done` hears why.
    pub(crate) fn abandon_file_stream(&mut self, fs: FileStream, reason: UnbindReason) {
        let sent = fs.sent();
        if let Some(done) = fs.done {
            self.next_tick(move |r| {
                done(r, Err(FileStreamFailed::ConnectionClosed { sent, reason }))
            });
        }
    }
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file ended before its length when it was handed over",
    )
}

/// Whether a `sendfile` error is the connection's (the file is fine).
fn is_socket_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}
