//! [`CompareLine`]: one line of the `--compare-log` (a JSON object), written and read
//! back by `ember-proxy report`.

use super::*;

/// What was exchanged: one HTTP request, or a whole TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// `"mode":"http"`, with the request.
    Http {
        /// The request's index within its client session, from 1.
        request: u64,
        /// The request method.
        method: String,
        /// The request target as sent (`/users/42?x=1`).
        path: String,
    },
    /// `"mode":"tcp"`: the bytes of one client connection.
    Tcp,
}

/// One side's numbers in the compare log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideSummary {
    /// The HTTP status (`None` in TCP mode, or for a shadow that failed).
    pub status: Option<u16>,
    /// From sending the request (or the first byte) to the whole answer, or to the failure.
    /// The log keeps microseconds.
    pub elapsed: Duration,
    /// Body bytes (HTTP) or bytes sent back (TCP).
    pub bytes: u64,
}

impl SideSummary {
    /// The numbers of an HTTP response.
    pub fn of_response(digest: &ResponseDigest, elapsed: Duration) -> SideSummary {
        SideSummary {
            status: Some(digest.status),
            elapsed,
            bytes: digest.body_len,
        }
    }

    /// The numbers of a side with no status: TCP mode, or a shadow that failed.
    pub fn of_bytes(bytes: u64, elapsed: Duration) -> SideSummary {
        SideSummary {
            status: None,
            elapsed,
            bytes,
        }
    }
}

/// One line of the `--compare-log`: one finished comparison.
///
/// ```text
/// {"time":"2026-11-30T15:00:00.123Z","session":12,"request":3,"mode":"http",
///  "method":"GET","path":"/users/42?x=1","shadow_name":"duplex_0","verdict":"body",
///  "noise_of":null,"primary":{"status":200,"ms":1.25,"bytes":512},
///  "shadow":{"status":200,"ms":3.5,"bytes":498,"error":null},
///  "diff":{"offset":17,"primary_len":512,"shadow_len":498,"json_path":"$.items[3].price","hashed":false},
///  "excerpt":{"primary":"…","shadow":"…"}}
/// ```
///
/// (on one line). In TCP mode `request`, `method`, `path` and both `status` fields are
/// absent. `diff` is `{"status":[p,s]}`, `{"header":name,"primary":v|null,"shadow":v|null}`,
/// the body form above (`offset` null and `hashed` true when only hashes could tell),
/// `{"error":code}`, or null for `same`; for `noise` it is the noisy difference and
/// `noise_of` its kind. `excerpt` is set for body differences with an offset.
///
/// The shadow's name is `shadow_name`, not `shadow`: `shadow` is its numbers object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareLine {
    /// When the comparison finished (written as RFC 3339 UTC, milliseconds).
    pub time: SystemTime,
    /// The client session's id.
    pub session: u64,
    /// The request, or TCP.
    pub exchange: Exchange,
    /// The shadow's name.
    pub shadow_name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The primary's numbers.
    pub primary: SideSummary,
    /// The shadow's numbers.
    pub shadow: SideSummary,
}

/// A compare-log line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError(String);

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compare log line: {}", self.0)
    }
}

impl std::error::Error for LineError {}

impl CompareLine {
    /// The line as JSON, fields in the documented order, without the newline.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(320);
        // The time needs no escaping.
        out.push_str("{\"time\":\"");
        push_rfc3339(&mut out, self.time);
        out.push('"');
        let _ = write!(out, ",\"session\":{}", self.session);
        let http = match &self.exchange {
            Exchange::Http {
                request,
                method,
                path,
            } => {
                let _ = write!(out, ",\"request\":{request},\"mode\":\"http\",\"method\":");
                push_json_string(&mut out, method);
                out.push_str(",\"path\":");
                push_json_string(&mut out, path);
                true
            }
            Exchange::Tcp => {
                out.push_str(",\"mode\":\"tcp\"");
                false
            }
        };
        out.push_str(",\"shadow_name\":");
        push_json_string(&mut out, &self.shadow_name);
        let _ = write!(out, ",\"verdict\":\"{}\"", self.verdict.kind().as_str());
        match &self.verdict {
            Verdict::Noise(d) => {
                let _ = write!(out, ",\"noise_of\":\"{}\"", d.kind().as_str());
            }
            _ => out.push_str(",\"noise_of\":null"),
        }
        out.push_str(",\"primary\":");
        push_side(&mut out, &self.primary, http);
        out.push('}');
        out.push_str(",\"shadow\":");
        push_side(&mut out, &self.shadow, http);
        out.push_str(",\"error\":");
        match &self.verdict {
            Verdict::ShadowFailed(failure) => push_json_string(&mut out, failure.code()),
            _ => out.push_str("null"),
        }
        out.push('}');
        out.push_str(",\"diff\":");
        push_diff(&mut out, &self.verdict);
        out.push_str(",\"excerpt\":");
        match self.verdict.difference() {
            Some(Difference::Body(BodyDifference {
                excerpt: Some(excerpt),
                ..
            })) => {
                out.push_str("{\"primary\":");
                push_json_string(&mut out, &excerpt.primary);
                out.push_str(",\"shadow\":");
                push_json_string(&mut out, &excerpt.shadow);
                out.push('}');
            }
            _ => out.push_str("null"),
        }
        out.push('}');
        out
    }

    /// Reads a line [`CompareLine::render`] wrote. Unknown fields are ignored, so older
    /// readers survive newer lines.
    pub fn parse(line: &str) -> Result<CompareLine, LineError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| LineError(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| LineError("not a JSON object".into()))?;
        let time_text = str_field(obj, "time")?;
        let time = parse_rfc3339(time_text)
            .ok_or_else(|| LineError(format!("`time` is not RFC 3339 UTC: {time_text}")))?;
        let session = u64_field(obj, "session")?;
        let http = match str_field(obj, "mode")? {
            "http" => true,
            "tcp" => false,
            other => return Err(LineError(format!("unknown mode `{other}`"))),
        };
        let exchange = if http {
            Exchange::Http {
                request: u64_field(obj, "request")?,
                method: str_field(obj, "method")?.to_owned(),
                path: str_field(obj, "path")?.to_owned(),
            }
        } else {
            Exchange::Tcp
        };
        let shadow_name = str_field(obj, "shadow_name")?.to_owned();
        let primary = parse_side(field(obj, "primary")?, "primary", http)?;
        let shadow_value = field(obj, "shadow")?;
        let shadow = parse_side(shadow_value, "shadow", http)?;
        let verdict_name = str_field(obj, "verdict")?;
        let kind = VerdictKind::from_name(verdict_name)
            .ok_or_else(|| LineError(format!("unknown verdict `{verdict_name}`")))?;
        let diff = obj.get("diff").filter(|v| !v.is_null());
        let excerpt = obj.get("excerpt").filter(|v| !v.is_null());
        let difference = |kind| parse_difference(kind, diff, excerpt);
        let verdict = match kind {
            VerdictKind::Same => Verdict::Same,
            VerdictKind::Status => Verdict::Differs(difference(DifferenceKind::Status)?),
            VerdictKind::Header => Verdict::Differs(difference(DifferenceKind::Header)?),
            VerdictKind::Body => Verdict::Differs(difference(DifferenceKind::Body)?),
            VerdictKind::Noise => {
                let of = str_field(obj, "noise_of")?;
                let of = DifferenceKind::from_name(of)
                    .ok_or_else(|| LineError(format!("unknown noise_of `{of}`")))?;
                Verdict::Noise(difference(of)?)
            }
            VerdictKind::ShadowError => {
                let code = diff
                    .and_then(|d| d.get("error"))
                    .or_else(|| shadow_value.get("error"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| LineError("shadow_error without an error code".into()))?;
                Verdict::ShadowFailed(ShadowFailure::from_code(code))
            }
        };
        Ok(CompareLine {
            time,
            session,
            exchange,
            shadow_name,
            verdict,
            primary,
            shadow,
        })
    }
}

/// Appends `text` as a JSON string literal (serde_json does the escaping).
pub(super) fn push_json_string(out: &mut String, text: &str) {
    // serde_json's escaping (`"`, `\\`, control bytes; short forms where JSON has them,
    // `\u00xx` otherwise), written in place rather than through a `Value` copy.
    out.push('"');
    let mut clean = 0;
    for (at, byte) in text.bytes().enumerate() {
        let short = match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'\n' => 'n',
            b'\r' => 'r',
            b'\t' => 't',
            0x08 => 'b',
            0x0c => 'f',
            0..=0x1f => 'u',
            _ => continue,
        };
        out.push_str(&text[clean..at]);
        clean = at + 1;
        out.push('\\');
        out.push(short);
        if short == 'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    out.push_str(&text[clean..]);
    out.push('"');
}

/// Appends a side's object, open: the caller adds fields and the `}`.
pub(super) fn push_side(out: &mut String, side: &SideSummary, http: bool) {
    out.push('{');
    if http {
        match side.status {
            Some(status) => {
                let _ = write!(out, "\"status\":{status},");
            }
            None => out.push_str("\"status\":null,"),
        }
    }
    out.push_str("\"ms\":");
    push_ms(out, side.elapsed.as_micros());
    let _ = write!(out, ",\"bytes\":{}", side.bytes);
}

/// `micros / 1000` as serde_json writes that `f64` (the shortest form that reads back the
/// same, `.0` for a whole number), from the integer: a whole number of microseconds
/// divided by 1000 is the double nearest its three-decimal form, so that form, trimmed,
/// is the shortest. Formatting the `f64` cost a tenth of a comparison.
pub(super) fn push_ms(out: &mut String, micros: u128) {
    if micros >= 1 << 50 {
        // Past 35 years; where the shortcut was not checked.
        let _ = write!(out, "{}", Value::from(micros as f64 / 1000.0));
        return;
    }
    let (whole, thousandths) = (micros / 1000, micros % 1000);
    let _ = write!(out, "{whole}.");
    if thousandths == 0 {
        out.push('0');
        return;
    }
    let digits = [thousandths / 100, thousandths / 10 % 10, thousandths % 10];
    let used = if digits[2] != 0 {
        3
    } else if digits[1] != 0 {
        2
    } else {
        1
    };
    out.extend(digits[..used].iter().map(|&d| char::from(b'0' + d as u8)));
}

pub(super) fn push_diff(out: &mut String, verdict: &Verdict) {
    match verdict {
        Verdict::Same => out.push_str("null"),
        Verdict::ShadowFailed(failure) => {
            out.push_str("{\"error\":");
            push_json_string(out, failure.code());
            out.push('}');
        }
        Verdict::Differs(d) | Verdict::Noise(d) => match d {
            Difference::Status { primary, shadow } => {
                let _ = write!(out, "{{\"status\":[{primary},{shadow}]}}");
            }
            Difference::Header {
                name,
                primary,
                shadow,
            } => {
                out.push_str("{\"header\":");
                push_json_string(out, name);
                for (key, value) in [("primary", primary), ("shadow", shadow)] {
                    let _ = write!(out, ",\"{key}\":");
                    match value {
                        Some(v) => push_json_string(out, v),
                        None => out.push_str("null"),
                    }
                }
                out.push('}');
            }
            Difference::Body(body) => {
                out.push_str("{\"offset\":");
                match body.offset {
                    Some(offset) => {
                        let _ = write!(out, "{offset}");
                    }
                    None => out.push_str("null"),
                }
                let _ = write!(
                    out,
                    ",\"primary_len\":{},\"shadow_len\":{},\"json_path\":",
                    body.primary_len, body.shadow_len
                );
                match &body.json_path {
                    Some(path) => push_json_string(out, path),
                    None => out.push_str("null"),
                }
                let _ = write!(out, ",\"hashed\":{}}}", body.is_hashed());
            }
        },
    }
}

pub(super) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, LineError> {
    obj.get(name)
        .ok_or_else(|| LineError(format!("no `{name}`")))
}

pub(super) fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, LineError> {
    field(obj, name)?
        .as_str()
        .ok_or_else(|| LineError(format!("`{name}` is not a string")))
}

pub(super) fn u64_field(obj: &Map<String, Value>, name: &str) -> Result<u64, LineError> {
    field(obj, name)?
        .as_u64()
        .ok_or_else(|| LineError(format!("`{name}` is not a count")))
}

pub(super) fn opt_str_field(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, LineError> {
    match field(obj, name)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(LineError(format!("`{name}` is neither a string nor null"))),
    }
}

pub(super) fn status_value(value: &Value, name: &str) -> Result<u16, LineError> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| LineError(format!("`{name}` is not a status code")))
}

pub(super) fn parse_side(value: &Value, name: &str, http: bool) -> Result<SideSummary, LineError> {
    let obj = value
        .as_object()
        .ok_or_else(|| LineError(format!("`{name}` is not an object")))?;
    let status = match obj.get("status") {
        Some(Value::Null) | None if !http => None,
        Some(Value::Null) => None,
        Some(v) => Some(status_value(v, "status")?),
        None => return Err(LineError(format!("`{name}` has no `status`"))),
    };
    let ms = field(obj, "ms")?
        .as_f64()
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .ok_or_else(|| LineError(format!("`{name}.ms` is not a duration")))?;
    Ok(SideSummary {
        status,
        elapsed: Duration::from_micros((ms * 1000.0).round() as u64),
        bytes: u64_field(obj, "bytes")?,
    })
}

pub(super) fn parse_difference(
    kind: DifferenceKind,
    diff: Option<&Value>,
    excerpt: Option<&Value>,
) -> Result<Difference, LineError> {
    let obj = diff
        .and_then(Value::as_object)
        .ok_or_else(|| LineError(format!("a {} verdict needs a `diff` object", kind.as_str())))?;
    match kind {
        DifferenceKind::Status => {
            let pair = field(obj, "status")?
                .as_array()
                .filter(|pair| pair.len() == 2)
                .ok_or_else(|| LineError("`diff.status` is not [primary, shadow]".into()))?;
            Ok(Difference::Status {
                primary: status_value(&pair[0], "diff.status")?,
                shadow: status_value(&pair[1], "diff.status")?,
            })
        }
        DifferenceKind::Header => Ok(Difference::Header {
            name: str_field(obj, "header")?.to_owned(),
            primary: opt_str_field(obj, "primary")?,
            shadow: opt_str_field(obj, "shadow")?,
        }),
        DifferenceKind::Body => {
            let offset = match field(obj, "offset")? {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .ok_or_else(|| LineError("`diff.offset` is not a count".into()))?,
                ),
            };
            let excerpt = match excerpt {
                Some(v) => {
                    let e = v
                        .as_object()
                        .ok_or_else(|| LineError("`excerpt` is not an object".into()))?;
                    Some(Excerpt {
                        primary: str_field(e, "primary")?.to_owned(),
                        shadow: str_field(e, "shadow")?.to_owned(),
                    })
                }
                None => None,
            };
            Ok(Difference::Body(BodyDifference {
                offset,
                primary_len: u64_field(obj, "primary_len")?,
                shadow_len: u64_field(obj, "shadow_len")?,
                json_path: opt_str_field(obj, "json_path")?,
                excerpt,
            }))
        }
    }
}
