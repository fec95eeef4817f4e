//! [`Rules`]: what a comparison ignores and how much body it keeps, and
//! [`Rules::classify`], which turns (primary, shadow, reference) into a [`Verdict`].

use super::*;

/// What a comparison ignores and how much body it keeps: the `--compare-*` flags.
#[derive(Debug, Clone)]
pub struct Rules {
    max_body: usize,
    ignored_headers: IgnoredHeaders,
    ignored_json: Vec<JsonPattern>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            max_body: DEFAULT_MAX_BODY,
            ignored_headers: DEFAULT_IGNORED_HEADERS.iter().fold(
                IgnoredHeaders::default(),
                |mut set, name| {
                    set.insert(name);
                    set
                },
            ),
            ignored_json: Vec::new(),
        }
    }
}

impl Rules {
    /// The defaults: 1 MiB of body kept, [`DEFAULT_IGNORED_HEADERS`] ignored, no JSON path
    /// ignored.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Keeps the first `bytes` of each body (`--compare-max-body`) for JSON comparison and
    /// excerpts; longer bodies are compared past it by hash and length.
    pub fn max_body(mut self, bytes: usize) -> Rules {
        self.max_body = bytes;
        self
    }

    /// Also ignores header `name`, in any case (`--compare-ignore-header`).
    pub fn ignore_header(mut self, name: &str) -> Rules {
        self.ignored_headers
            .insert(&name.trim().to_ascii_lowercase());
        self
    }

    /// Stops ignoring the [`DEFAULT_IGNORED_HEADERS`] (and any added so far).
    pub fn clear_ignored_headers(mut self) -> Rules {
        self.ignored_headers.clear();
        self
    }

    /// Also ignores the JSON value at `path` and everything under it
    /// (`--compare-ignore-json`): `$.a.b[2]`, `[*]` for any array index, `["odd key"]`
    /// for a key that is not letters, digits, `_` and `-`.
    pub fn ignore_json(mut self, path: &str) -> Result<Rules, JsonPathError> {
        self.ignored_json.push(JsonPattern::parse(path)?);
        Ok(self)
    }

    /// How many body bytes a digest made by [`Rules::digest`] keeps.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// Whether header `name` (any case) is left out of comparisons.
    pub fn ignores_header(&self, name: &str) -> bool {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.ignored_headers.contains(&name.to_ascii_lowercase())
        } else {
            self.ignored_headers.contains(name)
        }
    }

    /// A new digest of a response with `status` that keeps [`Rules::body_limit`] bytes.
    pub fn digest(&self, status: u16) -> ResponseDigest {
        ResponseDigest::new(status, self.max_body)
    }

    /// Classifies what the shadow answered against what the primary answered.
    ///
    /// `shadow` is the shadow's digest, or why it has none. With a `reference` (a second
    /// copy of production that answered the same request), differences that also show
    /// between primary and reference are [`Verdict::Noise`]; with `None`, only the rules
    /// cancel noise.
    pub fn classify(
        &self,
        primary: &ResponseDigest,
        shadow: Result<&ResponseDigest, &ShadowFailure>,
        reference: Option<&ResponseDigest>,
    ) -> Verdict {
        let shadow = match shadow {
            Ok(digest) => digest,
            Err(failure) => return Verdict::ShadowFailed(failure.clone()),
        };
        let mut noise = None;

        if primary.status != shadow.status {
            let difference = Difference::Status {
                primary: primary.status,
                shadow: shadow.status,
            };
            if reference.is_some_and(|r| r.status != primary.status) {
                noise.get_or_insert(difference);
            } else {
                return Verdict::Differs(difference);
            }
        }

        let primary_headers = self.grouped_headers(primary);
        let shadow_headers = self.grouped_headers(shadow);
        let reference_headers = OnceCell::new();
        for (name, p, s) in header_differences(&primary_headers, &shadow_headers) {
            let noisy = reference.is_some_and(|r| {
                let r_headers = reference_headers.get_or_init(|| self.grouped_headers(r));
                p != group_value(r_headers, name)
            });
            let difference = Difference::Header {
                name: name.to_owned(),
                primary: p.map(shown_header_value),
                shadow: s.map(shown_header_value),
            };
            if noisy {
                noise.get_or_insert(difference);
            } else {
                return Verdict::Differs(difference);
            }
        }

        match self.body_difference(primary, shadow, reference) {
            BodyOutcome::Same => {}
            BodyOutcome::Differs(body) => return Verdict::Differs(Difference::Body(body)),
            BodyOutcome::Noise(body) => {
                noise.get_or_insert(Difference::Body(body));
            }
        }
        noise.map_or(Verdict::Same, Verdict::Noise)
    }

    /// The compared headers of `digest`: each name once, in first-seen order, repeated
    /// values joined with `, `.
    pub(super) fn grouped_headers<'d>(&self, digest: &'d ResponseDigest) -> Vec<Group<'d>> {
        let mut groups: Vec<Group<'d>> = Vec::with_capacity(digest.header_count());
        for (name, value) in digest.headers() {
            if self.ignored_headers.contains(name) {
                continue;
            }
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, joined)) => {
                    let joined = joined.to_mut();
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value);
                }
                // Borrowed: only a repeated header needs a value of its own.
                None => groups.push((name, Cow::Borrowed(value))),
            }
        }
        groups
    }

    pub(super) fn body_difference(
        &self,
        primary: &ResponseDigest,
        shadow: &ResponseDigest,
        reference: Option<&ResponseDigest>,
    ) -> BodyOutcome {
        let raw = raw_difference(primary, shadow);
        if raw == RawDiff::Equal {
            return BodyOutcome::Same;
        }
        let primary_json = JsonBody::new(primary);
        let shadow_json = JsonBody::new(shadow);
        let noise = reference.map(|r| self.body_noise(&primary_json, r));

        let (Some(p), Some(s)) = (primary_json.value(), shadow_json.value()) else {
            let body = BodyDifference::raw(primary, shadow, raw, None);
            return match noise {
                Some(BodyNoise::Raw) => BodyOutcome::Noise(body),
                _ => BodyOutcome::Differs(body),
            };
        };

        let mut real = None;
        let mut noisy = None;
        walk_json(p, s, &mut Vec::new(), &self.ignored_json, &mut |path| {
            let is_noise = match &noise {
                None | Some(BodyNoise::None) => false,
                Some(BodyNoise::Raw | BodyNoise::JsonEverywhere) => true,
                Some(BodyNoise::JsonPaths(paths)) => covered_by(paths, path),
            };
            if is_noise {
                noisy.get_or_insert_with(|| render_path(path));
                Flow::Continue
            } else {
                real = Some(render_path(path));
                Flow::Stop
            }
        });
        match (real, noisy) {
            (Some(path), _) => {
                BodyOutcome::Differs(BodyDifference::raw(primary, shadow, raw, Some(path)))
            }
            (None, Some(path)) => {
                BodyOutcome::Noise(BodyDifference::raw(primary, shadow, raw, Some(path)))
            }
            // Different bytes, same JSON: key order, whitespace, ignored paths.
            (None, None) => BodyOutcome::Same,
        }
    }

    /// Where the primary's body differs from the reference's.
    pub(super) fn body_noise(
        &self,
        primary: &JsonBody<'_>,
        reference: &ResponseDigest,
    ) -> BodyNoise {
        if raw_difference(primary.digest, reference) == RawDiff::Equal {
            return BodyNoise::None;
        }
        let reference_json = JsonBody::new(reference);
        let (Some(p), Some(r)) = (primary.value(), reference_json.value()) else {
            return BodyNoise::Raw;
        };
        let mut paths = HashSet::new();
        let mut everywhere = false;
        walk_json(p, r, &mut Vec::new(), &self.ignored_json, &mut |path| {
            if paths.len() == MAX_NOISE_PATHS {
                everywhere = true;
                return Flow::Stop;
            }
            paths.insert(render_path(path));
            Flow::Continue
        });
        if everywhere {
            BodyNoise::JsonEverywhere
        } else if paths.is_empty() {
            BodyNoise::None
        } else {
            BodyNoise::JsonPaths(paths)
        }
    }
}

/// Lower-cased header names, ordered by length first: a lookup (one per header of every
/// compared response) compares lengths and reads the bytes of a name only when they
/// match, where a `BTreeSet<String>` compared bytes at every step.
#[derive(Debug, Clone, Default)]
struct IgnoredHeaders(Vec<String>);

impl IgnoredHeaders {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|n| (n.len(), n.as_str()).cmp(&(name.len(), name)))
    }

    fn insert(&mut self, name: &str) {
        if let Err(at) = self.position(name) {
            self.0.insert(at, name.to_owned());
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Each compared header that differs: name, primary's value, shadow's value (`None`:
/// absent on that side). Primary's order first, then names only the shadow sent.
pub(super) fn header_differences<'a, 'd>(
    primary: &'a [Group<'d>],
    shadow: &'a [Group<'d>],
) -> impl Iterator<Item = (&'d str, Option<&'a [u8]>, Option<&'a [u8]>)> {
    let from_primary = primary.iter().filter_map(move |(name, p)| {
        let s = group_value(shadow, name);
        (s != Some(&**p)).then_some((*name, Some(&**p), s))
    });
    let only_shadow = shadow
        .iter()
        .filter(move |(name, _)| group_value(primary, name).is_none())
        .map(|(name, s)| (*name, None, Some(&**s)));
    from_primary.chain(only_shadow)
}

/// A compared header: its name, and its values joined (borrowed from the digest when it
/// came once).
pub(super) type Group<'d> = (&'d str, Cow<'d, [u8]>);

pub(super) fn group_value<'a>(groups: &'a [Group<'_>], name: &str) -> Option<&'a [u8]> {
    groups.iter().find(|(n, _)| *n == name).map(|(_, v)| &**v)
}

/// A header value as the log shows it: lossy UTF-8, cut at [`HEADER_VALUE_SHOWN`] bytes.
pub(super) fn shown_header_value(value: &[u8]) -> String {
    let cut = value.len().min(HEADER_VALUE_SHOWN);
    let mut text = String::from_utf8_lossy(&value[..cut]).into_owned();
    if cut < value.len() {
        text.push('…');
    }
    text
}

// ---------------------------------------------------------------------------------------
// Bodies

/// How two bodies compare as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RawDiff {
    Equal,
    /// They first differ at this offset (one may end there).
    At(u64),
    /// The kept bytes agree; past them, hash or length differ.
    Hashed,
}

pub(super) fn raw_difference(a: &ResponseDigest, b: &ResponseDigest) -> RawDiff {
    let common = a.kept.len().min(b.kept.len());
    if let Some(i) = first_mismatch(&a.kept[..common], &b.kept[..common]) {
        return RawDiff::At(i as u64);
    }
    let shorter = a.body_len.min(b.body_len);
    if common as u64 == shorter {
        // The shorter body was kept whole and is a prefix of the other.
        return if a.body_len == b.body_len {
            RawDiff::Equal
        } else {
            RawDiff::At(shorter)
        };
    }
    if a.body_len == b.body_len && a.body_hash() == b.body_hash() {
        RawDiff::Equal
    } else {
        RawDiff::Hashed
    }
}

/// The first index where `a` and `b` differ, over their common length.
pub(super) fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    // Whole blocks compare with memcmp; only the block that differs is walked.
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        if a[start..end] != b[start..end] {
            return a[start..end]
                .iter()
                .zip(&b[start..end])
                .position(|(x, y)| x != y)
                .map(|i| start + i);
        }
        start = end;
    }
    None
}

/// The bytes around `offset` of each kept body.
pub(super) fn excerpt_at(primary: &[u8], shadow: &[u8], offset: u64) -> Excerpt {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .saturating_sub(EXCERPT_BEFORE);
    let window = |kept: &[u8]| {
        let from = start.min(kept.len());
        let to = start.saturating_add(EXCERPT_LEN).min(kept.len());
        String::from_utf8_lossy(&kept[from..to]).into_owned()
    };
    Excerpt {
        primary: window(primary),
        shadow: window(shadow),
    }
}

/// A body's JSON value, parsed at most once and only when the body is JSON and kept whole.
pub(super) struct JsonBody<'d> {
    digest: &'d ResponseDigest,
    value: OnceCell<Option<Value>>,
}

impl<'d> JsonBody<'d> {
    pub(super) fn new(digest: &'d ResponseDigest) -> JsonBody<'d> {
        JsonBody {
            digest,
            value: OnceCell::new(),
        }
    }

    pub(super) fn value(&self) -> Option<&Value> {
        self.value
            .get_or_init(|| {
                let d = self.digest;
                let declared = d
                    .header("content-type")
                    .is_some_and(|v| v.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")));
                let looks = matches!(
                    d.kept.iter().find(|b| !b.is_ascii_whitespace()),
                    Some(b'{' | b'[')
                );
                // serde_json stops at 128 levels of nesting, so neither parsing nor the
                // recursive walk can exhaust the stack.
                (!d.is_body_truncated() && (declared || looks))
                    .then(|| serde_json::from_slice::<Value>(&d.kept).ok())
                    .flatten()
            })
            .as_ref()
    }
}

/// Where primary and reference bodies differ: what counts as noise in the shadow's body.
pub(super) enum BodyNoise {
    None,
    /// Compared as bytes, and they differ: any byte difference of the shadow is noise.
    Raw,
    /// Compared as JSON; these paths (and what is under them) differ.
    JsonPaths(HashSet<String>),
    /// Compared as JSON, and they differ in more than [`MAX_NOISE_PATHS`] places.
    JsonEverywhere,
}

pub(super) enum BodyOutcome {
    Same,
    Differs(BodyDifference),
    Noise(BodyDifference),
}

/// Whether `path`, or a value it is under, is among the noisy paths.
pub(super) fn covered_by(noise: &HashSet<String>, path: &[Step<'_>]) -> bool {
    let mut text = String::from("$");
    if noise.contains(&text) {
        return true;
    }
    for &step in path {
        push_step(&mut text, step);
        if noise.contains(&text) {
            return true;
        }
    }
    false
}

pub(super) enum Flow {
    Continue,
    Stop,
}

/// Walks two JSON values in a fixed order (object keys sorted, arrays by index) and calls
/// `found` with the path of each difference not under an ignored pattern: a value that
/// differs, a key on one side only, the first index one array has and the other lacks.
pub(super) fn walk_json<'v>(
    a: &'v Value,
    b: &'v Value,
    path: &mut Vec<Step<'v>>,
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    if ignored.iter().any(|p| p.matches(path)) {
        return Flow::Continue;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => walk_objects(x, y, path, ignored, found),
        (Value::Array(x), Value::Array(y)) => {
            for (i, (xv, yv)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                let flow = walk_json(xv, yv, path, ignored, found);
                path.pop();
                if let Flow::Stop = flow {
                    return Flow::Stop;
                }
            }
            if x.len() == y.len() {
                return Flow::Continue;
            }
            path.push(Step::Index(x.len().min(y.len())));
            let flow = report_unless_ignored(path, ignored, found);
            path.pop();
            flow
        }
        (Value::Number(x), Value::Number(y)) if numbers_equal(x, y) => Flow::Continue,
        _ if a == b => Flow::Continue,
        _ => found(path),
    }
}

pub(super) fn walk_objects<'v>(
    x: &'v Map<String, Value>,
    y: &'v Map<String, Value>,
    path: &mut Vec<Step<'v>>,
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    let mut keys: Vec<&'v str> = x.keys().chain(y.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        path.push(Step::Key(key));
        let flow = match (x.get(key), y.get(key)) {
            (Some(xv), Some(yv)) => walk_json(xv, yv, path, ignored, found),
            _ => report_unless_ignored(path, ignored, found),
        };
        path.pop();
        if let Flow::Stop = flow {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

pub(super) fn report_unless_ignored<'v>(
    path: &[Step<'v>],
    ignored: &[JsonPattern],
    found: &mut dyn FnMut(&[Step<'v>]) -> Flow,
) -> Flow {
    if ignored.iter().any(|p| p.matches(path)) {
        Flow::Continue
    } else {
        found(path)
    }
}

/// Numbers equal as numbers: integers exactly, anything with a fraction or exponent as f64
/// (`1` equals `1.0`, but two large integers that round to the same f64 do not).
pub(super) fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    (a.is_f64() || b.is_f64()) && a.as_f64() == b.as_f64()
}
