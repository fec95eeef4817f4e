//! A real HAProxy for interop tests: found on `PATH` or at `/usr/sbin/haproxy` (`.ci/run`
//! installs Debian's package; without it a test fails, saying so), run in the foreground
//! with a one-frontend, one-server TCP configuration, killed and reaped when dropped.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;
use super::child::Child;
use super::clients::closed_port;

/// The haproxy binary, on `PATH` or where Debian puts it (`/usr/sbin`, not always on a
/// user's `PATH`). Always `Some`: without haproxy the test fails here, saying so.
pub fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("haproxy"))
        .chain([PathBuf::from("/usr/sbin/haproxy")])
        .find(|candidate| candidate.is_file());
    assert!(
        found.is_some(),
        "haproxy is not installed (not on PATH nor /usr/sbin): `apt-get install haproxy` (.ci/run does)"
    );
    found
}

/// A running `haproxy -db` relaying one frontend to `server`; killed and reaped, and its
/// config directory removed, when dropped.
pub struct Haproxy {
    pub child: Child,
    pub frontend: SocketAddr,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts `binary` with a frontend on a free loopback port that runs `frontend_rules`,
    /// and one backend server line, `server s1 {server}`.
    pub fn start(binary: &PathBuf, frontend_rules: &str, server: &str) -> Haproxy {
        Haproxy::start_with_bind(binary, "", frontend_rules, server)
    }

    /// [`start`](Self::start) with options on the frontend's `bind` line (`ssl crt
    /// FILE`, say).
    pub fn start_with_bind(
        binary: &PathBuf,
        bind_options: &str,
        frontend_rules: &str,
        server: &str,
    ) -> Haproxy {
        let test = thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let dir = std::env::temp_dir().join(format!(
            "ember-proxy-protocol-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        // A port free a moment ago can still be held by another test thread's child that
        // has not exec'd yet: haproxy then cannot bind it and exits. Another port, then.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let frontend = closed_port();
            std::fs::write(
                &config,
                format!(
                    "global\n    nbthread 1\n\
                     defaults\n    mode tcp\n    timeout connect 5s\n    \
                     timeout client 30s\n    timeout server 30s\n\
                     frontend fe\n    bind {frontend} {bind_options}\n    {frontend_rules}\n    \
                     default_backend be\n\
                     backend be\n    server s1 {server}\n"
                ),
            )
            .unwrap();
            let mut child = Child::spawn(
                Command::new(binary)
                    .arg("-db")
                    .arg("-f")
                    .arg(&config)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            );
            let deadline = Instant::now() + IO_TIMEOUT;
            while !child.listens_on(frontend) {
                if child.has_exited() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not listening on {frontend} after {IO_TIMEOUT:?}\n{}",
                    child.describe()
                );
                thread::sleep(Duration::from_millis(5));
            }
            if !child.has_exited() {
                return Haproxy {
                    child,
                    frontend,
                    dir,
                };
            }
            let _ = child.wait_exit(IO_TIMEOUT);
            assert!(
                attempt < ATTEMPTS && child.stderr().contains("cannot bind socket"),
                "haproxy exited before listening on {frontend}\n{}",
                child.describe()
            );
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A client connection through the frontend (haproxy listens from
    /// [`start`](Self::start) on); haproxy relays it to the server.
    pub fn connect(&mut self) -> TcpStream {
        let stream = TcpStream::connect(self.frontend).unwrap_or_else(|e| {
            panic!(
                "connect to haproxy on {}: {e}\n{}",
                self.frontend,
                self.child.describe()
            )
        });
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }
}

impl Haproxy {
    /// The next connection haproxy opens to `backend`, its reads bounded; panics with
    /// haproxy's output if none comes within [`IO_TIMEOUT`].
    pub fn accept_on(&mut self, backend: &TcpListener) -> TcpStream {
        backend.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match backend.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    return stream;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "haproxy opened no connection to the backend in {IO_TIMEOUT:?}\n{}",
                        self.child.describe()
                    );
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept on the backend: {e}"),
            }
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
