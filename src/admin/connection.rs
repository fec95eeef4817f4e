//! One admin client connection: reads requests, answers them in order, and keeps the
//! client within its server's [`Limits`](super::Limits).
//!
//! It owns the client's unanswered input (at most one read beyond a request head and
//! body: it stops reading while a whole request waits to be answered) and the timer for
//! the request in progress. Parsing is `parse.rs`'s, answering the routes', the bytes of
//! an answer `message.rs`'s; this module only decides when.
//!
//! When it answers: as soon as a request is whole, unless more than the high-water mark
//! of responses is waiting for the client to read (then it pauses, and
//! `outbound_drained` carries on), and at most [`REQUESTS_PER_TURN`] requests per turn
//! (then it pauses, and a next-tick closure carries on). It never blocks the loop and
//! never lets one client's input or output grow without bound.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::{Context, Handler, TimerId, UnbindReason};

use super::message::Response;
use super::parse::{self, Parsed};
use super::server::{REQUESTS_PER_TURN, ServerState};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The handler of one admin connection.
pub(crate) struct AdminConnection {
    server: Rc<ServerState>,
    /// The client's address, for every request's [`Request::peer_addr`](super::Request::peer_addr).
    peer: Option<SocketAddr>,
    /// Received bytes not yet answered: the request in progress, and any pipelined
    /// behind it.
    input: Vec<u8>,
    /// Whether it holds one of the server's connection places (not when over the limit).
    admitted: bool,
    /// An answer that ends the connection was sent; input is ignored from now on.
    finished: bool,
    /// Fires `request_timeout` after the request in progress began.
    request_timer: Option<TimerId>,
    /// `100 Continue` was sent for the request in progress.
    continue_sent: bool,
    /// A next-tick closure will carry on answering.
    turn_scheduled: bool,
}

impl AdminConnection {
    pub(crate) fn new(server: Rc<ServerState>) -> AdminConnection {
        AdminConnection {
            server,
            peer: None,
            input: Vec::new(),
            admitted: false,
            finished: false,
            request_timer: None,
            continue_sent: false,
            turn_scheduled: false,
        }
    }

    /// Answers what is buffered, within the limits; reads again only when nothing whole
    /// is left to answer.
    fn answer_buffered(&mut self, cx: &mut Context<'_>) {
        let limits = &self.server.limits;
        let (max_head, max_body) = (limits.max_request_head, limits.max_request_body);
        for _ in 0..REQUESTS_PER_TURN {
            if self.finished {
                return;
            }
            if cx.is_above_high_water() {
                // `outbound_drained` carries on once the client has read its answers.
                cx.pause();
                return;
            }
            match parse::parse(&self.input, max_head, max_body) {
                Parsed::Incomplete { expects_continue } => {
                    if expects_continue && !self.continue_sent {
                        self.continue_sent = true;
                        cx.send_data(CONTINUE);
                    }
                    self.time_request(cx);
                    cx.resume();
                    return;
                }
                Parsed::Complete {
                    mut request,
                    consumed,
                    keep_alive,
                } => {
                    self.input.drain(..consumed);
                    self.continue_sent = false;
                    self.stop_request_timer(cx);
                    request.peer = self.peer;
                    let response = self.server.routes.answer(&request);
                    self.server.stats.request_answered();
                    cx.send_data(&response.encode(request.is_head(), !keep_alive));
                    if !keep_alive {
                        self.finish(cx);
                    }
                }
                Parsed::Refused(why) => self.refuse(cx, why.status()),
            }
        }
        if self.finished {
            return;
        }
        // The turn is spent: let the other descriptors have the loop first.
        cx.pause();
        if !std::mem::replace(&mut self.turn_scheduled, true) {
            let id = cx.id();
            cx.next_tick(move |r| {
                let _ = r.with_handler::<AdminConnection, _>(id, |conn, cx| {
                    conn.turn_scheduled = false;
                    conn.answer_buffered(cx);
                });
            });
        }
    }

    /// Starts the request timer when a request has begun, stops it when none has.
    fn time_request(&mut self, cx: &mut Context<'_>) {
        if self.input.is_empty() {
            self.stop_request_timer(cx);
        } else if self.request_timer.is_none() {
            let id = cx.id();
            let timeout = self.server.limits.request_timeout;
            let timer = cx.add_timer(timeout, move |r| {
                let _ = r.with_handler::<AdminConnection, _>(id, |conn, cx| {
                    conn.request_timer = None;
                    conn.refuse(cx, 408);
                });
            });
            self.request_timer = Some(timer);
        }
    }

    fn stop_request_timer(&mut self, cx: &mut Context<'_>) {
        if let Some(timer) = self.request_timer.take() {
            cx.cancel_timer(timer);
        }
    }

    /// Answers with `status` on the server's behalf and closes: after a refusal, where
    /// the next request would begin is not known.
    fn refuse(&mut self, cx: &mut Context<'_>, status: u16) {
        if self.finished {
            return;
        }
        self.server.stats.request_refused();
        let response = Response::text(status, format!("{status} {}\n", refusal_text(status)));
        cx.send_data(&response.encode(false, true));
        self.finish(cx);
    }

    /// Closes once the answers are written; what else arrives is not read.
    fn finish(&mut self, cx: &mut Context<'_>) {
        self.finished = true;
        self.input = Vec::new();
        self.stop_request_timer(cx);
        cx.close_after_writing();
    }
}

fn refusal_text(status: u16) -> &'static str {
    match status {
        408 => "request not received in time",
        _ => super::message::reason(status),
    }
}

impl Handler for AdminConnection {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        if !self.server.admit() {
            // Over the limit: costs an accept and a close, nothing more (an answer could
            // wait on a client that does not read, and a lingering close would hold the
            // descriptor).
            self.finished = true;
            cx.close();
            return;
        }
        self.admitted = true;
        self.peer = cx.peer_addr();
        let limits = &self.server.limits;
        cx.set_comm_inactivity_timeout(Some(limits.idle_timeout));
        cx.set_water_marks(limits.response_high_water, limits.response_low_water);
        // Each answer is one write; never hold it back for an ACK.
        let _ = cx.set_nodelay(true);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        if self.finished {
            return;
        }
        self.input.extend_from_slice(data);
        self.answer_buffered(cx);
    }

    fn outbound_drained(&mut self, cx: &mut Context<'_>) {
        self.answer_buffered(cx);
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: UnbindReason) {
        self.stop_request_timer(cx);
        if std::mem::take(&mut self.admitted) {
            self.server.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::parse::Refusal;

    #[test]
    fn refusals_say_why_in_their_body() {
        for why in [
            Refusal::Malformed,
            Refusal::LengthRequired,
            Refusal::BodyTooLarge,
            Refusal::TargetTooLong,
            Refusal::HeadTooLarge,
        ] {
            assert!(!refusal_text(why.status()).is_empty(), "{why:?}");
        }
        assert_eq!(refusal_text(408), "request not received in time");
    }
}
