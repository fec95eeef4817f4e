//! Child processes a test starts: this test binary re-run for one test in a process of its
//! own (a low descriptor limit, signals, a measurement other tests would disturb), and the
//! `ember-proxy` binary. A [`Child`] reads the stdout and stderr it pipes on threads of
//! their own (so the child never blocks on a full pipe), is waited on with a limit, and is
//! killed and reaped when dropped.
//!
//! A re-run test learns its role from [`ROLE_ENV`] ([`role_is`]) and talks to the parent
//! with `@@ember <key> <value>` lines on stdout ([`MARK`], [`Child::expect`]).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{self, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The `ember-proxy` binary of this package.
pub const EMBER_PROXY: &str = env!("CARGO_BIN_EXE_ember-proxy");
/// Environment variable telling a re-run test binary which role to play.
pub const ROLE_ENV: &str = "EMBER_TEST_CHILD_ROLE";
/// Starts a child's stdout message for the parent: `@@ember <key> <value>`. Searched for
/// anywhere in a line, because libtest may print `test name ... ` on the same line first.
pub const MARK: &str = "@@ember ";
/// The role of a test re-run by [`run_alone`].
pub const ALONE: &str = "alone";

/// Whether this process is a re-run child playing `role`. A child test returns at once
/// otherwise, so `--include-ignored` runs stay harmless.
pub fn role_is(role: &str) -> bool {
    std::env::var(ROLE_ENV).as_deref() == Ok(role)
}

/// Re-runs test `test` of this binary alone in a child process, for a measurement that
/// other tests running in parallel would disturb, and asserts that it passed. The test
/// calls this unless it is that child (`role_is(ALONE)`).
pub fn run_alone(test: &str, limit: Duration) {
    let mut child = Child::rerun_test(test, ALONE, None);
    let status = child.wait_exit(limit);
    let stdout = child.stdout();
    print!("{stdout}");
    eprint!("{}", child.stderr());
    assert!(status.success(), "child test `{test}` failed ({status})");
    assert!(
        stdout.contains("1 passed"),
        "child process did not run `{test}`"
    );
}

/// A running `ember-proxy -l 127.0.0.1:0 …` (stdout and stderr piped) and the address it
/// listens on.
pub struct EmberProxy {
    pub child: Child,
    pub addr: SocketAddr,
}

impl EmberProxy {
    pub fn start(args: &[&str]) -> EmberProxy {
        let mut child = Child::spawn(
            Command::new(EMBER_PROXY)
                .args(["-l", "127.0.0.1:0"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let addr = child.listening_addr(IO_TIMEOUT);
        EmberProxy { child, addr }
    }
}

/// A running child process; killed and reaped when dropped.
pub struct Child {
    child: process::Child,
    /// Stdout lines, each with its newline, then `None` once stdout closed; read on a
    /// helper thread. `None` if stdout is not piped.
    lines: Option<Receiver<Option<String>>>,
    /// Everything taken from `lines` so far.
    transcript: String,
    eof: bool,
    /// Stderr so far, collected on a helper thread (empty if stderr is not piped).
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Child {
    /// Starts `cmd` with stdin from `/dev/null`.
    pub fn spawn(cmd: &mut Command) -> Child {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn a child process");
        Child::adopt(child)
    }

    /// Runs test `test` of this binary (ignored or not) as `role`, stdout and stderr piped,
    /// with `RLIMIT_NOFILE` lowered to `nofile` if given.
    pub fn rerun_test(test: &str, role: &str, nofile: Option<libc::rlim_t>) -> Child {
        let exe = std::env::current_exe().expect("path of this test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            test,
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(limit) = nofile {
            // SAFETY: the closure runs between fork and exec and only calls setrlimit(2),
            // which is async-signal-safe, on a stack value.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Child::spawn(&mut cmd)
    }

    /// Takes charge of a spawned child, reading whichever of its stdout and stderr are
    /// piped and not taken already.
    pub fn adopt(mut child: process::Child) -> Child {
        let lines = child.stdout.take().map(|stdout| {
            let (tx, lines) = mpsc::channel();
            thread::spawn(move || {
                let mut stdout = BufReader::new(stdout);
                loop {
                    let mut line = Vec::new();
                    match stdout.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&line).into_owned();
                            if tx.send(Some(line)).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tx.send(None);
            });
            lines
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = child.stderr.take().map(|mut pipe| {
            let collected = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    collected
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        Child {
            child,
            lines,
            transcript: String::new(),
            eof: false,
            stderr,
            stderr_reader,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    pub fn signal(&self, signo: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signo) };
        assert_eq!(rc, 0, "kill({}, {signo})", self.pid());
    }

    /// Stdout read so far.
    pub fn stdout(&self) -> String {
        self.transcript.clone()
    }

    /// Stderr read so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn describe(&self) -> String {
        format!(
            "child stdout so far:\n{}\nchild stderr:\n{}",
            self.transcript,
            self.stderr()
        )
    }

    /// The next line on stdout, without its line end; `None` once stdout has closed (or if
    /// it is not piped). Panics if none has come by `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let lines = self.lines.as_ref()?;
        if self.eof {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Some(line)) => Some(self.record(line)),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out waiting for the child\n{}", self.describe())
            }
        }
    }

    /// The next line already read from stdout, if any, without waiting.
    fn line_if_any(&mut self) -> Option<String> {
        let lines = self.lines.as_ref()?;
        match lines.try_recv() {
            Ok(Some(line)) => Some(self.record(line)),
            Ok(None) | Err(TryRecvError::Disconnected) => {
                self.eof = true;
                None
            }
            Err(TryRecvError::Empty) => None,
        }
    }

    fn record(&mut self, line: String) -> String {
        self.transcript.push_str(&line);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    }

    /// Waits for the next message with `key` (skipping other lines) and returns its value.
    pub fn expect(&mut self, key: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.next_line(deadline).as_deref().map(message) {
                Some(Some((k, value))) if k == key => return value,
                Some(_) => {}
                None => panic!(
                    "the child's stdout closed before `{key}`\n{}",
                    self.describe()
                ),
            }
        }
    }

    /// The value of the last message with `key` among the lines that have arrived, without
    /// waiting.
    pub fn latest(&mut self, key: &str) -> Option<String> {
        let mut last = None;
        while let Some(line) = self.line_if_any() {
            if let Some((k, value)) = message(&line)
                && k == key
            {
                last = Some(value);
            }
        }
        last
    }

    /// Reads `ember-proxy`'s first line on stdout, `ember-proxy: listening on ADDR[,…]`,
    /// and returns ADDR.
    pub fn listening_addr(&mut self, limit: Duration) -> SocketAddr {
        let line = self.next_line(Instant::now() + limit).unwrap_or_default();
        line.strip_prefix("ember-proxy: listening on ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no listening line: {line:?}\n{}", self.describe()))
    }

    /// Reads `ember-proxy`'s next line on stdout, `ember-proxy: admin on http://ADDR/ ...`,
    /// and returns ADDR.
    pub fn admin_addr(&mut self, limit: Duration) -> SocketAddr {
        let line = self.next_line(Instant::now() + limit).unwrap_or_default();
        line.strip_prefix("ember-proxy: admin on http://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no admin line: {line:?}\n{}", self.describe()))
    }

    /// Whether one of this child's own descriptors is a socket listening on `addr` (IPv4),
    /// read from `/proc/net/tcp` and `/proc/PID/fd`.
    ///
    /// Stronger than "a connection to `addr` succeeds": a port free a moment ago can still
    /// be held by another test thread's child, forked while that thread held the port and
    /// not yet exec'd; a connection queued there is reset at its exec.
    pub fn listens_on(&self, addr: SocketAddr) -> bool {
        let SocketAddr::V4(v4) = addr else {
            panic!("listens_on reads /proc/net/tcp, IPv4 only: {addr}");
        };
        let wanted = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        );
        const LISTEN: &str = "0A";
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let inodes: Vec<String> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let listening =
                    fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&LISTEN);
                let inode = fields.get(9)?;
                listening.then(|| format!("socket:[{inode}]"))
            })
            .collect();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                inodes
                    .iter()
                    .any(|inode| target.as_os_str() == inode.as_str())
            })
        })
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("poll the child").is_some()
    }

    pub fn assert_alive(&mut self, after: &str) {
        let status = self.child.try_wait().expect("poll the child");
        assert!(
            status.is_none(),
            "the child exited after {after}: {status:?}"
        );
    }

    /// Waits for the child to exit, reading its stdout to the end and its stderr as far
    /// as it gets in the time left; panics if it has not exited within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while self.next_line(deadline).is_some() {}
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit within {limit:?}\n{}",
                self.describe()
            );
            thread::sleep(Duration::from_millis(5));
        };
        if let Some(reader) = self.stderr_reader.take() {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `(key, value)` of a line holding a [`MARK`]ed message.
fn message(line: &str) -> Option<(String, String)> {
    let at = line.find(MARK)?;
    let msg = &line[at + MARK.len()..];
    let (key, value) = msg.split_once(' ').unwrap_or((msg, ""));
    Some((key.to_string(), value.trim().to_string()))
}
