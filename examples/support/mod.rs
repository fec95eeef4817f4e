//! What the em-proxy examples share, so each example file holds only its proxy: numeric
//! addresses from the arguments (one clear line and exit 2 on a typo), and the
//! `User-Agent` rewrite that em-proxy's duplex and selective_forward examples both do.

// Every example compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

/// The `i`-th argument as `IP:PORT`, or `default`. `usage` starts with the example's
/// name, which prefixes the error line.
pub fn addr_arg(args: &[String], i: usize, default: &str, usage: &str) -> SocketAddr {
    let text = args.get(i).map_or(default, String::as_str);
    text.parse().unwrap_or_else(|_| {
        let name = usage.split_whitespace().next().unwrap_or("example");
        eprintln!("{name}: `{text}` is not IP:PORT (usage: {usage})");
        std::process::exit(2);
    })
}

/// Replaces the value of every `User-Agent` header with `ember-proxy/0.1`.
pub fn rewrite_user_agent(data: &[u8]) -> Vec<u8> {
    const HEADER: &[u8] = b"\r\nuser-agent:";
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest
        .windows(HEADER.len())
        .position(|w| w.eq_ignore_ascii_case(HEADER))
    {
        out.extend_from_slice(&rest[..at + 2]);
        let line = &rest[at + 2..];
        match line.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                out.extend_from_slice(b"User-Agent: ember-proxy/0.1");
                rest = &line[end..];
            }
            None => {
                // The header continues in the next chunk: leave it as it is.
                out.extend_from_slice(line);
                rest = &[];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}
