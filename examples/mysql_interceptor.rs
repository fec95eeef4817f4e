//! em-proxy's `schemaless-mysql/mysql_interceptor.rb`: schemaless tables on top of MySQL,
//! by rewriting queries in the MySQL wire protocol on their way to the server.
//!
//! `cargo run --example mysql_interceptor -- [LISTEN] [MYSQL]` (default 0.0.0.0:3307 →
//! 127.0.0.1:3306); then `mysql -h 127.0.0.1 -P 3307 --ssl-mode=DISABLED`.
//!
//! What it rewrites (each a `COM_QUERY`, the client's packet with sequence id 0):
//! - `create table posts` → `create table posts (id varchar(255), UNIQUE(id));`: a table
//!   is only a key.
//! - `insert into posts (id, author, ...) values ('ilya', 'Ilya Grigorik', ...)`: each
//!   attribute goes to a table of its own, `insert into posts_author values('ilya', 'Ilya
//!   Grigorik')`, created on the fly (`create table posts_author (id varchar(255), value
//!   varchar(255), UNIQUE(id))`) when the server says it does not exist (error 1146); then
//!   the key itself, `insert into posts values('ilya')`, whose answer is the one the
//!   client gets.
//! - `select author, nickname from posts where id = 'ilya'` → one join over the attribute
//!   tables, each column named after its attribute, so the client sees one table.
//!
//! Everything else (the handshake, other commands, a query it does not recognise) passes
//! through byte for byte.
//!
//! Differences from em-proxy's, on purpose: em-proxy sent the attribute inserts over a
//! second MySQL connection of its own (em-mysql) and did not wait for them; here they go
//! over the client's own connection, one at a time, before the key, and their answers
//! are read by the proxy and never reach the client — so the proxy needs no credentials
//! and the client's answer comes after its data is stored. em-proxy's `select *` asked
//! the server which attribute tables exist (`show tables like 'posts_%'`); here the
//! attributes are the columns the select names, and `select *` passes unchanged.
//! Identifiers must be plain words (letters, digits, `_`), or the query passes unchanged.
//! A client that turns on TLS (`--ssl-mode` other than `DISABLED`) is only relayed: its
//! packets are encrypted.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, ProxyServer, Relay};

mod support;

/// The command byte of a text query.
pub const COM_QUERY: u8 = 3;
/// The longest payload one packet carries; longer ones continue in the next packet.
pub const MAX_PACKET_LENGTH: usize = (1 << 24) - 1;
/// A client packet longer than this is relayed as it arrives, never held or rewritten.
pub const MAX_HELD_PACKET: usize = 1024 * 1024;
/// MySQL's error for a table that does not exist (`ER_NO_SUCH_TABLE`).
pub const ER_NO_SUCH_TABLE: u16 = 1146;

/// One whole packet: sequence id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The sequence id (0 for a client's command).
    pub seq: u8,
    /// The payload, without the 4-byte header.
    pub payload: Vec<u8>,
}

/// What [`Packets`] made of the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A packet of at most the reader's limit, whole.
    Packet(Packet),
    /// Bytes of a packet too long to hold (its header first), as they arrived.
    Raw(Vec<u8>),
}

/// Cuts a byte stream into MySQL packets (3-byte little-endian length, 1-byte sequence
/// id, payload), wherever the reads happened to split it. Holds at most one packet of
/// up to `limit` bytes; a longer one is handed on in pieces as it arrives.
#[derive(Debug)]
pub struct Packets {
    limit: usize,
    header: Vec<u8>,
    state: Reading,
}

#[derive(Debug)]
enum Reading {
    Header,
    Payload { seq: u8, len: usize, got: Vec<u8> },
    Streaming { remaining: usize },
}

impl Packets {
    /// A reader holding packets of at most `limit` bytes.
    pub fn new(limit: usize) -> Packets {
        Packets {
            limit,
            header: Vec::with_capacity(4),
            state: Reading::Header,
        }
    }

    /// Takes `data` and returns the pieces it completes, in order.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                Reading::Header => {
                    let take = (4 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() < 4 {
                        break;
                    }
                    let h = std::mem::take(&mut self.header);
                    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
                    self.state = if len > self.limit {
                        out.push(Piece::Raw(h));
                        Reading::Streaming { remaining: len }
                    } else {
                        Reading::Payload {
                            seq: h[3],
                            len,
                            got: Vec::with_capacity(len),
                        }
                    };
                }
                Reading::Payload { len, got, .. } => {
                    let take = (*len - got.len()).min(data.len());
                    got.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                Reading::Streaming { remaining } => {
                    let take = (*remaining).min(data.len());
                    out.push(Piece::Raw(data[..take].to_vec()));
                    *remaining -= take;
                    data = &data[take..];
                }
            }
            self.finish_packet(&mut out);
        }
        self.finish_packet(&mut out);
        out
    }

    fn finish_packet(&mut self, out: &mut Vec<Piece>) {
        match &mut self.state {
            Reading::Payload { seq, len, got } if got.len() == *len => {
                out.push(Piece::Packet(Packet {
                    seq: *seq,
                    payload: std::mem::take(got),
                }));
                self.state = Reading::Header;
            }
            Reading::Streaming { remaining: 0 } => self.state = Reading::Header,
            _ => {}
        }
    }
}

/// `payload` as packets from sequence id `seq` on, split at [`MAX_PACKET_LENGTH`] (a
/// payload of an exact multiple of it ends with an empty packet, as the protocol says).
pub fn encode(payload: &[u8], mut seq: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    let mut chunks = payload.chunks(MAX_PACKET_LENGTH).peekable();
    let mut last_len = MAX_PACKET_LENGTH;
    while let Some(chunk) = chunks.next() {
        let len = chunk.len();
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        last_len = len;
        if chunks.peek().is_none() {
            break;
        }
    }
    if last_len == MAX_PACKET_LENGTH {
        out.extend_from_slice(&[0, 0, 0, seq]);
    }
    out
}

/// A query as a `COM_QUERY` command, ready to send.
pub fn query_packet(sql: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(COM_QUERY);
    payload.extend_from_slice(sql.as_bytes());
    encode(&payload, 0)
}

/// What a client's query becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Send this query instead.
    Query(String),
    /// Store each attribute first (an insert, and the table to create if it is missing),
    /// then send `key`; only the key's answer reaches the client.
    Insert {
        /// `(insert into the attribute's table, create that table)`, in column order.
        attributes: Vec<(String, String)>,
        /// The insert of the key alone.
        key: String,
    },
    /// Send it as it is.
    Unchanged,
}

/// The schemaless rewrite of `sql` (see the module docs).
pub fn rewrite(sql: &str) -> Rewrite {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    match words.first().copied() {
        Some("create") => rewrite_create(&words),
        Some("insert") => rewrite_insert(sql, &words),
        Some("select") => rewrite_select(sql, &lower),
        _ => None,
    }
    .unwrap_or(Rewrite::Unchanged)
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A value for a single-quoted SQL string.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn rewrite_create(words: &[&str]) -> Option<Rewrite> {
    match words {
        ["create", "table", name] if is_word(name) => Some(Rewrite::Query(format!(
            "create table {name} (id varchar(255), UNIQUE(id));"
        ))),
        _ => None,
    }
}

/// The text between the `n`-th `(` and its `)` (no nesting: values are plain strings).
fn parenthesised(sql: &str, n: usize) -> Option<&str> {
    let mut rest = sql;
    for _ in 0..n {
        rest = &rest[rest.find(')')? + 1..];
    }
    let open = rest.find('(')?;
    let close = open + rest[open..].find(')')?;
    Some(&rest[open + 1..close])
}

fn unquote(value: &str) -> &str {
    let v = value.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn rewrite_insert(sql: &str, words: &[&str]) -> Option<Rewrite> {
    let ["insert", "into", table, ..] = words else {
        return None;
    };
    // `posts (id, ...)` and `posts(id, ...)` alike.
    let table = table.split('(').next()?;
    if !is_word(table) {
        return None;
    }
    let keys: Vec<String> = parenthesised(sql, 0)?
        .split(',')
        .map(|k| k.trim().to_ascii_lowercase())
        .collect();
    let values: Vec<&str> = parenthesised(sql, 1)?.split(',').map(unquote).collect();
    if keys.len() != values.len() || !keys.iter().all(|k| is_word(k)) {
        return None;
    }
    let id = keys.iter().position(|k| k == "id").map(|i| values[i])?;
    let attributes = keys
        .iter()
        .zip(&values)
        .filter(|(k, _)| *k != "id")
        .map(|(k, v)| {
            (
                format!(
                    "insert into {table}_{k} values({}, {})",
                    quoted(id),
                    quoted(v)
                ),
                format!(
                    "create table {table}_{k} (id varchar(255), value varchar(255), UNIQUE(id))"
                ),
            )
        })
        .collect();
    Some(Rewrite::Insert {
        attributes,
        key: format!("insert into {table} values({})", quoted(id)),
    })
}

fn rewrite_select(sql: &str, lower: &str) -> Option<Rewrite> {
    let from = lower.find(" from ")?;
    let attrs: Vec<String> = sql["select".len()..from]
        .split(',')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    if !attrs.iter().all(|a| is_word(a)) {
        return None; // `select *`, expressions: left alone
    }
    let after = &lower[from + " from ".len()..];
    let table = after.split_whitespace().next()?;
    if !is_word(table) {
        return None;
    }
    let key = match lower.find(" where ") {
        None => None,
        Some(at) => {
            let (column, value) = sql[at + " where ".len()..].split_once('=')?;
            if !column.trim().eq_ignore_ascii_case("id") {
                return None;
            }
            Some(unquote(value).to_owned())
        }
    };
    let columns: Vec<&String> = attrs.iter().filter(|a| *a != "id").collect();
    let mut join = format!("select {table}.id as id");
    for c in &columns {
        join += &format!(", {table}_{c}.value as {c}");
    }
    join += &format!(" from {table}");
    for c in &columns {
        join += &format!(" left outer join {table}_{c} on {table}_{c}.id = {table}.id");
    }
    if let Some(key) = key {
        join += &format!(" where {table}.id = {}", quoted(&key));
    }
    Some(Rewrite::Query(join))
}

/// What a packet from the server says about the statement it answers.
fn answer_of(payload: &[u8]) -> Answer {
    match payload {
        [0xff, lo, hi, ..] => Answer::Error(u16::from_le_bytes([*lo, *hi])),
        _ => Answer::Done,
    }
}

enum Answer {
    Error(u16),
    Done,
}

/// A statement of the proxy's own, sent on the client's connection.
#[derive(Debug)]
enum Step {
    /// Store one attribute; on "no such table", create it and try again.
    Attribute { insert: String, create: String },
    /// Create an attribute table, then retry its insert.
    Create { create: String, retry: String },
    /// The insert again, once: a second failure is not followed by another create.
    Retry(String),
    /// Answered to the client: from here the server's bytes pass through again.
    Key(String),
}

/// One client's state: its packets, and the proxy's own statements still to send.
#[derive(Debug)]
pub struct Session {
    client: Packets,
    server: Packets,
    /// The statement whose answer is awaited (`None`: the server's bytes go to the client).
    in_flight: Option<Step>,
    steps: VecDeque<Step>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            client: Packets::new(MAX_HELD_PACKET),
            server: Packets::new(MAX_HELD_PACKET),
            in_flight: None,
            steps: VecDeque::new(),
        }
    }
}

impl Session {
    /// The client's bytes, rewritten: what to send to the server now.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for piece in self.client.feed(data) {
            match piece {
                Piece::Raw(bytes) => out.extend_from_slice(&bytes),
                Piece::Packet(p) => match (p.seq, p.payload.split_first()) {
                    (0, Some((&COM_QUERY, sql))) => {
                        let sql = String::from_utf8_lossy(sql);
                        out.extend(self.command(&sql, &p.payload));
                    }
                    _ => out.extend(encode(&p.payload, p.seq)),
                },
            }
        }
        out
    }

    fn command(&mut self, sql: &str, payload: &[u8]) -> Vec<u8> {
        match rewrite(sql) {
            Rewrite::Unchanged => encode(payload, 0),
            Rewrite::Query(sql) => query_packet(&sql),
            Rewrite::Insert { attributes, key } => {
                self.steps = attributes
                    .into_iter()
                    .map(|(insert, create)| Step::Attribute { insert, create })
                    .collect();
                self.steps.push_back(Step::Key(key));
                self.server = Packets::new(MAX_HELD_PACKET);
                self.send_next_step()
            }
        }
    }

    fn send_next_step(&mut self) -> Vec<u8> {
        let Some(step) = self.steps.pop_front() else {
            return Vec::new();
        };
        let packet = match &step {
            Step::Attribute { insert: sql, .. }
            | Step::Create { create: sql, .. }
            | Step::Retry(sql)
            | Step::Key(sql) => query_packet(sql),
        };
        // The key's answer is the client's: nothing is awaited by the proxy any more.
        self.in_flight = (!matches!(step, Step::Key(_))).then_some(step);
        packet
    }

    /// The server's bytes: `(for the client, for the server)`.
    pub fn server_bytes(&mut self, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        if self.in_flight.is_none() {
            return (data.to_vec(), Vec::new());
        }
        let mut to_server = Vec::new();
        let mut to_client = Vec::new();
        for piece in self.server.feed(data) {
            let Some(step) = self.in_flight.take() else {
                // The key was sent: what follows is its answer, the client's.
                match piece {
                    Piece::Packet(p) => to_client.extend(encode(&p.payload, p.seq)),
                    Piece::Raw(bytes) => to_client.extend(bytes),
                }
                continue;
            };
            let Piece::Packet(answer) = piece else {
                // Our statements are answered by one short packet: anything else
                // cannot be for them. Keep waiting.
                self.in_flight = Some(step);
                continue;
            };
            match (step, answer_of(&answer.payload)) {
                (Step::Attribute { insert, create }, Answer::Error(ER_NO_SUCH_TABLE)) => {
                    self.steps.push_front(Step::Create {
                        create,
                        retry: insert,
                    });
                }
                (Step::Create { retry, .. }, Answer::Done) => {
                    self.steps.push_front(Step::Retry(retry));
                }
                // Anything else (stored, or an error em-proxy's also ignored): go on.
                _ => {}
            }
            to_server.extend(self.send_next_step());
        }
        (to_client, to_server)
    }
}

/// The interceptor in front of the MySQL server at `backend`.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, Session::default, move |conn| {
        conn.server("mysql", backend);
        conn.on_data(|s, data| Relay::All(s.state().client_bytes(data)));
        conn.on_response(|s, _, data| {
            let (to_client, to_server) = s.state().server_bytes(data);
            if !to_server.is_empty() {
                s.relay_to_servers(Relay::All(to_server));
            }
            Some(to_client)
        });
    })
}

const USAGE: &str = "mysql_interceptor [LISTEN] [MYSQL]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:3307", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:3306", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("mysql_interceptor on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("mysql_interceptor: {e}");
        std::process::exit(1);
    }
}
