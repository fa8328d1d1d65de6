//! Where a webhook may go: `http` or `https` URLs only, and (unless `webhooks.allow_private`)
//! never to a loopback, private, link-local or otherwise non-public address. A name is checked
//! again after it is resolved, by the sender, so DNS cannot lead a delivery somewhere refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed, allowed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub https: bool,
    /// The host as written: a name to resolve, or an address (already checked).
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a URL: {0}")]
    Unparsable(String),
    #[error("must be an http or https URL")]
    Scheme,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("needs a host")]
    NoHost,
    #[error(
        "{0} is a private, loopback or otherwise non-public address (set webhooks.allow_private \
         to allow it)"
    )]
    Private(IpAddr),
}

impl Target {
    pub fn parse(raw: &str, allow_private: bool) -> Result<Self, TargetError> {
        let url =
            url::Url::parse(raw.trim()).map_err(|e| TargetError::Unparsable(e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(TargetError::Scheme),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let (host, ip) = match url.host() {
            None => return Err(TargetError::NoHost),
            Some(url::Host::Domain(name)) => (name.to_owned(), None),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
        };
        if let Some(ip) = ip {
            check_address(ip, allow_private)?;
        }
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            url: url.to_string(),
            https,
            host,
            ip,
            port,
            path,
        })
    }
}

/// Whether a delivery may connect to `ip`.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(TargetError::Private(ip))
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // Reserved for future use, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // Documentation 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_to_public_addresses_by_default() {
        let t = Target::parse("https://hooks.example.com/in?x=1", false).unwrap();
        assert!(t.https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("hooks.example.com", 443, "/in?x=1")
        );
        assert!(Target::parse("http://93.184.216.34:8080", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "example.com",
            "http://u:p@example.com/",
        ] {
            assert!(Target::parse(bad, false).is_err(), "{bad}");
        }
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.5/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(
                matches!(Target::parse(private, false), Err(TargetError::Private(_))),
                "{private}"
            );
            assert!(
                Target::parse(private, true).is_ok(),
                "{private} when allowed"
            );
        }
    }
}
