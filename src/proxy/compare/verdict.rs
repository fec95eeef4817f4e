//! What a comparison concludes: [`Verdict`] and its [`Difference`]s, and why a shadow
//! had nothing to compare ([`ShadowFailure`]).

use super::*;

/// Why a shadow has no response to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowFailure {
    /// No whole response in time (connect, inactivity or response timeout): `timeout`.
    Timeout,
    /// The shadow reset the connection: `reset`.
    Reset,
    /// The connect was refused: `refused`.
    Refused,
    /// The proxy dropped the shadow for falling behind (its buffer overflowed): `cut_off`.
    CutOff,
    /// The shadow closed before its response was complete: `incomplete`.
    Incomplete,
    /// What the shadow sent was not an HTTP response the framing could read:
    /// `unparseable`.
    Unparseable,
    /// Any other reason, as a short code (an [`UnbindReason::code`], say).
    Other(String),
}

impl ShadowFailure {
    /// The code the compare log writes: `timeout`, `reset`, `refused`, `cut_off`,
    /// `incomplete`, `unparseable`, or the [`ShadowFailure::Other`] code.
    pub fn code(&self) -> &str {
        match self {
            ShadowFailure::Timeout => "timeout",
            ShadowFailure::Reset => "reset",
            ShadowFailure::Refused => "refused",
            ShadowFailure::CutOff => "cut_off",
            ShadowFailure::Incomplete => "incomplete",
            ShadowFailure::Unparseable => "unparseable",
            ShadowFailure::Other(code) => code,
        }
    }

    /// The failure a log code stands for (the inverse of [`ShadowFailure::code`]).
    pub fn from_code(code: &str) -> ShadowFailure {
        match code {
            "timeout" => ShadowFailure::Timeout,
            "reset" => ShadowFailure::Reset,
            "refused" => ShadowFailure::Refused,
            "cut_off" => ShadowFailure::CutOff,
            "incomplete" => ShadowFailure::Incomplete,
            "unparseable" => ShadowFailure::Unparseable,
            other => ShadowFailure::Other(other.to_owned()),
        }
    }

    /// The failure of a shadow whose connection ended for `reason` before its response
    /// was whole. A cut-off shadow is [`ShadowFailure::CutOff`]: only the caller knows that.
    pub fn from_unbind(reason: &UnbindReason) -> ShadowFailure {
        match reason {
            UnbindReason::ConnectTimeout
            | UnbindReason::InactivityTimeout
            | UnbindReason::HalfCloseTimeout => ShadowFailure::Timeout,
            UnbindReason::Reset => ShadowFailure::Reset,
            UnbindReason::Refused => ShadowFailure::Refused,
            UnbindReason::PeerClosed => ShadowFailure::Incomplete,
            other => ShadowFailure::Other(other.code().to_owned()),
        }
    }
}

impl fmt::Display for ShadowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Bytes of each side around the first difference (up to [`EXCERPT_LEN`] each, lossy
/// UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// The primary's bytes.
    pub primary: String,
    /// The shadow's bytes.
    pub shadow: String,
}

/// How two bodies (or two TCP streams) differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDifference {
    /// The first differing byte, when known. `None` means both were longer than what was
    /// kept, agreed on it, and differ past it by hash or length ("hashed").
    pub offset: Option<u64>,
    /// The primary's whole length.
    pub primary_len: u64,
    /// The shadow's whole length.
    pub shadow_len: u64,
    /// Where the JSON values first differ, when both bodies were compared as JSON.
    pub json_path: Option<String>,
    /// The bytes around `offset`, when it is known.
    pub excerpt: Option<Excerpt>,
}

impl BodyDifference {
    pub(super) fn raw(
        primary: &ResponseDigest,
        shadow: &ResponseDigest,
        raw: RawDiff,
        json_path: Option<String>,
    ) -> BodyDifference {
        let offset = match raw {
            RawDiff::At(offset) => Some(offset),
            RawDiff::Equal | RawDiff::Hashed => None,
        };
        BodyDifference {
            offset,
            primary_len: primary.body_len,
            shadow_len: shadow.body_len,
            json_path,
            excerpt: offset.map(|at| excerpt_at(&primary.kept, &shadow.kept, at)),
        }
    }

    /// Whether only hash and length could tell (no offset).
    pub fn is_hashed(&self) -> bool {
        self.offset.is_none()
    }
}

/// One difference between the primary's response and another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The status codes differ.
    Status {
        /// The primary's.
        primary: u16,
        /// The shadow's.
        shadow: u16,
    },
    /// The first compared header that differs (values as shown in the log: lossy UTF-8,
    /// repeats joined with `, `, cut at 256 bytes; `None`: not sent by that side).
    Header {
        /// Its lower-cased name.
        name: String,
        /// The primary's value.
        primary: Option<String>,
        /// The shadow's value.
        shadow: Option<String>,
    },
    /// The bodies differ.
    Body(BodyDifference),
}

/// Which part of a response a [`Difference`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DifferenceKind {
    /// `status`.
    Status,
    /// `header`.
    Header,
    /// `body`.
    Body,
}

impl DifferenceKind {
    /// Its name in the compare log.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Status => "status",
            DifferenceKind::Header => "header",
            DifferenceKind::Body => "body",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<DifferenceKind> {
        match name {
            "status" => Some(DifferenceKind::Status),
            "header" => Some(DifferenceKind::Header),
            "body" => Some(DifferenceKind::Body),
            _ => None,
        }
    }
}

impl Difference {
    /// Which part of the response differs.
    pub fn kind(&self) -> DifferenceKind {
        match self {
            Difference::Status { .. } => DifferenceKind::Status,
            Difference::Header { .. } => DifferenceKind::Header,
            Difference::Body(_) => DifferenceKind::Body,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Status { primary, shadow } => write!(f, "status {primary} vs {shadow}"),
            Difference::Header {
                name,
                primary,
                shadow,
            } => {
                let side =
                    |v: &Option<String>| v.as_ref().map_or("(absent)".into(), |v| format!("{v:?}"));
                write!(f, "header {name}: {} vs {}", side(primary), side(shadow))
            }
            Difference::Body(body) => {
                match body.offset {
                    Some(at) => write!(f, "body differs at byte {at}")?,
                    None => write!(
                        f,
                        "body differs past the kept bytes (compared by hash and length, no offset)"
                    )?,
                }
                if let Some(path) = &body.json_path {
                    write!(f, ", JSON at {path}")?;
                }
                write!(f, " ({} vs {} bytes)", body.primary_len, body.shadow_len)
            }
        }
    }
}

/// What a comparison concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing compared differs.
    Same,
    /// A real difference: the first one (status, then headers, then body).
    Differs(Difference),
    /// Every difference also shows between primary and reference; the first of them.
    Noise(Difference),
    /// The shadow had no response to compare.
    ShadowFailed(ShadowFailure),
}

/// The verdict's name in the compare log and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    /// `same`.
    Same,
    /// `status`.
    Status,
    /// `header`.
    Header,
    /// `body`.
    Body,
    /// `shadow_error`.
    ShadowError,
    /// `noise`.
    Noise,
}

impl VerdictKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [VerdictKind; 6] = [
        VerdictKind::Same,
        VerdictKind::Status,
        VerdictKind::Header,
        VerdictKind::Body,
        VerdictKind::ShadowError,
        VerdictKind::Noise,
    ];

    /// Its name in the compare log (`"verdict"`) and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Same => "same",
            VerdictKind::Status => "status",
            VerdictKind::Header => "header",
            VerdictKind::Body => "body",
            VerdictKind::ShadowError => "shadow_error",
            VerdictKind::Noise => "noise",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<VerdictKind> {
        VerdictKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl Verdict {
    /// Its kind, as logged and counted.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Verdict::Same => VerdictKind::Same,
            Verdict::Differs(d) => match d.kind() {
                DifferenceKind::Status => VerdictKind::Status,
                DifferenceKind::Header => VerdictKind::Header,
                DifferenceKind::Body => VerdictKind::Body,
            },
            Verdict::Noise(_) => VerdictKind::Noise,
            Verdict::ShadowFailed(_) => VerdictKind::ShadowError,
        }
    }

    /// The difference a `Differs` or `Noise` verdict is about.
    pub fn difference(&self) -> Option<&Difference> {
        match self {
            Verdict::Differs(d) | Verdict::Noise(d) => Some(d),
            Verdict::Same | Verdict::ShadowFailed(_) => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Same => f.write_str("same"),
            Verdict::Differs(d) => write!(f, "{d}"),
            Verdict::Noise(d) => write!(f, "noise: {d}"),
            Verdict::ShadowFailed(failure) => write!(f, "shadow failed: {failure}"),
        }
    }
}
