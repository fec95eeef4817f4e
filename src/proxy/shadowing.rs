//! HTTP shadow traffic for one proxy: which of a client's requests go to the shadows,
//! how they are dressed, and (with comparison) the pairing of each primary response with
//! the shadows' responses to the same request.
//!
//! Every mirrored request ends in one [`CompareLine`] per shadow that was sent it, or is
//! counted as [`skipped`](ShadowEvents::skipped): a client that leaves before a shadow
//! answers does not take the comparison with it (the shadows' callbacks keep its tap).
//!
//! [`HttpShadowing`] is built once per proxy server and attached to each client's
//! [`Setup`]. It installs its taps: on the client's bytes (`on_data`), a
//! [`RequestSplitter`] finds each request; a sampled one, of a chosen method, is copied
//! (its head rewritten for the shadow) and, once whole, handed to every shadow's
//! [`Mirror`] — on connections of the shadow's own. With comparison, on the primary's
//! answers (`on_response`), a [`ResponseSplitter`] finds each response and digests it.
//! When the primary goes (`on_finish`), an answer it was sending until it closed ends.
//! A mirrored request waits, from its head on (a primary may answer before the body is
//! in), for the primary's digest and every shadow's answer (and the reference's, for
//! noise), then each shadow is classified ([`Rules::classify`]) and the
//! [`CompareLine`] handed to the proxy's callback.
//!
//! The client never waits for any of it: its bytes go to the primary unchanged as they
//! come, and the primary's answers to it as they come. What the taps keep is bounded: a
//! request is mirrored only up to [`HttpShadowing::max_request`] bytes (a bigger one is
//! not mirrored), at most [`MAX_PENDING`] requests of a session wait for their pairing
//! (beyond, new ones are not mirrored), and the digests keep at most
//! [`Rules::body_limit`] bytes of body. What the waiting comparisons of all of a
//! worker's clients hold is bounded too ([`ShadowingSpec::max_memory`]): a request is
//! mirrored only if what its pair could come to hold (each answer's digest at its
//! largest) fits in what is left, and its reservation shrinks to what each answer really
//! holds as it comes in. Over the budget (clients that do not read their answers leave
//! pairs waiting for the primary's), new requests are not mirrored ([`OVER_MEMORY`]).
//! A stream that stops being HTTP/1.1 the splitters can frame (an `Upgrade`, garbage)
//! ends mirroring for that client only: the bytes go on being relayed, and the reason is
//! counted and logged once.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use super::compare::{
    CompareLine, Exchange, ResponseDigest, Rules, ShadowFailure, SideSummary, TcpComparison,
    Verdict,
};
use super::http1::{HeadRewrite, Piece, RequestSplitter, ResponseSplitter};
use super::memory_budget::{MemoryBudget, Reservation};
use super::mirror::{Answer, BUSY, Mirror, MirroredRequest, method_name};
use super::{Finish, LOG_TARGET, Relay, Sampler, Session, Setup};
use crate::UnbindReason;

/// The most requests of one client session waiting for their comparison; beyond, new
/// requests are not mirrored until some are paired.
pub const MAX_PENDING: usize = 128;

/// The default [`HttpShadowing::max_request`]: 1 MiB.
pub const DEFAULT_MAX_REQUEST: usize = 1024 * 1024;

/// What [`ShadowEvents::skipped`] says of a request not mirrored because the waiting
/// comparisons hold their whole [`ShadowingSpec::max_memory`].
pub const OVER_MEMORY: &str = "memory";

/// The default [`ShadowingSpec::max_memory`] of a proxy run by one worker: an eighth of
/// the machine's physical memory (as for the byte shadows' queues).
pub fn default_max_memory() -> usize {
    usize::try_from(crate::limits::physical_memory() / 8).unwrap_or(usize::MAX)
}

/// What the proxy hears about each comparison (and each request not mirrored).
pub trait ShadowEvents {
    /// A request's comparison with one shadow is done.
    fn compared(&self, line: &CompareLine);
    /// A client's stream stopped being HTTP/1.1 the proxy can frame: mirroring stops for
    /// that client (`reason` is an [`http1::Reason`](super::http1::Reason) name).
    fn gave_up(&self, _session: u64, _reason: &'static str) {}
    /// A request was not mirrored (too big, too many waiting, or the shadow's queue
    /// full), or was mirrored but can never be compared ([`UNPAIRED`]).
    fn skipped(&self, _why: &'static str) {}
    /// A mirrored request got no answer from shadow `shadow` (refused, timed out...),
    /// whether or not answers are compared.
    fn mirror_failed(&self, _shadow: &str, _failure: &ShadowFailure) {}
}

/// A shadow's answer, or why there is none.
type Outcome = Result<Answer, ShadowFailure>;

/// HTTP shadow traffic for one proxy server (see the module doc). Cloning shares it.
#[derive(Clone)]
pub struct HttpShadowing {
    inner: Rc<Shared>,
}

struct Shared {
    /// The shadows, by name (`duplex_0`, ...).
    shadows: Vec<(String, Mirror)>,
    /// A second copy of production, for noise (comparison only).
    reference: Option<Mirror>,
    sample: Sampler,
    /// Only these methods (upper case); `None`: all.
    methods: Option<Vec<String>>,
    rewrite: HeadRewrite,
    max_request: usize,
    /// With comparison: its rules.
    rules: Option<Rules>,
    /// What the waiting comparisons of this worker's clients may hold.
    budget: Rc<MemoryBudget>,
    events: Rc<dyn ShadowEvents>,
}

impl std::fmt::Debug for HttpShadowing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShadowing")
            .field("shadows", &self.inner.shadows.len())
            .field("comparing", &self.inner.rules.is_some())
            .finish_non_exhaustive()
    }
}

/// How [`HttpShadowing::new`] is set up.
#[derive(Debug)]
pub struct ShadowingSpec {
    /// The shadows, by name.
    pub shadows: Vec<(String, Mirror)>,
    /// A second copy of production (only used with `rules`).
    pub reference: Option<Mirror>,
    /// The share of requests mirrored (1: all).
    pub sample: f64,
    /// Only these methods; `None`: all.
    pub methods: Option<Vec<String>>,
    /// How a mirrored request's head is dressed (`Host`, marker headers).
    pub rewrite: HeadRewrite,
    /// The largest request mirrored, head and body.
    pub max_request: usize,
    /// `Some`: compare every mirrored response with the primary's.
    pub rules: Option<Rules>,
    /// The most bytes the comparisons waiting for their answers may hold, together, for
    /// this shadowing's clients (one worker's: [`default_max_memory`] is the usual
    /// total). Beyond, new requests are not mirrored ([`OVER_MEMORY`]).
    pub max_memory: usize,
}

impl HttpShadowing {
    /// Shadowing as `spec` says, reporting to `events`.
    pub fn new(spec: ShadowingSpec, events: Rc<dyn ShadowEvents>) -> HttpShadowing {
        HttpShadowing {
            inner: Rc::new(Shared {
                shadows: spec.shadows,
                reference: spec.reference,
                sample: Sampler::new(spec.sample),
                methods: spec
                    .methods
                    .map(|m| m.iter().map(|m| m.to_ascii_uppercase()).collect()),
                rewrite: spec.rewrite,
                max_request: spec.max_request,
                rules: spec.rules,
                budget: MemoryBudget::new(spec.max_memory),
                events,
            }),
        }
    }

    /// Whether the primary's answers must be seen (comparison is on): the primary then
    /// cannot take the descriptor-level relay for its answers.
    pub fn reads_responses(&self) -> bool {
        self.inner.rules.is_some()
    }

    /// The largest request mirrored.
    pub fn max_request(&self) -> usize {
        self.inner.max_request
    }

    /// Installs the taps on a client whose primary backend is called `primary`: its
    /// `on_data` (every byte still goes to the backends unchanged) and, with comparison,
    /// its `on_response` (every byte still goes to the client unchanged) and its
    /// `on_finish`, which ends a primary's answer read until close when the primary goes,
    /// then decides as `finish` does.
    pub fn attach<S: 'static>(
        &self,
        conn: &mut Setup<'_, S>,
        primary: &str,
        mut finish: impl FnMut(&mut Session<'_, S>, &str, UnbindReason) -> Finish + 'static,
    ) {
        let tap = Rc::new(RefCell::new(Tap::new(
            Rc::clone(&self.inner),
            conn.session_id(),
        )));
        let requests = Rc::clone(&tap);
        conn.on_data(move |s, data| {
            Tap::client_sent(&requests, s, data);
            Relay::Unchanged
        });
        if !self.reads_responses() {
            conn.on_finish(finish);
            return;
        }
        let answers = Rc::clone(&tap);
        let primary = primary.to_owned();
        let primary_sent = primary.clone();
        conn.on_response(move |_, name, data| {
            if name == primary_sent {
                answers.borrow_mut().primary_sent(data);
            }
            Some(data.to_vec())
        });
        conn.on_finish(move |s, name, reason| {
            if name == primary {
                tap.borrow_mut().primary_ended();
            }
            finish(s, name, reason)
        });
    }
}

/// The request being read from the client.
struct Reading {
    index: u64,
    /// The bytes for the shadows (the rewritten head, then the body as framed); `None`
    /// when it is not mirrored.
    mirrored: Option<Vec<u8>>,
    /// The original head and body, for the reference (a copy of production).
    original: Option<Vec<u8>>,
    /// The method, for each shadow's framing of its answer (empty when not mirrored).
    method: Cow<'static, str>,
}

/// Where one shadow's answer to a mirrored request stands.
enum Slot {
    Waiting,
    /// Not sent: the shadow's queue was full (load shed, not a shadow error).
    NotSent,
    Answered(Outcome),
}

/// A mirrored request waiting for its comparison.
struct Pair {
    method: Cow<'static, str>,
    target: String,
    primary: Option<(ResponseDigest, Duration)>,
    shadows: Vec<Slot>,
    /// `None`: no reference; `Some(None)`: its answer is still to come.
    reference: Option<Option<Outcome>>,
    /// Its share of the budget: each answer's largest digest until that answer is in,
    /// then what its digest holds.
    reservation: Reservation,
}

impl Pair {
    fn complete(&self) -> bool {
        self.primary.is_some()
            && !self
                .shadows
                .iter()
                .any(|slot| matches!(slot, Slot::Waiting))
            && !matches!(self.reference, Some(None))
    }
}

/// What [`ShadowEvents::skipped`] says of a mirrored request that is never compared: its
/// primary never answered it (the client or the primary went first), or the client's
/// stream stopped being HTTP the proxy can frame.
pub const UNPAIRED: &str = "unpaired";

/// One client's taps. The session's hooks hold it, and so (with comparison) does every
/// shadow's callback for a request still out: it outlives its client until the last
/// shadow has answered.
struct Tap {
    shared: Rc<Shared>,
    session: u64,
    requests: RequestSplitter,
    /// The requests found in one slice of the client's bytes, ready for the shadows; kept
    /// empty between slices so that its room is reused.
    ready: Vec<Reading>,
    responses: ResponseSplitter,
    /// Mirroring has stopped for this client (its stream is not HTTP we can frame).
    stopped: bool,
    reading: Option<Reading>,
    requests_seen: u64,
    /// Requests whose whole bytes went to the primary, in order, with when they did (the
    /// primary's response to the first comes next).
    awaiting_primary: VecDeque<(u64, Instant)>,
    /// The response being read from the primary: its request and digest.
    primary_reading: Option<(u64, Instant, Option<ResponseDigest>)>,
    pending: BTreeMap<u64, Pair>,
}

impl Shared {
    /// What one answer's digest may come to hold.
    fn largest_answer(&self) -> usize {
        self.rules.as_ref().map_or(0, |rules| {
            ResponseDigest::largest_memory(rules.body_limit())
        })
    }

    /// Reserves what the pair of a request for `target` could come to hold: itself, and
    /// the primary's, every shadow's and the reference's answers at their largest.
    fn reserve_pair(&self, target: &str) -> Option<Reservation> {
        let answers = 1 + self.shadows.len() + usize::from(self.reference.is_some());
        let pair = std::mem::size_of::<Pair>()
            + target.len()
            + self.shadows.len() * std::mem::size_of::<Slot>();
        self.budget.reserve(pair + answers * self.largest_answer())
    }
}

/// What an answer's digest holds (none for a failure).
fn memory_of(outcome: Option<&Outcome>) -> usize {
    match outcome {
        Some(Ok(answer)) => answer.digest.memory(),
        _ => 0,
    }
}

impl Tap {
    fn new(shared: Rc<Shared>, session: u64) -> Tap {
        Tap {
            shared,
            session,
            requests: RequestSplitter::new(),
            ready: Vec::new(),
            responses: ResponseSplitter::new(),
            stopped: false,
            reading: None,
            requests_seen: 0,
            awaiting_primary: VecDeque::new(),
            primary_reading: None,
            pending: BTreeMap::new(),
        }
    }

    /// Bytes from the client: find the requests in them, mirror the chosen ones.
    fn client_sent<S: 'static>(tap: &Rc<RefCell<Tap>>, s: &mut Session<'_, S>, mut data: &[u8]) {
        let mut ready;
        {
            let mut this = tap.borrow_mut();
            if this.stopped {
                return;
            }
            ready = std::mem::take(&mut this.ready);
            // The splitter lends out its pieces while the rest of the tap takes them.
            let mut requests = std::mem::take(&mut this.requests);
            while let Some(piece) = requests.next_piece(&mut data) {
                match piece {
                    Piece::Head(head) => this.request_started(&head),
                    Piece::Body { raw, .. } => this.request_body(raw),
                    Piece::End => {
                        if let Some(request) = this.request_ended() {
                            ready.push(request);
                        }
                    }
                    Piece::Truncated(_) => {}
                    Piece::GaveUp(reason) => {
                        this.stop(reason.as_str());
                        break;
                    }
                    Piece::Opaque(_) => break,
                }
            }
            this.requests = requests;
        }
        for request in ready.drain(..) {
            send(tap, s, request);
        }
        tap.borrow_mut().ready = ready;
    }

    fn request_started(&mut self, head: &super::http1::RequestHead) {
        self.requests_seen += 1;
        let index = self.requests_seen;
        if self.shared.rules.is_some() {
            // In order from its head on: a primary may answer before the body is in.
            self.responses.expect(head.method());
            self.awaiting_primary.push_back((index, Instant::now()));
        }
        let wanted = self
            .shared
            .methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == head.method()));
        let room = self.pending.len() < MAX_PENDING;
        let mut mirrored = wanted && room && self.shared.sample.admit();
        if wanted && !room {
            self.shared.events.skipped("pending");
        }
        let method = if mirrored {
            method_name(head.method())
        } else {
            Cow::Borrowed("")
        };
        if mirrored && self.shared.rules.is_some() {
            // The pair waits from the request's head on: the primary may answer before
            // the body is in (a 417 to `Expect: 100-continue`, an early error), and its
            // answer must find the pair.
            match self.shared.reserve_pair(head.target()) {
                Some(reservation) => {
                    let pair = Pair {
                        method: method.clone(),
                        target: head.target().to_owned(),
                        primary: None,
                        shadows: self.shared.shadows.iter().map(|_| Slot::Waiting).collect(),
                        reference: self.shared.reference.as_ref().map(|_| None),
                        reservation,
                    };
                    self.pending.insert(index, pair);
                }
                None => {
                    mirrored = false;
                    self.shared.events.skipped(OVER_MEMORY);
                }
            }
        }
        let reference = mirrored && self.shared.reference.is_some();
        // A request not mirrored is only counted: nothing of it is copied.
        self.reading = Some(Reading {
            index,
            mirrored: mirrored.then(|| self.shared.rewrite.apply(head)),
            original: reference.then(|| head.as_bytes().to_vec()),
            method,
        });
    }

    fn request_body(&mut self, raw: &[u8]) {
        let max = self.shared.max_request;
        let Some(reading) = &mut self.reading else {
            return;
        };
        let too_big = reading
            .mirrored
            .as_ref()
            .is_some_and(|bytes| bytes.len() + raw.len() > max);
        if too_big {
            reading.mirrored = None;
            reading.original = None;
            // Not mirrored after all: nothing to compare (it is counted as too big).
            self.pending.remove(&reading.index);
            self.shared.events.skipped("too_big");
            return;
        }
        for bytes in [&mut reading.mirrored, &mut reading.original]
            .into_iter()
            .flatten()
        {
            bytes.extend_from_slice(raw);
        }
    }

    /// The request is whole: the primary has all of it (the hook relays as it returns);
    /// a mirrored one is ready for the shadows.
    fn request_ended(&mut self) -> Option<Reading> {
        let reading = self.reading.take()?;
        // The primary's time runs from the request's last byte.
        if let Some((index, sent)) = self.awaiting_primary.back_mut()
            && *index == reading.index
        {
            *sent = Instant::now();
        }
        reading.mirrored.is_some().then_some(reading)
    }

    fn stop(&mut self, reason: &'static str) {
        self.stopped = true;
        self.reading = None;
        self.drop_unpaired();
        self.shared.events.gave_up(self.session, reason);
    }

    /// The pairs still waiting will never be compared (mirroring stopped, or the tap is
    /// going): each is counted as skipped, so that no mirrored request goes unaccounted.
    fn drop_unpaired(&mut self) {
        for _ in std::mem::take(&mut self.pending) {
            self.shared.events.skipped(UNPAIRED);
        }
    }

    /// Bytes from the primary: find the responses, digest the ones a pair waits for.
    fn primary_sent(&mut self, mut data: &[u8]) {
        if self.stopped {
            return;
        }
        let mut responses = std::mem::take(&mut self.responses);
        self.primary_pieces(&mut responses, &mut data);
        self.responses = responses;
    }

    /// The primary is gone: an answer it was sending until it closed is whole.
    fn primary_ended(&mut self) {
        if self.stopped {
            return;
        }
        let mut responses = std::mem::take(&mut self.responses);
        responses.finish();
        self.primary_pieces(&mut responses, &mut &[][..]);
        self.responses = responses;
    }

    fn primary_pieces(&mut self, responses: &mut ResponseSplitter, data: &mut &[u8]) {
        while let Some(piece) = responses.next_piece(data) {
            match piece {
                Piece::Head(head) if head.is_interim() => {}
                Piece::Head(head) => {
                    let Some((index, sent)) = self.awaiting_primary.pop_front() else {
                        continue;
                    };
                    let digest = self.pending.contains_key(&index).then(|| {
                        let rules = self.shared.rules.as_ref();
                        let mut digest = rules.map_or_else(
                            || ResponseDigest::new(head.status(), 0),
                            |r| r.digest(head.status()),
                        );
                        for (name, value) in head.headers() {
                            digest.add_header(name, value);
                        }
                        digest
                    });
                    self.primary_reading = Some((index, sent, digest));
                }
                Piece::Body { data, .. } => {
                    if let Some((_, _, Some(digest))) = &mut self.primary_reading {
                        digest.add_body(data);
                    }
                }
                Piece::End => {
                    if let Some((index, sent, Some(digest))) = self.primary_reading.take()
                        && let Some(pair) = self.pending.get_mut(&index)
                    {
                        let largest = self.shared.largest_answer();
                        pair.reservation.settle(largest, digest.memory());
                        pair.primary = Some((digest, sent.elapsed()));
                        self.try_compare(index);
                    }
                }
                Piece::Truncated(_) => {}
                Piece::GaveUp(reason) => {
                    self.stop(reason.as_str());
                    return;
                }
                Piece::Opaque(_) => return,
            }
        }
    }

    /// An answer (or failure, or `None`: not sent) from shadow `shadow` (`None`: the
    /// reference) for `index`.
    fn answered(&mut self, index: u64, shadow: Option<usize>, outcome: Option<Outcome>) {
        let Some(pair) = self.pending.get_mut(&index) else {
            return;
        };
        let largest = self.shared.largest_answer();
        pair.reservation
            .settle(largest, memory_of(outcome.as_ref()));
        match (shadow, outcome) {
            (Some(i), outcome) => {
                if let Some(slot) = pair.shadows.get_mut(i) {
                    *slot = outcome.map_or(Slot::NotSent, Slot::Answered);
                }
            }
            (None, Some(outcome)) => pair.reference = Some(Some(outcome)),
            (None, None) => pair.reference = None,
        }
        self.try_compare(index);
    }

    /// Compares `index` if everything it waits for is in.
    fn try_compare(&mut self, index: u64) {
        if !self.pending.get(&index).is_some_and(Pair::complete) {
            return;
        }
        let Some(pair) = self.pending.remove(&index) else {
            return;
        };
        let (Some(rules), Some((primary, primary_elapsed))) = (&self.shared.rules, &pair.primary)
        else {
            return;
        };
        let reference = match &pair.reference {
            Some(Some(Ok(answer))) => Some(&answer.digest),
            _ => None,
        };
        for (i, slot) in pair.shadows.iter().enumerate() {
            let Slot::Answered(outcome) = slot else {
                continue;
            };
            let verdict = rules.classify(primary, outcome.as_ref().map(|a| &a.digest), reference);
            let shadow = match outcome {
                Ok(answer) => SideSummary::of_response(&answer.digest, answer.elapsed),
                Err(_) => SideSummary::of_bytes(0, Duration::ZERO),
            };
            let line = CompareLine {
                time: SystemTime::now(),
                session: self.session,
                exchange: Exchange::Http {
                    request: index,
                    method: pair.method.clone().into_owned(),
                    path: pair.target.clone(),
                },
                shadow_name: self.shared.shadows[i].0.clone(),
                verdict,
                primary: SideSummary::of_response(primary, *primary_elapsed),
                shadow,
            };
            self.shared.events.compared(&line);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.drop_unpaired();
    }
}

/// Hands a whole request to every shadow (and the reference); when comparing, its pair
/// has been waiting since its head.
fn send<S: 'static>(tap: &Rc<RefCell<Tap>>, s: &mut Session<'_, S>, reading: Reading) {
    let shared = Rc::clone(&tap.borrow().shared);
    let Reading {
        index,
        mirrored,
        original,
        method,
    } = reading;
    let Some(bytes) = mirrored else { return };
    let comparing = shared.rules.is_some();
    // With comparison, each shadow's callback keeps the tap: a client that has its answer
    // and leaves before the shadows answer must not take their pairing with it. The
    // mirror calls every callback it took (an answer, a failure, a timeout), so the tap
    // goes with the last one.
    let back = || comparing.then(|| Rc::clone(tap));
    let mut bytes = Some(bytes);
    let last = shared.shadows.len().saturating_sub(1);
    for (i, (_, mirror)) in shared.shadows.iter().enumerate() {
        // The last shadow takes the bytes themselves; the others a copy.
        let bytes = if i == last {
            bytes.take().unwrap_or_default()
        } else {
            bytes.clone().unwrap_or_default()
        };
        let request = MirroredRequest {
            method: method.clone(),
            bytes,
        };
        let tap_back = back();
        let reports = Rc::clone(&shared);
        let sent = mirror.send(
            s.reactor(),
            request,
            Box::new(move |_, outcome| {
                if let Err(failure) = &outcome {
                    reports.events.mirror_failed(&reports.shadows[i].0, failure);
                }
                deliver(tap_back.as_ref(), index, Some(i), Some(outcome));
            }),
        );
        match sent {
            Ok(()) => {}
            // Load shed: not sent, not a comparison.
            Err(failure) if failure.code() == BUSY => {
                shared.events.skipped(BUSY);
                deliver(back().as_ref(), index, Some(i), None);
            }
            Err(failure) => {
                shared.events.mirror_failed(&shared.shadows[i].0, &failure);
                deliver(back().as_ref(), index, Some(i), Some(Err(failure)));
            }
        }
    }
    if let (Some(reference), Some(bytes)) = (&shared.reference, original) {
        let request = MirroredRequest { method, bytes };
        let tap_back = back();
        let sent = reference.send(
            s.reactor(),
            request,
            Box::new(move |_, outcome| deliver(tap_back.as_ref(), index, None, Some(outcome))),
        );
        if let Err(failure) = sent {
            // Without the reference's answer, the comparison goes on without it.
            let outcome = (failure.code() != BUSY).then_some(Err(failure));
            deliver(back().as_ref(), index, None, outcome);
        }
    }
}

/// A shadow's outcome (`None`: not sent) reaches its client's tap (`None`: nothing is
/// compared), whether or not the client is still connected.
fn deliver(
    tap: Option<&Rc<RefCell<Tap>>>,
    index: u64,
    shadow: Option<usize>,
    outcome: Option<Outcome>,
) {
    let Some(tap) = tap else { return };
    // A shadow answering while its client's hook runs cannot happen (the reactor runs
    // one callback at a time), but a borrow conflict must never panic: drop the answer.
    let Ok(mut tap) = tap.try_borrow_mut() else {
        log::debug!(target: LOG_TARGET, "shadow answer for request {index} dropped: tap busy");
        return;
    };
    tap.answered(index, shadow, outcome);
}

/// `--compare-tcp`: for protocols that are not HTTP (Redis, memcached, SMTP...), each
/// client connection's bytes from the primary against each shadow's, byte for byte
/// ([`TcpComparison`]), as both arrive at their own speeds. The shadows are ordinary
/// shadow backends of the session (byte mirroring); one [`CompareLine`] per shadow is
/// reported when the session ends.
#[derive(Clone)]
pub struct ByteComparing {
    cap: usize,
    events: Rc<dyn ShadowEvents>,
}

impl std::fmt::Debug for ByteComparing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteComparing")
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl ByteComparing {
    /// Comparing with at most `cap` bytes of one side's lead kept (beyond, by hash),
    /// reporting to `events`.
    pub fn new(cap: usize, events: Rc<dyn ShadowEvents>) -> ByteComparing {
        ByteComparing { cap, events }
    }

    /// Installs the comparison on a client whose primary backend is `primary` and whose
    /// shadows may be any of `shadows` (a shadow the session never opens is not
    /// reported): its `on_response` (the primary's bytes still go to the client unchanged) and its
    /// `on_finish`, which records how each backend ended and then decides as `finish`
    /// does.
    pub fn attach<S: 'static>(
        &self,
        conn: &mut Setup<'_, S>,
        primary: &str,
        shadows: &[String],
        mut finish: impl FnMut(&mut Session<'_, S>, &str, UnbindReason) -> Finish + 'static,
    ) {
        let state = Rc::new(RefCell::new(ByteSession {
            session: conn.session_id(),
            started: Instant::now(),
            primary: primary.to_owned(),
            primary_elapsed: None,
            shadows: shadows
                .iter()
                .map(|name| ByteShadow {
                    name: name.clone(),
                    comparison: TcpComparison::with_cap(self.cap),
                    seen: false,
                    ended: None,
                })
                .collect(),
            events: Rc::clone(&self.events),
        }));
        let responses = Rc::clone(&state);
        conn.on_response(move |_, name, data| {
            responses.borrow_mut().received(name, data);
            Some(data.to_vec())
        });
        conn.on_finish(move |s, name, reason| {
            state.borrow_mut().ended(name, &reason);
            finish(s, name, reason)
        });
    }
}

/// One shadow of a byte comparison.
struct ByteShadow {
    name: String,
    comparison: TcpComparison,
    /// It sent something or ended: it was opened for this client.
    seen: bool,
    /// How it ended, and when (from the session's start).
    ended: Option<(UnbindReason, Duration)>,
}

/// One client's byte comparison; reported when the session (and so this) goes.
struct ByteSession {
    session: u64,
    started: Instant,
    primary: String,
    primary_elapsed: Option<Duration>,
    shadows: Vec<ByteShadow>,
    events: Rc<dyn ShadowEvents>,
}

impl ByteSession {
    fn received(&mut self, name: &str, data: &[u8]) {
        if name == self.primary {
            for shadow in &mut self.shadows {
                shadow.comparison.primary_sent(data);
            }
        } else if let Some(shadow) = self.shadows.iter_mut().find(|s| s.name == name) {
            shadow.seen = true;
            shadow.comparison.shadow_sent(data);
        }
    }

    fn ended(&mut self, name: &str, reason: &UnbindReason) {
        let elapsed = self.started.elapsed();
        if name == self.primary {
            self.primary_elapsed = Some(elapsed);
        } else if let Some(shadow) = self.shadows.iter_mut().find(|s| s.name == name) {
            shadow.seen = true;
            shadow.ended = Some((reason.clone(), elapsed));
        }
    }
}

impl Drop for ByteSession {
    fn drop(&mut self) {
        let primary_elapsed = self
            .primary_elapsed
            .unwrap_or_else(|| self.started.elapsed());
        for shadow in self.shadows.iter().filter(|s| s.seen) {
            let failure = match &shadow.ended {
                // Ended as connections end (the proxy closes a shadow once both sides are
                // done; one cut off for falling behind shows as a shorter stream).
                Some((UnbindReason::PeerClosed | UnbindReason::ClosedByUs, _)) | None => None,
                Some((reason, _)) => Some(ShadowFailure::from_unbind(reason)),
            };
            let verdict = match failure {
                Some(failure) => Verdict::ShadowFailed(failure),
                None => shadow.comparison.verdict(),
            };
            let shadow_elapsed = shadow.ended.as_ref().map_or(primary_elapsed, |(_, d)| *d);
            let line = CompareLine {
                time: SystemTime::now(),
                session: self.session,
                exchange: Exchange::Tcp,
                shadow_name: shadow.name.clone(),
                verdict,
                primary: SideSummary::of_bytes(shadow.comparison.primary_len(), primary_elapsed),
                shadow: SideSummary::of_bytes(shadow.comparison.shadow_len(), shadow_elapsed),
            };
            self.events.compared(&line);
        }
    }
}
