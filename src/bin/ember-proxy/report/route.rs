//! Routes: a request's method and path with the parts that name one thing among many
//! collapsed, so `/users/42` and `/users/43` count as one route `/users/{id}`.
//!
//! A segment of digits becomes `{id}`, a UUID `{uuid}`, a run of 8 or more hex digits with
//! a digit among them `{hex}` (so `deadbeef`, a word, stays); the query string and fragment
//! are dropped. Everything else is kept as it is, cut to [`MAX_ROUTE_CHARS`].

use super::format::bounded;

/// The longest route kept; longer ones are cut (a path is the client's to choose).
pub const MAX_ROUTE_CHARS: usize = 160;

/// `GET /users/{id}` for `GET /users/42?x=1`.
pub fn route_of(method: &str, path: &str) -> String {
    let method = bounded(method, 16);
    bounded(&format!("{method} {}", collapse(path)), MAX_ROUTE_CHARS)
}

/// `/users/{id}/orders/{hex}` for `/users/42/orders/9f1c0a3b5d7e9f11?page=2`.
pub fn collapse(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // An absolute-form target (`http://host/users/42`) keeps only its path.
    let path = ["http://", "https://"]
        .iter()
        .find_map(|scheme| path.strip_prefix(scheme))
        .map_or(path, |rest| rest.find('/').map_or("/", |at| &rest[at..]));
    if path.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len().min(MAX_ROUTE_CHARS * 4));
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(segment).unwrap_or(segment));
        if out.len() > MAX_ROUTE_CHARS * 4 {
            break;
        }
    }
    out
}

/// What a segment that names one item among many is replaced with; `None` to keep it.
fn placeholder(segment: &str) -> Option<&'static str> {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        None
    } else if bytes.iter().all(u8::is_ascii_digit) {
        Some("{id}")
    } else if is_uuid(bytes) {
        Some("{uuid}")
    } else if bytes.len() >= 8
        && bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes.iter().any(u8::is_ascii_digit)
    {
        Some("{hex}")
    } else {
        None
    }
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_route_collapses_ids_uuids_and_hex_and_drops_the_query() {
        assert_eq!(
            collapse("/users/42/orders/9f1c0a3b5d7e9f11"),
            "/users/{id}/orders/{hex}"
        );
        assert_eq!(collapse("/users/42?x=1"), "/users/{id}");
        assert_eq!(
            collapse("/orders/123e4567-E89B-12d3-a456-426614174000/items#top"),
            "/orders/{uuid}/items"
        );
        assert_eq!(collapse("/blobs/5f2b9c1e0a7d4e3f5f2b9c1e"), "/blobs/{hex}");
        assert_eq!(route_of("GET", "/users/42?x=1"), "GET /users/{id}");
    }

    #[test]
    fn report_route_keeps_words_and_short_hex() {
        assert_eq!(
            collapse("/static/deadbeef/app.js"),
            "/static/deadbeef/app.js"
        );
        assert_eq!(collapse("/v2/cafe1"), "/v2/cafe1");
        assert_eq!(collapse("/users/"), "/users/");
        assert_eq!(collapse(""), "/");
        assert_eq!(collapse("?only=query"), "/");
        assert_eq!(collapse("http://example.com/users/7"), "/users/{id}");
        assert_eq!(collapse("http://example.com"), "/");
    }

    #[test]
    fn report_route_is_bounded_however_long_the_path() {
        let path = format!("/{}", "a/".repeat(100_000));
        assert!(route_of("GET", &path).chars().count() <= MAX_ROUTE_CHARS);
        let method = "M".repeat(1000);
        assert!(route_of(&method, "/").chars().count() <= MAX_ROUTE_CHARS);
    }
}
