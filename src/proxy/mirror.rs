//! Mirroring HTTP requests to a shadow on connections of the shadow's own: the HTTP mode
//! of issue 12's shadow traffic.
//!
//! In plain `-d` mode a shadow is a second backend of the client's session: it gets the
//! client's bytes as they come, on a connection tied to the client's. In HTTP mode the
//! proxy finds each request's boundaries ([`http1`](super::http1)) and hands whole
//! requests to a [`Mirror`]: one per shadow (per reactor), with its own pool of
//! keep-alive connections, so that a shadow's slowness, death or different keep-alive
//! habits never touch the primary and can never pair a response with the wrong request.
//!
//! A mirror connection carries one request at a time (no pipelining: a shadow that
//! answers out of order, or closes after each response, cannot confuse the pairing),
//! reads the response with the HTTP/1.1 framing, digests it for the comparison
//! ([`compare`](super::compare)) and calls the request's callback once: with the answer,
//! or with why there is none. Everything is bounded: connections
//! ([`MirrorOptions::max_connections`]), requests and bytes waiting for one
//! ([`MirrorOptions::max_queued`], [`MirrorOptions::max_queued_bytes`]: beyond, a request
//! is refused at once as [`BUSY`]), the time a request may take
//! ([`MirrorOptions::timeout`]), and the loop's time: a mirror connection gets one read
//! per readiness event, so a shadow flooding its answers yields the loop to production.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::{ConnId, Context, Handler, Reactor, TimerId, UnbindReason, Unreachable};

use super::compare::{ResponseDigest, ShadowFailure};
use super::http1::{Piece, ResponseSplitter};
use super::target::Target;

/// How a [`Mirror`] treats its shadow.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    /// Connections to the shadow at most (default 64).
    pub max_connections: usize,
    /// Requests waiting for a connection at most (default 1,024).
    pub max_queued: usize,
    /// Bytes of those requests at most (default 8 MiB).
    pub max_queued_bytes: usize,
    /// How long a request may take once sent: connect, answer and all, however steadily
    /// the answer trickles in (default 10 s). Past it, the request fails as a timeout and
    /// its connection, with whatever it had read, is closed.
    pub timeout: Duration,
    /// How long an idle connection is kept for the next request (default 30 s).
    pub idle_timeout: Duration,
    /// Whether responses are digested for a comparison (headers kept, body hashed);
    /// without, they are only framed.
    pub digest: bool,
    /// How much of each response body is kept for the comparison (the rest is hashed).
    pub max_body: usize,
    /// TLS to the shadow: the client configuration and the name to verify.
    pub tls: Option<(Arc<ClientConfig>, String)>,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            max_connections: 64,
            max_queued: 1024,
            max_queued_bytes: 8 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            digest: true,
            max_body: super::compare::DEFAULT_MAX_BODY,
            tls: None,
        }
    }
}

/// A request as it goes to the shadow: its bytes (head, possibly rewritten, and body,
/// framed as the client framed it) and its method (a response to `HEAD` has no body).
#[derive(Clone, Debug)]
pub struct MirroredRequest {
    /// `GET`, `HEAD`, ... ([`method_name`] borrows the standard ones: a request mirrored
    /// to several shadows copies no method).
    pub method: Cow<'static, str>,
    /// The whole request, head and body.
    pub bytes: Vec<u8>,
}

/// `method` as a [`MirroredRequest::method`]: the methods of RFC 9110 and `PATCH`
/// borrowed, any other copied.
pub fn method_name(method: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match STANDARD.iter().find(|&&name| name == method) {
        Some(&name) => Cow::Borrowed(name),
        None => Cow::Owned(method.to_owned()),
    }
}

/// The shadow's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// What the comparison needs of the response.
    pub digest: ResponseDigest,
    /// From the request's first byte written to the response's last read.
    pub elapsed: Duration,
}

/// What a request's sender hears, once.
pub type Done = Box<dyn FnOnce(&mut Reactor, Result<Answer, ShadowFailure>)>;

/// What [`Mirror::send`] says when it cannot take a request: the queue is full (the
/// shadow is behind), and the request was not sent.
pub const BUSY: &str = "busy";

/// Counts of one mirror, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Requests written to the shadow.
    pub sent: u64,
    /// Of those, answered with a whole response.
    pub answered: u64,
    /// Of those, not: a timeout, a reset, an unreadable response...
    pub failed: u64,
    /// Requests not taken: the queue was full.
    pub busy: u64,
    /// Connections open or opening now.
    pub connections: usize,
}

/// One shadow's pool of keep-alive connections, on one reactor. Cloning shares it.
#[derive(Clone)]
pub struct Mirror {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Mirror")
            .field("target", &inner.target)
            .field("connections", &inner.connections)
            .field("queued", &inner.queue.len())
            .finish()
    }
}

struct Inner {
    target: Target,
    options: MirrorOptions,
    /// Connected, with no request in flight.
    idle: Vec<ConnId>,
    /// Open or opening.
    connections: usize,
    /// Of those, still connecting (each will take a request when it connects).
    connecting: usize,
    queue: VecDeque<Job>,
    queued_bytes: usize,
    stats: MirrorStats,
    /// The shadow could not be reached: until then, requests fail at once with this
    /// (no connection is tried, so a dead shadow costs no loop of refused connects).
    down: Option<(Instant, ShadowFailure)>,
    /// Its being unreachable was logged, and its recovery is still to be.
    reported_down: bool,
}

struct Job {
    request: MirroredRequest,
    done: Done,
    queued: Instant,
}

/// How long a shadow that could not be reached is left alone before the next request
/// tries it again.
pub const RETRY_UNREACHABLE: Duration = Duration::from_secs(1);

impl Mirror {
    /// A mirror of `target`, with no connection yet (the first request opens one).
    pub fn new(target: Target, options: MirrorOptions) -> Mirror {
        Mirror {
            inner: Rc::new(RefCell::new(Inner {
                target,
                options,
                idle: Vec::new(),
                connections: 0,
                connecting: 0,
                queue: VecDeque::new(),
                queued_bytes: 0,
                stats: MirrorStats::default(),
                down: None,
                reported_down: false,
            })),
        }
    }

    /// Where the shadow is.
    pub fn target(&self) -> Target {
        self.inner.borrow().target.clone()
    }

    /// Its counts so far.
    pub fn stats(&self) -> MirrorStats {
        let inner = self.inner.borrow();
        MirrorStats {
            connections: inner.connections,
            ..inner.stats
        }
    }

    /// Sends `request` on the next free connection (a new one if none is free and the
    /// pool may grow); `done` runs once, later, with the answer or the failure. A request
    /// not taken is `Err`, and `done` never runs: the queue is full ([`BUSY`]), or the
    /// shadow could not be reached a moment ago (the failure then, for
    /// [`RETRY_UNREACHABLE`]).
    pub fn send(
        &self,
        r: &mut Reactor,
        request: MirroredRequest,
        done: Done,
    ) -> Result<(), ShadowFailure> {
        {
            let mut inner = self.inner.borrow_mut();
            if let Some((until, failure)) = &inner.down {
                if Instant::now() < *until {
                    let failure = failure.clone();
                    inner.stats.failed += 1;
                    return Err(failure);
                }
                inner.down = None;
            }
            let options = &inner.options;
            if inner.queue.len() >= options.max_queued
                || inner.queued_bytes + request.bytes.len() > options.max_queued_bytes
            {
                inner.stats.busy += 1;
                return Err(ShadowFailure::Other(BUSY.to_owned()));
            }
            inner.queued_bytes += request.bytes.len();
            inner.queue.push_back(Job {
                request,
                done,
                queued: Instant::now(),
            });
        }
        kick(r, &self.inner);
        Ok(())
    }
}

/// Puts queued requests on idle connections, and opens connections for the rest (up to
/// the limit, and no more than there are requests to carry).
fn kick(r: &mut Reactor, pool: &Rc<RefCell<Inner>>) {
    loop {
        let idle = {
            let mut inner = pool.borrow_mut();
            if inner.queue.is_empty() {
                return;
            }
            match inner.idle.pop() {
                Some(id) => id,
                None => {
                    let waiting = inner.queue.len();
                    if inner.connecting >= waiting
                        || inner.connections >= inner.options.max_connections
                    {
                        return;
                    }
                    inner.connections += 1;
                    inner.connecting += 1;
                    drop(inner);
                    open(r, pool);
                    continue;
                }
            }
        };
        match r.with_handler::<MirrorConn, _>(idle, |conn, cx| conn.take_next(cx)) {
            Ok(_) | Err(Unreachable::Gone) | Err(Unreachable::Panicked) => {}
            Err(Unreachable::Busy) | Err(Unreachable::OtherType) => {
                // In its own callback right now: it looks at the queue when that ends.
                pool.borrow_mut().idle.push(idle);
                let pool = Rc::clone(pool);
                r.next_tick(move |r| kick(r, &pool));
                return;
            }
        }
    }
}

/// Opens one connection to the shadow; it takes a request when it connects.
fn open(r: &mut Reactor, pool: &Rc<RefCell<Inner>>) {
    let (target, options) = {
        let inner = pool.borrow();
        (inner.target.clone(), inner.options.clone())
    };
    let handler = MirrorConn {
        pool: Rc::downgrade(pool),
        current: None,
        reader: ResponseReader::new(options.digest, options.max_body),
        connected: false,
        tls: options.tls.clone(),
        timeout: options.timeout,
        idle_timeout: options.idle_timeout,
    };
    let opened = match &target {
        Target::Tcp(addr) => r.connect(*addr, handler).map(drop),
        Target::Host(host, port) => {
            r.connect_host(host, *port, handler);
            Ok(())
        }
        Target::Unix(path) => r.connect_unix(path, handler).map(drop),
    };
    if opened.is_err() {
        // No socket at all: the queue waits for a connection that can be made.
        let mut inner = pool.borrow_mut();
        inner.connections -= 1;
        inner.connecting -= 1;
    }
}

/// The request a connection is carrying.
struct InFlight {
    done: Done,
    sent: Instant,
    /// Ends the request as a timeout when its whole answer is not in by then.
    deadline: TimerId,
}

/// One connection of a mirror's pool.
struct MirrorConn {
    pool: Weak<RefCell<Inner>>,
    current: Option<InFlight>,
    reader: ResponseReader,
    connected: bool,
    tls: Option<(Arc<ClientConfig>, String)>,
    timeout: Duration,
    idle_timeout: Duration,
}

impl MirrorConn {
    /// Takes the next queued request and sends it; `false` (and the connection goes
    /// idle) if there is none.
    fn take_next(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            cx.close();
            return false;
        };
        let (job, expired) = {
            let mut inner = pool.borrow_mut();
            // A request that waited its whole timeout for a connection is not worth
            // sending any more: its pair has waited long enough.
            let mut expired = Vec::new();
            while inner
                .queue
                .front()
                .is_some_and(|job| job.queued.elapsed() >= self.timeout)
            {
                if let Some(job) = inner.queue.pop_front() {
                    inner.queued_bytes -= job.request.bytes.len();
                    inner.stats.failed += 1;
                    expired.push(job.done);
                }
            }
            let job = inner.queue.pop_front();
            match &job {
                Some(job) => {
                    inner.queued_bytes -= job.request.bytes.len();
                    inner.stats.sent += 1;
                }
                None => inner.idle.push(cx.id()),
            }
            (job, expired)
        };
        for done in expired {
            done(cx, Err(ShadowFailure::Timeout));
        }
        let Some(Job { request, done, .. }) = job else {
            cx.set_comm_inactivity_timeout(Some(self.idle_timeout));
            return false;
        };
        self.reader.expect(&request.method);
        cx.set_comm_inactivity_timeout(Some(self.timeout));
        cx.send_data(&request.bytes);
        // The inactivity timeout alone would let a shadow that trickles its answer hold
        // the request (and this connection, and the pair waiting for it) for ever.
        let id = cx.id();
        let deadline = cx.add_timer(self.timeout, move |r| {
            let _ = r.with_handler::<MirrorConn, _>(id, |conn, cx| conn.timed_out(cx));
        });
        self.current = Some(InFlight {
            done,
            sent: Instant::now(),
            deadline,
        });
        true
    }

    /// The request in flight ran out of time: it fails, and the connection goes with
    /// what it had read of the answer.
    fn timed_out(&mut self, cx: &mut Context<'_>) {
        self.finish(cx, Err(ShadowFailure::Timeout), false);
    }

    /// The request in flight ends with `outcome`: the next one goes out first (so that
    /// `done`, if it sends more, finds this connection busy rather than opening
    /// another), then `done` runs.
    fn finish(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Result<ResponseDigest, ShadowFailure>,
        reusable: bool,
    ) {
        let Some(InFlight {
            done,
            sent,
            deadline,
        }) = self.current.take()
        else {
            return;
        };
        cx.cancel_timer(deadline);
        if let Some(pool) = self.pool.upgrade() {
            let mut inner = pool.borrow_mut();
            match &outcome {
                Ok(_) => {
                    inner.stats.answered += 1;
                    if std::mem::take(&mut inner.reported_down) {
                        log::warn!(target: super::LOG_TARGET, "shadow {}: answering again", inner.target);
                    }
                }
                Err(_) => inner.stats.failed += 1,
            }
        }
        if reusable {
            self.take_next(cx);
        } else {
            cx.close();
        }
        let outcome = outcome.map(|digest| Answer {
            digest,
            elapsed: sent.elapsed(),
        });
        done(cx, outcome);
    }
}

impl Handler for MirrorConn {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_pending_connect_timeout(self.timeout);
        // A shadow's answers are worth less than production's: one read per readiness
        // event, so a shadow that floods cannot take the loop from the primaries.
        cx.set_read_budget(1);
        if let Some((config, name)) = self.tls.take()
            && let Err(e) = cx.start_tls_client(config, &name)
        {
            log::warn!(target: super::LOG_TARGET, "shadow mirror: TLS as `{name}`: {e}");
            cx.close();
        }
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        self.connected = true;
        let _ = cx.set_nodelay(true);
        if let Some(pool) = self.pool.upgrade() {
            pool.borrow_mut().connecting -= 1;
        }
        self.take_next(cx);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.current.is_none() {
            // Bytes nobody asked for: this connection can no longer be trusted.
            cx.close();
            return;
        }
        match self.reader.feed(data) {
            Progress::Pending => {}
            Progress::Answered { digest, reusable } => self.finish(cx, Ok(digest), reusable),
            Progress::Broken => self.finish(cx, Err(ShadowFailure::Unparseable), false),
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let outcome = match self.reader.finish() {
            Progress::Answered { digest, .. } => Ok(digest),
            Progress::Broken => Err(ShadowFailure::Unparseable),
            Progress::Pending => Err(ShadowFailure::from_unbind(&reason)),
        };
        let mut unreachable = Vec::new();
        if let Some(pool) = self.pool.upgrade() {
            let mut inner = pool.borrow_mut();
            inner.connections -= 1;
            let id = cx.id();
            inner.idle.retain(|&c| c != id);
            if !self.connected {
                inner.connecting -= 1;
            }
            // Never connected, for a reason that is the shadow's (not the reactor
            // stopping): the shadow is unreachable now.
            let shadows_fault = !matches!(
                reason,
                UnbindReason::ReactorStopped | UnbindReason::ClosedByUs | UnbindReason::Panicked(_)
            );
            if !self.connected && shadows_fault {
                // What waits for it fails with the reason, and new requests fail at once
                // for a while.
                let failure = ShadowFailure::from_unbind(&reason);
                if !inner.reported_down {
                    inner.reported_down = true;
                    log::warn!(
                        target: super::LOG_TARGET,
                        "shadow {}: unreachable ({failure}); mirrored requests fail at once, tried again every {}s",
                        inner.target,
                        RETRY_UNREACHABLE.as_secs()
                    );
                }
                inner.down = Some((Instant::now() + RETRY_UNREACHABLE, failure.clone()));
                inner.stats.failed += inner.queue.len() as u64;
                inner.queued_bytes = 0;
                unreachable.extend(inner.queue.drain(..).map(|job| (job.done, failure.clone())));
            }
        }
        self.finish(cx, outcome, false);
        for (done, failure) in unreachable {
            done(cx, Err(failure));
        }
        if let (Some(pool), false) = (self.pool.upgrade(), reason == UnbindReason::ReactorStopped) {
            kick(cx, &pool);
        }
    }
}

/// What reading a response has come to.
enum Progress {
    Pending,
    /// The whole response is in; `reusable` unless it said `Connection: close` or ended
    /// with the connection.
    Answered {
        digest: ResponseDigest,
        reusable: bool,
    },
    /// Not an HTTP/1.1 response the framing can read.
    Broken,
}

/// One connection's response reading: the HTTP/1.1 framing, and the digest of the
/// response in flight (interim 1xx responses are skipped). Without a comparison the
/// digest holds only the status, and costs no allocation.
struct ResponseReader {
    responses: ResponseSplitter,
    digest: Option<ResponseDigest>,
    close: bool,
    /// Digest the responses (a comparison wants them), or only frame them.
    digesting: bool,
    max_body: usize,
}

impl ResponseReader {
    fn new(digesting: bool, max_body: usize) -> ResponseReader {
        ResponseReader {
            responses: ResponseSplitter::new(),
            digest: None,
            close: false,
            digesting,
            max_body,
        }
    }

    fn expect(&mut self, method: &str) {
        self.responses.expect(method);
        self.digest = None;
        self.close = false;
    }

    fn feed(&mut self, mut data: &[u8]) -> Progress {
        while let Some(piece) = self.responses.next_piece(&mut data) {
            match piece {
                Piece::Head(head) if head.is_interim() => {}
                Piece::Head(head) => {
                    let mut digest = ResponseDigest::new(head.status(), self.max_body);
                    if self.digesting {
                        for (name, value) in head.headers() {
                            digest.add_header(name, value);
                        }
                    }
                    self.close = head.closes_connection();
                    self.digest = Some(digest);
                }
                Piece::Body { data, .. } => {
                    if let (Some(digest), true) = (&mut self.digest, self.digesting) {
                        digest.add_body(data);
                    }
                }
                Piece::End => {
                    if let Some(digest) = self.digest.take() {
                        // Bytes after the end of the only response asked for: the
                        // connection is not trustworthy for another.
                        let reusable = !self.close && data.is_empty();
                        return Progress::Answered { digest, reusable };
                    }
                }
                Piece::Truncated(_) | Piece::GaveUp(_) | Piece::Opaque(_) => {
                    return Progress::Broken;
                }
            }
        }
        Progress::Pending
    }

    /// The connection ended: a response read until close ends here.
    fn finish(&mut self) -> Progress {
        if self.digest.is_none() {
            return Progress::Pending;
        }
        self.responses.finish();
        match self.feed(&[]) {
            Progress::Answered { digest, .. } => Progress::Answered {
                digest,
                reusable: false,
            },
            Progress::Pending => Progress::Pending,
            Progress::Broken => Progress::Pending,
        }
    }
}
