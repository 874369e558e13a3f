//! `[[sources]]`: the AE titles, and optionally the hosts, allowed to send to the node.

use std::net::{IpAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use super::checks::ae_title_problem;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub ae_title: String,
    /// IP address or host name; absent = any address.
    pub host: Option<String>,
}

impl Source {
    /// The problems of the `n`th entry (from 1, as the messages count).
    pub fn problems(&self, n: usize) -> Vec<String> {
        let mut p = Vec::new();
        let what = format!("[[sources]] #{n} ae_title");
        if let Some(m) = ae_title_problem(&what, &self.ae_title) {
            p.push(m);
        }
        if let Some(h) = &self.host {
            if resolve_host(h).is_err() {
                p.push(format!(
                    "[[sources]] #{n} host: {h:?} is not an IP address or a resolvable host name"
                ));
            }
        }
        p
    }
}

/// The list's problems: an empty list, then each entry's.
pub(super) fn problems(sources: &[Source]) -> Vec<String> {
    let mut p = Vec::new();
    if sources.is_empty() {
        p.push("[[sources]]: none configured (every association would be rejected)".into());
    }
    for (i, s) in sources.iter().enumerate() {
        p.extend(s.problems(i + 1));
    }
    p
}

#[derive(Debug, Clone)]
pub struct ResolvedSource {
    pub ae_title: String,
    /// `None` = any address.
    pub addrs: Option<Vec<IpAddr>>,
}

/// Sources with host names resolved to addresses (resolution failures are dropped:
/// the config was validated, and a name that stopped resolving must not open access).
pub(super) fn resolve(sources: &[Source]) -> Vec<ResolvedSource> {
    sources
        .iter()
        .map(|s| ResolvedSource {
            ae_title: s.ae_title.clone(),
            addrs: s.host.as_ref().map(|h| resolve_host(h).unwrap_or_default()),
        })
        .collect()
}

pub fn resolve_host(h: &str) -> Result<Vec<IpAddr>, std::io::Error> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> = (h, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        ));
    }
    Ok(addrs)
}

/// Treat ::ffff:a.b.c.d like a.b.c.d so an IPv4 allowlist works on a dual-stack socket.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ae_title: &str, host: Option<&str>) -> Source {
        Source {
            ae_title: ae_title.into(),
            host: host.map(Into::into),
        }
    }

    #[test]
    fn good_sources_pass() {
        let list = [source("PACS", Some("127.0.0.1")), source("MODALITY", None)];
        assert_eq!(problems(&list), Vec::<String>::new());
    }

    #[test]
    fn each_bad_entry_is_named_by_its_number() {
        // A name with a space fails in the resolver without asking DNS.
        let list = [source("PACS", Some("bad host")), source("", Some("::1"))];
        assert_eq!(
            problems(&list),
            vec![
                "[[sources]] #1 host: \"bad host\" is not an IP address or a resolvable host name",
                "[[sources]] #2 ae_title: AE title is empty",
            ]
        );
        assert_eq!(
            problems(&[]),
            vec!["[[sources]]: none configured (every association would be rejected)"]
        );
    }

    #[test]
    fn resolution_keeps_any_address_and_drops_failures() {
        let r = resolve(&[
            source("ANY", None),
            source("IP", Some("10.0.0.1")),
            source("GONE", Some("bad host")),
        ]);
        assert_eq!(r[0].addrs, None);
        assert_eq!(r[1].addrs, Some(vec!["10.0.0.1".parse().unwrap()]));
        assert_eq!(
            r[2].addrs,
            Some(vec![]),
            "a name that stopped resolving admits no one"
        );
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(canonical_ip("::ffff:192.0.2.1".parse().unwrap()), v4);
        assert_eq!(canonical_ip(v4), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}
