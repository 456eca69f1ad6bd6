//! Who may ask for what. Deny by default: a client identity without an entry gets nothing,
//! and an entry grants only the profiles, trust domains, SPIFFE paths, DNS suffixes, lifetime
//! and request rate it lists. Every denial names the rule that refused it.

mod rate;

use std::collections::HashMap;

use serde::Deserialize;

pub use rate::RateLimiter;

use crate::duration::Seconds;
use crate::pki::{RequestedNames, SpiffeId};

/// One `[[clients]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicy {
    /// A name for logs and audit records.
    pub name: String,
    /// The client's identity as `server.client_identity` extracts it from its TLS
    /// certificate: a SPIFFE ID, a DNS name, a subject CN or a SHA-256 fingerprint.
    pub identity: String,
    /// Profiles this client may use.
    pub profiles: Vec<String>,
    /// Trust domains it may request SPIFFE IDs in (`example.org`).
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// For workload certificates: the SPIFFE ID paths it may request, by whole segments
    /// (`/ns/prod` allows `/ns/prod` and `/ns/prod/sa/web`, not `/ns/production`). Empty
    /// allows any path in its trust domains.
    #[serde(default)]
    pub spiffe_path_prefixes: Vec<String>,
    /// DNS SANs it may request: each must equal a suffix without its leading dot or end with
    /// the suffix (`.svc.cluster.local`). Empty allows none.
    #[serde(default)]
    pub dns_suffixes: Vec<String>,
    /// The longest lifetime it may request, whatever the profile allows.
    pub max_ttl: Seconds,
    /// Sustained requests per minute (default 600).
    #[serde(default = "ClientPolicy::default_rate")]
    pub requests_per_minute: u32,
    /// Requests allowed in a burst above the sustained rate (default 100).
    #[serde(default = "ClientPolicy::default_burst")]
    pub burst: u32,
    /// The audiences it may get JWT-SVIDs for (`POST /v1/jwt`), for SPIFFE IDs in its
    /// `trust_domains` under its `spiffe_path_prefixes`. Empty (the default): no JWT-SVIDs.
    #[serde(default)]
    pub jwt_audiences: Vec<String>,
    /// The longest lifetime of a JWT-SVID it may ask for (default 5 min).
    #[serde(default = "ClientPolicy::default_jwt_max_ttl")]
    pub jwt_max_ttl: Seconds,
}

impl ClientPolicy {
    fn default_rate() -> u32 {
        600
    }

    fn default_burst() -> u32 {
        100
    }

    fn default_jwt_max_ttl() -> Seconds {
        Seconds(300)
    }
}

/// One `[[officers]]` entry: a security officer who may revoke, bound to a client identity.
/// Officers are a role apart from CA clients: an officer entry grants no profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Officer {
    /// The officer's name, for audit records.
    pub name: String,
    /// The identity of the officer's client certificate, as `server.client_identity` reads it.
    pub identity: String,
}

/// A refusal by policy: the rule (`client.profiles`, `client.trust_domains`, ...) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy rule {rule}: {message}")]
pub struct Denial {
    /// The rule that refused, named after its config key.
    pub rule: &'static str,
    /// What was asked and what the rule allows.
    pub message: String,
}

fn deny(rule: &'static str, message: impl Into<String>) -> Denial {
    Denial {
        rule,
        message: message.into(),
    }
}

/// The policy of every configured client and officer, looked up by identity.
#[derive(Debug)]
pub struct Policy {
    clients: HashMap<String, ClientPolicy>,
    officers: HashMap<String, Officer>,
}

impl Policy {
    /// Builds the policy, refusing duplicate identities and rules that can never match.
    pub fn new(
        clients: &[ClientPolicy],
        known_profile: impl Fn(&str) -> bool,
    ) -> Result<Self, String> {
        let mut map = HashMap::new();
        for client in clients {
            for profile in &client.profiles {
                if !known_profile(profile) {
                    return Err(format!(
                        "client {}: profile {profile:?} is not defined in [profiles]",
                        client.name
                    ));
                }
            }
            for td in &client.trust_domains {
                crate::pki::SpiffeId::parse(&format!("spiffe://{td}"))
                    .ok()
                    .filter(|id| id.is_trust_domain_id())
                    .ok_or_else(|| {
                        format!(
                            "client {}: trust domain {td:?} is not a valid SPIFFE trust domain",
                            client.name
                        )
                    })?;
            }
            for prefix in &client.spiffe_path_prefixes {
                if !prefix.starts_with('/') || prefix.ends_with('/') {
                    return Err(format!(
                        "client {}: spiffe_path_prefixes entry {prefix:?} must start with '/' and not end with one",
                        client.name
                    ));
                }
            }
            if client.jwt_audiences.iter().any(|a| a.is_empty()) {
                return Err(format!(
                    "client {}: jwt_audiences has an empty entry",
                    client.name
                ));
            }
            if client.requests_per_minute == 0 {
                return Err(format!(
                    "client {}: requests_per_minute must be above zero",
                    client.name
                ));
            }
            if map
                .insert(client.identity.clone(), client.clone())
                .is_some()
            {
                return Err(format!(
                    "client identity {:?} is listed twice in [[clients]]",
                    client.identity
                ));
            }
        }
        Ok(Policy {
            clients: map,
            officers: HashMap::new(),
        })
    }

    /// Adds the officers, refusing an identity listed twice.
    pub fn with_officers(mut self, officers: &[Officer]) -> Result<Self, String> {
        for officer in officers {
            if self
                .officers
                .insert(officer.identity.clone(), officer.clone())
                .is_some()
            {
                return Err(format!(
                    "officer identity {:?} is listed twice in [[officers]]",
                    officer.identity
                ));
            }
        }
        Ok(self)
    }

    /// The officer with `identity`, or the denial everyone else gets.
    pub fn officer(&self, identity: &str) -> Result<&Officer, Denial> {
        self.officers.get(identity).ok_or_else(|| {
            deny(
                "officers",
                format!("identity {identity:?} is not an officer; only [[officers]] may revoke"),
            )
        })
    }

    /// The entry for `identity`, or the denial every unknown client gets.
    pub fn client(&self, identity: &str) -> Result<&ClientPolicy, Denial> {
        self.clients.get(identity).ok_or_else(|| {
            deny(
                "clients",
                format!("client identity {identity:?} has no [[clients]] entry"),
            )
        })
    }

    /// All entries.
    pub fn clients(&self) -> impl Iterator<Item = &ClientPolicy> {
        self.clients.values()
    }
}

impl ClientPolicy {
    /// May this client use `profile`?
    pub fn allow_profile(&self, profile: &str) -> Result<(), Denial> {
        if self.profiles.iter().any(|p| p == profile) {
            Ok(())
        } else {
            Err(deny(
                "client.profiles",
                format!(
                    "client {} may not use profile {profile:?}; it may use {}",
                    self.name,
                    list(&self.profiles)
                ),
            ))
        }
    }

    /// May this client have these names for this lifetime?
    pub fn allow_request(&self, names: &RequestedNames, ttl: Seconds) -> Result<(), Denial> {
        if ttl > self.max_ttl {
            return Err(deny(
                "client.max_ttl",
                format!(
                    "the ttl {ttl} is over client {}'s max_ttl {}",
                    self.name, self.max_ttl
                ),
            ));
        }
        if let Some(id) = &names.spiffe_id {
            self.allow_spiffe_id(id)?;
        }
        for name in &names.dns_names {
            let allowed = self.dns_suffixes.iter().any(|suffix| {
                name.eq_ignore_ascii_case(suffix.trim_start_matches('.'))
                    || (suffix.starts_with('.')
                        && name.len() > suffix.len()
                        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
            });
            if !allowed {
                return Err(deny(
                    "client.dns_suffixes",
                    format!(
                        "client {} may not request the DNS name {name:?}; it may request names under {}",
                        self.name,
                        list(&self.dns_suffixes)
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ClientPolicy {
    /// May this client have `id`: its trust domain listed, and (when the ID has a path and
    /// the client lists prefixes) its path under one of the prefixes, by whole segments.
    pub fn allow_spiffe_id(&self, id: &SpiffeId) -> Result<(), Denial> {
        if !self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            return Err(deny(
                "client.trust_domains",
                format!(
                    "client {} may not request trust domain {:?}; it may request {}",
                    self.name,
                    id.trust_domain(),
                    list(&self.trust_domains)
                ),
            ));
        }
        let path = id.path();
        if !path.is_empty()
            && !self.spiffe_path_prefixes.is_empty()
            && !self.spiffe_path_prefixes.iter().any(|prefix| {
                path == prefix
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        {
            return Err(deny(
                "client.spiffe_path_prefixes",
                format!(
                    "client {} may not request the path {path:?}; it may request paths under {}",
                    self.name,
                    list(&self.spiffe_path_prefixes)
                ),
            ));
        }
        Ok(())
    }

    /// May this client get a JWT-SVID for `id`, for every one of `audiences`, living `ttl`?
    /// The rules, in order: `client.jwt_audiences` (none listed: no JWT-SVIDs at all),
    /// `client.jwt_max_ttl`, then the SPIFFE ID's as for certificates.
    pub fn allow_jwt(
        &self,
        id: &SpiffeId,
        audiences: &[String],
        ttl: Seconds,
    ) -> Result<(), Denial> {
        if self.jwt_audiences.is_empty() {
            return Err(deny(
                "client.jwt_audiences",
                format!(
                    "client {} may not get JWT-SVIDs (it lists no jwt_audiences)",
                    self.name
                ),
            ));
        }
        if let Some(audience) = audiences.iter().find(|a| !self.jwt_audiences.contains(a)) {
            return Err(deny(
                "client.jwt_audiences",
                format!(
                    "client {} may not get JWT-SVIDs for audience {audience:?}; it may for {}",
                    self.name,
                    list(&self.jwt_audiences)
                ),
            ));
        }
        if ttl > self.jwt_max_ttl {
            return Err(deny(
                "client.jwt_max_ttl",
                format!(
                    "the ttl {ttl} is over client {}'s jwt_max_ttl {}",
                    self.name, self.jwt_max_ttl
                ),
            ));
        }
        self.allow_spiffe_id(id)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientPolicy {
        toml::from_str(
            r#"
            name = "spire"
            identity = "spiffe://mesh.example/spire"
            profiles = ["issuing-ca", "workload"]
            trust_domains = ["prod.example"]
            spiffe_path_prefixes = ["/ns/prod"]
            dns_suffixes = [".svc.cluster.local"]
            max_ttl = "48h"
            "#,
        )
        .unwrap()
    }

    fn names(id: &str, dns: &[&str]) -> RequestedNames {
        RequestedNames {
            subject: Default::default(),
            spiffe_id: Some(SpiffeId::parse(id).unwrap()),
            dns_names: dns.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn rule(result: Result<(), Denial>) -> &'static str {
        result.unwrap_err().rule
    }

    #[test]
    fn each_rule_refuses_by_name_and_allows_what_it_lists() {
        let c = client();
        let day = Seconds(86_400);
        c.allow_profile("workload").unwrap();
        assert_eq!(rule(c.allow_profile("admin")), "client.profiles");
        c.allow_request(&names("spiffe://prod.example", &[]), day)
            .unwrap();
        c.allow_request(
            &names(
                "spiffe://prod.example/ns/prod/sa/web",
                &["web.svc.cluster.local"],
            ),
            day,
        )
        .unwrap();
        assert_eq!(
            rule(c.allow_request(&names("spiffe://prod.example", &[]), Seconds(3 * 86_400))),
            "client.max_ttl"
        );
        assert_eq!(
            rule(c.allow_request(&names("spiffe://other.example", &[]), day)),
            "client.trust_domains"
        );
        assert_eq!(
            rule(c.allow_request(&names("spiffe://prod.example/ns/production", &[]), day)),
            "client.spiffe_path_prefixes"
        );
        assert_eq!(
            rule(c.allow_request(
                &names("spiffe://prod.example/ns/prod", &["evil.example.com"]),
                day
            )),
            "client.dns_suffixes"
        );
    }

    #[test]
    fn jwt_rules_refuse_by_name() {
        let mut c = client();
        let id = SpiffeId::parse("spiffe://prod.example/ns/prod/sa/web").unwrap();
        let five_minutes = Seconds(300);
        let payments = vec!["payments".to_string()];
        assert_eq!(
            rule(c.allow_jwt(&id, &payments, five_minutes)),
            "client.jwt_audiences"
        );
        c.jwt_audiences = payments.clone();
        c.allow_jwt(&id, &payments, five_minutes).unwrap();
        assert_eq!(
            rule(c.allow_jwt(&id, &["billing".to_string()], five_minutes)),
            "client.jwt_audiences"
        );
        assert_eq!(
            rule(c.allow_jwt(&id, &payments, Seconds(301))),
            "client.jwt_max_ttl"
        );
        let outside = SpiffeId::parse("spiffe://prod.example/ns/production/sa/web").unwrap();
        assert_eq!(
            rule(c.allow_jwt(&outside, &payments, five_minutes)),
            "client.spiffe_path_prefixes"
        );
        let other = SpiffeId::parse("spiffe://other.example/ns/prod").unwrap();
        assert_eq!(
            rule(c.allow_jwt(&other, &payments, five_minutes)),
            "client.trust_domains"
        );
    }

    #[test]
    fn unknown_clients_and_bad_entries_are_refused() {
        let policy = Policy::new(&[client()], |p| p == "issuing-ca" || p == "workload").unwrap();
        assert_eq!(policy.client("spiffe://x/y").unwrap_err().rule, "clients");
        assert!(Policy::new(&[client()], |p| p == "workload").is_err());
        assert!(Policy::new(&[client(), client()], |_| true).is_err());
        let mut bad = client();
        bad.trust_domains = vec!["Prod.Example".into()];
        assert!(Policy::new(&[bad], |_| true).is_err());
    }
}
