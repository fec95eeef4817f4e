//! The command-line plumbing the em-proxy examples share, so each example file holds
//! only its proxy: numeric addresses from the arguments, with one clear line and exit 2
//! on a typo.

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
