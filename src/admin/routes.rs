//! Which closure answers which path ([`Routes`]), and the answers the server gives on its
//! own: 404 for a path no route has, 405 for a method other than `GET` and `HEAD`.
//!
//! A route is a closure run on the reactor thread, in the middle of a tick: it must be
//! quick and must not block (no file or network I/O, no locks another thread holds for
//! long). It gets the request and returns the whole response.

use std::collections::BTreeMap;
use std::fmt;

use super::message::{Request, Response};

type Route = Box<dyn Fn(&Request) -> Response>;

/// Paths and the closures that answer `GET` (and `HEAD`) on them.
///
/// ```
/// use ember::admin::{Response, Routes};
///
/// let routes = Routes::new()
///     .get("/healthz", |_| Response::text(200, "ok\n"))
///     .get("/echo", |req| Response::text(200, req.query().unwrap_or("").to_owned()));
/// assert_eq!(routes.paths().collect::<Vec<_>>(), ["/echo", "/healthz"]);
/// ```
#[derive(Default)]
pub struct Routes {
    by_path: BTreeMap<String, Route>,
}

impl Routes {
    /// No routes: every path is 404.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Answers `GET path` with `route`, and `HEAD path` with the same headers and no
    /// body. `path` is matched exactly against the request's path; the query string is
    /// not part of it (see [`Request::query`]).
    ///
    /// # Panics
    /// If `path` does not start with `/`, has a `?`, or already has a route: routes are
    /// set up once, by the program.
    pub fn get(
        mut self,
        path: impl Into<String>,
        route: impl Fn(&Request) -> Response + 'static,
    ) -> Routes {
        let path = path.into();
        assert!(
            path.starts_with('/') && !path.contains('?'),
            "a route's path starts with / and has no query: {path:?}"
        );
        assert!(!self.by_path.contains_key(&path), "two routes for {path:?}");
        self.by_path.insert(path, Box::new(route));
        self
    }

    /// The routed paths, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.by_path.keys().map(String::as_str)
    }

    /// The response to `request`: its route's, or the server's own 404 or 405.
    pub(crate) fn answer(&self, request: &Request) -> Response {
        let Some(route) = self.by_path.get(request.path()) else {
            return Response::text(404, "not found\n");
        };
        if !matches!(request.method(), "GET" | "HEAD") {
            return Response::text(405, "method not allowed: use GET or HEAD\n")
                .with_header("Allow", "GET, HEAD");
        }
        route(request)
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.paths()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            minor_version: 1,
            headers: Vec::new(),
            peer: None,
        }
    }

    fn routes() -> Routes {
        Routes::new().get("/status", |r| Response::text(200, r.method().to_owned()))
    }

    #[test]
    fn get_and_head_reach_the_route() {
        assert_eq!(routes().answer(&request("GET", "/status")).body, b"GET");
        assert_eq!(routes().answer(&request("HEAD", "/status")).body, b"HEAD");
    }

    #[test]
    fn an_unknown_path_is_404_whatever_the_method() {
        assert_eq!(routes().answer(&request("GET", "/statu")).status, 404);
        assert_eq!(routes().answer(&request("POST", "/nope")).status, 404);
        assert_eq!(routes().answer(&request("GET", "/status/")).status, 404);
    }

    #[test]
    fn another_method_on_a_routed_path_is_405_with_allow() {
        let answer = routes().answer(&request("DELETE", "/status"));
        assert_eq!(answer.status, 405);
        assert_eq!(answer.headers, [("Allow".into(), "GET, HEAD".into())]);
        // Methods are case-sensitive.
        assert_eq!(routes().answer(&request("get", "/status")).status, 405);
    }

    #[test]
    #[should_panic(expected = "two routes")]
    fn a_path_cannot_have_two_routes() {
        let _ = routes().get("/status", |_| Response::text(200, ""));
    }

    #[test]
    #[should_panic(expected = "starts with /")]
    fn a_route_path_cannot_hold_a_query() {
        let _ = Routes::new().get("/a?b", |_| Response::text(200, ""));
    }
}
