//! Which network addresses PulseStream may send a tenant's webhooks to.
//!
//! A tenant chooses its webhook URL, so without a check a tenant could make PulseStream call
//! services inside the network it runs in (metadata endpoints, databases, admin consoles).
//! [`is_public`] is the one classification: the API applies it when a destination is
//! created, and the webhook client applies it again to every address it connects to, because
//! a name that resolved to a public address at creation may resolve elsewhere later (DNS
//! rebinding). It only classifies; resolving names is the callers' I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Returns whether `address` is reachable on the public internet, that is neither loopback,
/// private (RFC 1918, IPv6 unique local), link-local, carrier-grade NAT, unspecified,
/// multicast, broadcast, documentation, benchmarking nor reserved. IPv6 addresses that embed
/// an IPv4 address (mapped, compatible, NAT64) are judged by that IPv4 address.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || a == 100 && (64..128).contains(&b) // carrier-grade NAT
        || a == 192 && b == 0 && c == 0 // IETF protocol assignments
        || a == 198 && (18..20).contains(&b) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = v6.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., high, low] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    }
    let first = segments[0];
    !(v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || segments[..6] == [0; 6] // IPv4-compatible (deprecated) and other ::/96
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && segments[1] == 0x0db8)) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_and_reserved_addresses_are_not_public() {
        for address in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn internet_addresses_are_public() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(address.parse().unwrap()), "{address}");
        }
    }
}
