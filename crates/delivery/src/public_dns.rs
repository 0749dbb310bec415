//! The webhook client's guard against server-side request forgery at send time.
//!
//! Destinations are checked when they are created, but the name in a webhook URL can resolve
//! elsewhere later (DNS rebinding, an expired domain bought by someone else). So unless the
//! server allows private destinations, the webhook client resolves names through
//! [`PublicOnlyResolver`], which drops every address `is_public` refuses and fails when none
//! is left; the connection is then made only to addresses that passed the check, so there is
//! no gap between checking and connecting. reqwest does not resolve IP-literal hosts, so the
//! sink checks those itself with [`refused_literal`].

use std::net::{IpAddr, SocketAddr};

use pulsestream_core::address::is_public;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a webhook host was not connected to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AddressRefused {
    #[error(
        "the receiver's host resolves only to loopback, private or link-local addresses; they are refused unless the server runs with PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true"
    )]
    NoPublicAddress,
    #[error(
        "the receiver's address is loopback, private or link-local; it is refused unless the server runs with PULSESTREAM_ALLOW_PRIVATE_DESTINATIONS=true"
    )]
    PrivateLiteral,
}

/// Resolves with the system resolver (through tokio) and keeps only public addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is replaced by the connector; 0 only satisfies the lookup's signature.
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| is_public(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(AddressRefused::NoPublicAddress) as _);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Returns why `url` must not be sent to when its host is an IP literal that is not public.
pub fn refused_literal(url: &reqwest::Url) -> Option<AddressRefused> {
    let address = match url.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    (!is_public(address)).then_some(AddressRefused::PrivateLiteral)
}

/// Returns the refusal behind a failed request, if the guard caused it.
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ip_literals_are_refused_and_names_are_left_to_the_resolver() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest",
            "http://[::ffff:10.0.0.1]/x",
        ] {
            assert!(
                refused_literal(&url.parse().unwrap()).is_some(),
                "{url} is refused"
            );
        }
        for url in ["http://93.184.216.34/hook", "https://localhost/hook"] {
            assert!(refused_literal(&url.parse().unwrap()).is_none(), "{url}");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_only_to_loopback_are_refused() {
        let name: Name = "localhost".parse().unwrap();
        let Err(err) = PublicOnlyResolver.resolve(name).await else {
            panic!("localhost resolved to a public address");
        };
        assert!(matches!(
            refusal_in(err.as_ref()),
            Some(AddressRefused::NoPublicAddress)
        ));
    }
}
