//! The client's real address. `X-Forwarded-For` is believed only from configured proxies
//! (`http.trusted_proxies`): anyone else could write any address there and slip past per-IP
//! limits. From a trusted proxy, the client is the right-most address in the chain that is not
//! itself a trusted proxy.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub std::sync::Arc<[IpNet]>);

impl TrustedProxies {
    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client behind `peer` (the address the connection came from).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        let chain: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        chain
            .iter()
            .rev()
            .find(|ip| !self.trusts(ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ]
            .into(),
        );
        let none = TrustedProxies::default();
        let spoof = headers(&["1.2.3.4"]);
        assert_eq!(none.client(ip("203.0.113.9"), &spoof), ip("203.0.113.9"));
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &spoof),
            ip("203.0.113.9"),
            "untrusted peer"
        );
        assert_eq!(trusted.client(ip("10.0.0.5"), &spoof), ip("1.2.3.4"));
        // The client forged an entry before the proxies appended the real one.
        let chain = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &chain), ip("198.51.100.7"));
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &headers(&["garbage"])),
            ip("10.0.0.5")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &headers(&["10.1.1.1"])),
            ip("10.1.1.1")
        );
    }
}
