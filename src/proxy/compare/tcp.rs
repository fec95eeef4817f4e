//! [`TcpComparison`]: two byte streams compared as they arrive, for protocols that are
//! not HTTP.

use super::*;

/// Which side sent bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sender {
    Primary,
    Shadow,
}

pub(super) enum TcpState {
    /// Equal so far over `agreed` bytes; `lead` holds what the side `ahead` sent past them.
    Matching {
        agreed: u64,
        ahead: Sender,
        lead: VecDeque<u8>,
        /// The last few agreed bytes, for an excerpt's "before".
        recent: Vec<u8>,
    },
    /// They differ at `offset`; nothing more is kept.
    Differ { offset: u64, excerpt: Excerpt },
    /// The lead outgrew the cap: each side's bytes past the agreed prefix, hashed.
    Hashing {
        primary: Box<BodyHasher>,
        shadow: Box<BodyHasher>,
    },
}

/// Compares the bytes the primary sent back on a client connection with the bytes the
/// shadow sent back, as each side's bytes arrive at its own pace.
///
/// Only the unmatched lead of the faster side is kept, up to a cap; past it the comparison
/// hashes both sides instead and can then say "same" or "differs" but no offset.
pub struct TcpComparison {
    cap: usize,
    primary_len: u64,
    shadow_len: u64,
    state: TcpState,
}

impl Default for TcpComparison {
    fn default() -> TcpComparison {
        TcpComparison::with_cap(DEFAULT_TCP_LEAD)
    }
}

impl TcpComparison {
    /// A comparison that buffers at most [`DEFAULT_TCP_LEAD`] bytes.
    pub fn new() -> TcpComparison {
        TcpComparison::default()
    }

    /// A comparison that buffers at most `cap` bytes of the side ahead.
    pub fn with_cap(cap: usize) -> TcpComparison {
        TcpComparison {
            cap,
            primary_len: 0,
            shadow_len: 0,
            state: TcpState::Matching {
                agreed: 0,
                ahead: Sender::Primary,
                lead: VecDeque::new(),
                recent: Vec::new(),
            },
        }
    }

    /// The primary sent these bytes back.
    pub fn primary_sent(&mut self, bytes: &[u8]) {
        self.primary_len += bytes.len() as u64;
        self.feed(Sender::Primary, bytes);
    }

    /// The shadow sent these bytes back.
    pub fn shadow_sent(&mut self, bytes: &[u8]) {
        self.shadow_len += bytes.len() as u64;
        self.feed(Sender::Shadow, bytes);
    }

    /// Bytes the primary sent so far.
    pub fn primary_len(&self) -> u64 {
        self.primary_len
    }

    /// Bytes the shadow sent so far.
    pub fn shadow_len(&self) -> u64 {
        self.shadow_len
    }

    /// Bytes buffered now (the lead of the side ahead): never more than the cap.
    pub fn buffered(&self) -> usize {
        match &self.state {
            TcpState::Matching { lead, .. } => lead.len(),
            TcpState::Differ { .. } | TcpState::Hashing { .. } => 0,
        }
    }

    /// The verdict if both sides ended now: [`Verdict::Same`], or [`Verdict::Differs`] with
    /// a [`Difference::Body`] (offset `None` once the comparison fell back to hashes).
    pub fn verdict(&self) -> Verdict {
        let (offset, excerpt) = match &self.state {
            TcpState::Differ { offset, excerpt } => (Some(*offset), Some(excerpt.clone())),
            TcpState::Matching {
                agreed,
                ahead,
                lead,
                recent,
            } => {
                if lead.is_empty() {
                    return Verdict::Same;
                }
                // One side stopped where the other went on.
                let mut leader = recent.clone();
                leader.extend(lead.iter().take(EXCERPT_LEN - EXCERPT_BEFORE));
                let excerpt = excerpt_for(*ahead, &leader, recent);
                (Some(*agreed), Some(excerpt))
            }
            TcpState::Hashing { primary, shadow } => {
                if self.primary_len == self.shadow_len && primary.finish() == shadow.finish() {
                    return Verdict::Same;
                }
                (None, None)
            }
        };
        Verdict::Differs(Difference::Body(BodyDifference {
            offset,
            primary_len: self.primary_len,
            shadow_len: self.shadow_len,
            json_path: None,
            excerpt,
        }))
    }

    pub(super) fn feed(&mut self, from: Sender, bytes: &[u8]) {
        let next = match &mut self.state {
            TcpState::Differ { .. } => None,
            TcpState::Hashing { primary, shadow } => {
                match from {
                    Sender::Primary => primary.write(bytes),
                    Sender::Shadow => shadow.write(bytes),
                }
                None
            }
            TcpState::Matching {
                agreed,
                ahead,
                lead,
                recent,
            } => 'matching: {
                let mut rest = bytes;
                if !lead.is_empty() && *ahead != from {
                    // The side behind catches up: check its bytes against the lead.
                    let n = rest.len().min(lead.len());
                    if let Some(i) = lead_mismatch(lead, &rest[..n]) {
                        let mut before = recent.clone();
                        remember(&mut before, &rest[..i]);
                        let mut leader = before.clone();
                        leader.extend(lead.iter().skip(i).take(EXCERPT_LEN - EXCERPT_BEFORE));
                        let mut follower = before;
                        let after = (i + EXCERPT_LEN - EXCERPT_BEFORE).min(rest.len());
                        follower.extend_from_slice(&rest[i..after]);
                        let excerpt = excerpt_for(*ahead, &leader, &follower);
                        break 'matching Some(TcpState::Differ {
                            offset: *agreed + i as u64,
                            excerpt,
                        });
                    }
                    remember(recent, &rest[..n]);
                    lead.drain(..n);
                    *agreed += n as u64;
                    rest = &rest[n..];
                }
                if rest.is_empty() {
                    None
                } else if lead.len() + rest.len() <= self.cap {
                    *ahead = from;
                    lead.extend(rest);
                    None
                } else {
                    // Too far ahead to buffer: from here on, hash what each side sends past
                    // the agreed prefix.
                    let mut leader = Box::new(BodyHasher::new());
                    let (front, back) = lead.as_slices();
                    leader.write(front);
                    leader.write(back);
                    leader.write(rest);
                    let (primary, shadow) = match from {
                        Sender::Primary => (leader, Box::new(BodyHasher::new())),
                        Sender::Shadow => (Box::new(BodyHasher::new()), leader),
                    };
                    Some(TcpState::Hashing { primary, shadow })
                }
            }
        };
        if let Some(state) = next {
            self.state = state;
        }
    }
}

/// The first index where `bytes` differs from the start of `lead` (`bytes` is no longer).
pub(super) fn lead_mismatch(lead: &VecDeque<u8>, bytes: &[u8]) -> Option<usize> {
    let (front, back) = lead.as_slices();
    let k = front.len().min(bytes.len());
    if let Some(i) = first_mismatch(&front[..k], &bytes[..k]) {
        return Some(i);
    }
    let tail = &bytes[k..];
    first_mismatch(&back[..tail.len()], tail).map(|i| k + i)
}

/// Keeps the last [`EXCERPT_BEFORE`] agreed bytes in `recent`.
pub(super) fn remember(recent: &mut Vec<u8>, agreed: &[u8]) {
    recent.extend_from_slice(&agreed[agreed.len().saturating_sub(EXCERPT_BEFORE)..]);
    let excess = recent.len().saturating_sub(EXCERPT_BEFORE);
    recent.drain(..excess);
}

pub(super) fn excerpt_for(leader: Sender, leader_bytes: &[u8], follower_bytes: &[u8]) -> Excerpt {
    let (primary, shadow) = match leader {
        Sender::Primary => (leader_bytes, follower_bytes),
        Sender::Shadow => (follower_bytes, leader_bytes),
    };
    Excerpt {
        primary: String::from_utf8_lossy(primary).into_owned(),
        shadow: String::from_utf8_lossy(shadow).into_owned(),
    }
}

impl fmt::Debug for TcpComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            TcpState::Matching { agreed, .. } => format!("matching over {agreed} bytes"),
            TcpState::Differ { offset, .. } => format!("differ at {offset}"),
            TcpState::Hashing { .. } => "hashing".to_owned(),
        };
        f.debug_struct("TcpComparison")
            .field("cap", &self.cap)
            .field("primary_len", &self.primary_len)
            .field("shadow_len", &self.shadow_len)
            .field("buffered", &self.buffered())
            .field("state", &state)
            .finish()
    }
}
