//! The framers of `ember::protocols` in real handlers, over loopback sockets, on a real
//! reactor: lines fed a byte at a time, a 1 MiB line against a 64 KiB limit, a switch to
//! binary mode in the middle of a read, length-prefixed frames split across reads.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ember::protocols::{Frame, LengthPrefixed, LineProtocol, Prefix, TooLong};
use ember::{Context, Handler, UnbindReason};

use support::IO_TIMEOUT;
use support::backends::serve;
use support::clients::{connect, read_all, wait_until};
use support::reactor_thread::ReactorThread;

/// The line limit of the line server.
const LIMIT: usize = 64 * 1024;

/// What a server's connection saw, for the test thread.
#[derive(Debug, Default)]
struct Report {
    /// `receive_data` calls.
    reads: usize,
    /// Bytes received.
    received: usize,
    /// The most bytes its framer ever held, sampled after every frame and every read.
    peak_buffered: usize,
    too_long: Option<TooLong>,
    unbind: Option<UnbindReason>,
}

type Shared = Arc<Mutex<Report>>;

/// A line server: answers `LINE <line>` to each line; `DATA n` announces n bytes of binary
/// data, answered `BINARY <hex>` once complete. A line over [`LIMIT`] closes the connection
/// with `ERROR <why>`.
struct LineServer {
    protocol: LineProtocol,
    block: Vec<u8>,
    report: Shared,
}

impl Handler for LineServer {
    fn receive_data(&mut self, cx: &mut Context<'_>, mut data: &[u8]) {
        let mut report = self.report.lock().unwrap();
        report.reads += 1;
        report.received += data.len();
        while let Some(frame) = self.protocol.next_frame(&mut data) {
            match frame {
                Ok(Frame::Line(line)) => {
                    let line = String::from_utf8_lossy(line).into_owned();
                    cx.send_data(format!("LINE {line}\n").as_bytes());
                    if let Some(n) = line.strip_prefix("DATA ") {
                        self.protocol.set_binary_mode(n.parse().unwrap());
                    }
                }
                Ok(Frame::Binary(bytes)) => self.block.extend_from_slice(bytes),
                Ok(Frame::BinaryEnd) => {
                    let hex: String = self.block.drain(..).map(|b| format!("{b:02x}")).collect();
                    cx.send_data(format!("BINARY {hex}\n").as_bytes());
                }
                Err(too_long) => {
                    report.too_long = Some(too_long);
                    cx.send_data(format!("ERROR {too_long}\n").as_bytes());
                    cx.close_after_writing_with(too_long.into());
                    return;
                }
            }
            report.peak_buffered = report.peak_buffered.max(self.protocol.buffered_len());
        }
        report.peak_buffered = report.peak_buffered.max(self.protocol.buffered_len());
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.report.lock().unwrap().unbind = Some(reason);
    }
}

/// Starts the line server; returns its address and the report of its (one) connection.
fn line_server() -> (ReactorThread<SocketAddr>, Shared) {
    let report = Shared::default();
    let shared = Arc::clone(&report);
    let running = ReactorThread::spawn(move |r| {
        serve(r, move || LineServer {
            protocol: LineProtocol::with_delimiter(b"\n", LIMIT),
            block: Vec::new(),
            report: Arc::clone(&shared),
        })
    });
    (running, report)
}

/// Writes `bytes` one at a time, each in its own segment (Nagle off, a pause between them,
/// so that the server reads them one by one).
fn write_bytewise(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_nodelay(true).unwrap();
    for byte in bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
}

/// Reads exactly `n` bytes.
fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    stream.read_exact(&mut out).expect("read the answer");
    out
}

#[test]
fn lines_fed_one_byte_at_a_time_are_read_whole() {
    let (running, report) = line_server();
    let mut client = connect(running.value);
    let input = b"one\r\ntwo\n\nthree, the longest of them\r\n";
    write_bytewise(&mut client, input);
    let want = "LINE one\nLINE two\nLINE \nLINE three, the longest of them\n";
    assert_eq!(
        String::from_utf8(read_n(&mut client, want.len())).unwrap(),
        want
    );
    let report = report.lock().unwrap();
    assert_eq!(report.received, input.len());
    assert!(
        report.reads > 1,
        "the bytes were not read separately: {report:?}"
    );
    assert!(report.peak_buffered <= "three, the longest of them\r".len());
}

/// A line announces 5 binary bytes, which hold newlines of their own; lines follow them.
const SWITCHING: &[u8] = b"HELLO\nDATA 5\n\n\0\r\nxQUIT\nDATA 0\nBYE\n";
const SWITCHED: &str =
    "LINE HELLO\nLINE DATA 5\nBINARY 0a000d0a78\nLINE QUIT\nLINE DATA 0\nBINARY \nLINE BYE\n";

#[test]
fn a_switch_to_binary_mode_mid_read_reads_the_rest_of_that_read_as_binary() {
    let (running, report) = line_server();
    let mut client = connect(running.value);
    client.write_all(SWITCHING).unwrap();
    let answer = read_n(&mut client, SWITCHED.len());
    assert_eq!(String::from_utf8(answer).unwrap(), SWITCHED);
    let report = report.lock().unwrap();
    assert_eq!(report.received, SWITCHING.len());
    assert_eq!(
        report.reads, 1,
        "the write was not read at once: {report:?}"
    );
}

#[test]
fn a_switch_to_binary_mode_reads_the_same_in_one_byte_writes() {
    let (running, report) = line_server();
    let mut client = connect(running.value);
    write_bytewise(&mut client, SWITCHING);
    let answer = read_n(&mut client, SWITCHED.len());
    assert_eq!(String::from_utf8(answer).unwrap(), SWITCHED);
    assert!(report.lock().unwrap().reads > 1);
}

#[test]
fn a_one_mib_line_closes_the_connection_with_the_reason_holding_no_more_than_the_limit() {
    let (running, report) = line_server();
    let mut client = connect(running.value);
    let mut writer = client.try_clone().unwrap();
    let sending = thread::spawn(move || {
        let mut input = b"ok\n".to_vec();
        input.resize(input.len() + (1 << 20), b'x');
        input.extend_from_slice(b"\nnever read\n");
        // The server stops reading halfway through and discards the rest while it
        // lingers: whether this write completes or fails does not matter.
        let _ = writer.write_all(&input);
    });
    // The server says why and closes (it lingers, discarding the rest of the line, so
    // the client reads a clean end rather than a reset).
    let answer = String::from_utf8(read_all(&mut client)).unwrap();
    assert_eq!(
        answer,
        format!("LINE ok\nERROR frame over the limit of {LIMIT} bytes\n")
    );
    sending.join().unwrap();
    drop(client); // the server's linger ends at our FIN
    wait_until("the server's unbind", IO_TIMEOUT, || {
        report.lock().unwrap().unbind.is_some()
    });
    let report = report.lock().unwrap();
    assert_eq!(
        report.too_long,
        Some(TooLong {
            limit: LIMIT,
            length: None
        })
    );
    assert_eq!(
        report.unbind,
        Some(UnbindReason::ProtocolError(
            format!("frame over the limit of {LIMIT} bytes").into()
        ))
    );
    assert!(report.received > LIMIT, "{report:?}");
    assert!(
        report.received < 1 << 20,
        "read on after the overflow: {report:?}"
    );
    assert!(
        report.peak_buffered <= LIMIT + 1,
        "held {} bytes against a limit of {LIMIT}",
        report.peak_buffered
    );
}

/// A length-prefixed server: answers each frame with a frame `<length>:<first byte>`; a
/// frame over 64 KiB closes the connection with a frame `ERROR <why>`.
struct FrameServer {
    framer: LengthPrefixed,
    report: Shared,
}

impl Handler for FrameServer {
    fn receive_data(&mut self, cx: &mut Context<'_>, mut data: &[u8]) {
        let mut report = self.report.lock().unwrap();
        report.reads += 1;
        report.received += data.len();
        let mut out = Vec::new();
        while let Some(frame) = self.framer.next_frame(&mut data) {
            match frame {
                Ok(frame) => {
                    let answer = format!("{}:{}", frame.len(), frame.first().unwrap_or(&0));
                    self.framer.encode(answer.as_bytes(), &mut out).unwrap();
                }
                Err(too_long) => {
                    report.too_long = Some(too_long);
                    let answer = format!("ERROR {too_long}");
                    self.framer.encode(answer.as_bytes(), &mut out).unwrap();
                    cx.send_data(&out);
                    cx.close_after_writing_with(too_long.into());
                    return;
                }
            }
            report.peak_buffered = report.peak_buffered.max(self.framer.buffered_len());
        }
        report.peak_buffered = report.peak_buffered.max(self.framer.buffered_len());
        cx.send_data(&out);
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.report.lock().unwrap().unbind = Some(reason);
    }
}

/// Reads frames from `stream` until the server closes.
fn read_frames(stream: &mut TcpStream) -> Vec<String> {
    let mut framer = LengthPrefixed::new(Prefix::U32, LIMIT);
    let mut frames = Vec::new();
    let bytes = read_all(stream);
    let mut input = &bytes[..];
    while let Some(frame) = framer.next_frame(&mut input) {
        frames.push(String::from_utf8(frame.unwrap().to_vec()).unwrap());
    }
    assert!(
        input.is_empty() && framer.buffered_len() == 0,
        "a frame cut short"
    );
    frames
}

#[test]
fn length_prefixed_frames_split_across_reads_and_an_oversized_one() {
    let report = Shared::default();
    let shared = Arc::clone(&report);
    let running = ReactorThread::spawn(move |r| {
        serve(r, move || FrameServer {
            framer: LengthPrefixed::new(Prefix::U32, LIMIT),
            report: Arc::clone(&shared),
        })
    });
    let framer = LengthPrefixed::new(Prefix::U32, usize::MAX);
    let mut client = connect(running.value);
    // A small frame a byte at a time (its prefix split too), an empty one, one at the
    // limit in uneven writes, then one over the limit and one the server never reads.
    let mut small = Vec::new();
    framer.encode(b"\x07abc", &mut small).unwrap();
    framer.encode(b"", &mut small).unwrap();
    write_bytewise(&mut client, &small);
    let mut at_limit = Vec::new();
    framer.encode(&vec![9; LIMIT], &mut at_limit).unwrap();
    for piece in at_limit.chunks(7919) {
        client.write_all(piece).unwrap();
    }
    let mut over = Vec::new();
    framer.encode(&vec![1; 1 << 20], &mut over).unwrap();
    framer.encode(b"after", &mut over).unwrap();
    let mut writer = client.try_clone().unwrap();
    let sending = thread::spawn(move || {
        let _ = writer.write_all(&over);
    });
    let frames = read_frames(&mut client);
    sending.join().unwrap();
    drop(client);
    assert_eq!(
        frames,
        [
            "4:7".to_owned(),
            "0:0".to_owned(),
            format!("{LIMIT}:9"),
            format!(
                "ERROR frame of {} bytes over the limit of {LIMIT} bytes",
                1 << 20
            ),
        ]
    );
    wait_until("the server's unbind", IO_TIMEOUT, || {
        report.lock().unwrap().unbind.is_some()
    });
    let report = report.lock().unwrap();
    assert_eq!(
        report.unbind,
        Some(UnbindReason::ProtocolError(
            format!("frame of {} bytes over the limit of {LIMIT} bytes", 1 << 20).into()
        ))
    );
    assert_eq!(
        report.too_long,
        Some(TooLong {
            limit: LIMIT,
            length: Some(1 << 20)
        })
    );
    assert!(report.peak_buffered <= LIMIT + 4, "{report:?}");
}
