//! Turning what a user typed into a `SocketAddr` without ever touching DNS.
//!
//! The reactor thread must not block, so listen and connect addresses are numeric
//! (`"127.0.0.1:8081"`, `"[::1]:0"`). Host names go through [`Reactor::connect_host`],
//! which resolves on the defer pool.
//!
//! [`Reactor::connect_host`]: crate::Reactor::connect_host

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Something that names a numeric socket address.
pub trait IntoSocketAddr {
    /// Parses or converts into a `SocketAddr`; never resolves a host name.
    fn into_socket_addr(self) -> io::Result<SocketAddr>;
}

impl IntoSocketAddr for SocketAddr {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        Ok(self)
    }
}

impl IntoSocketAddr for &str {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        self.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "`{self}` is not a numeric IP:PORT address (resolve host names with connect_host)"
                ),
            )
        })
    }
}

impl IntoSocketAddr for &String {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        self.as_str().into_socket_addr()
    }
}

impl IntoSocketAddr for String {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        self.as_str().into_socket_addr()
    }
}

impl IntoSocketAddr for (IpAddr, u16) {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(self))
    }
}

impl IntoSocketAddr for (Ipv4Addr, u16) {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(self))
    }
}

impl IntoSocketAddr for (Ipv6Addr, u16) {
    fn into_socket_addr(self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(self))
    }
}

#[cfg(test)]
mod tests {
    use super::IntoSocketAddr;

    #[test]
    fn numeric_addresses_parse_and_names_are_refused_without_lookup() {
        assert_eq!(
            "127.0.0.1:80".into_socket_addr().unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!("[::1]:0".into_socket_addr().unwrap().port(), 0);
        let err = "localhost:80".into_socket_addr().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("localhost:80"));
    }
}
