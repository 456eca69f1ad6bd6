//! Vault tokens: 256 random bits, kept only as SHA-256 hashes, bound to the client identity
//! that obtained them, with a TTL, renewal and a maximum age. Tokens from logins are kept in
//! the ledger, so that any replica accepts them and they outlive a restart; configured
//! (static) tokens are compared in memory, in constant time. The count of bad tokens per
//! identity is kept per replica.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ledger::Store;
use crate::ledger::certificates::{LedgerError, StoredToken};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SecureRandom;
use base64ct::{Base64UrlUnpadded, Encoding};

use crate::duration::Seconds;

/// Why a token is not accepted. The client only ever sees "permission denied".
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token was sent.
    Missing,
    /// Not a token hsmca issued or was configured with.
    Unknown,
    /// The ledger, which keeps the tokens, could not be asked.
    Unavailable(String),
    /// Past its expiry.
    Expired,
    /// Sent on a connection of another client.
    WrongClient,
    /// This client identity presented too many bad tokens lately; no token is checked for it
    /// until the wait is over, so guessing gains nothing.
    TooManyFailures {
        /// How long until tokens are checked again.
        retry_after: Duration,
    },
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn from_unix_seconds(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
}

/// Now, to the second: the precision the ledger keeps.
fn now_to_the_second() -> SystemTime {
    from_unix_seconds(unix_seconds(SystemTime::now()))
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Missing => "no Vault token was sent",
            TokenRefusal::Unknown => "the Vault token is unknown",
            TokenRefusal::Unavailable(_) => "the Vault token cannot be checked now",
            TokenRefusal::Expired => "the Vault token has expired",
            TokenRefusal::WrongClient => {
                "the Vault token belongs to another client identity than this connection's"
            }
            TokenRefusal::TooManyFailures { .. } => {
                "too many bad Vault tokens from this client identity in the last minute"
            }
        })
    }
}

/// What a valid token says.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// The identity it is bound to.
    pub identity: String,
    /// A non-secret handle for logs and `lookup-self` (`accessor` in Vault).
    pub accessor: String,
    /// When it was made.
    pub issued: SystemTime,
    /// When it expires; `None` for configured (static) tokens.
    pub expires: Option<SystemTime>,
}

struct Entry {
    hash: [u8; 32],
    info: TokenInfo,
}

/// The live tokens.
pub struct TokenStore {
    /// The configured tokens.
    statics: Vec<Entry>,
    /// Where logins' tokens are kept.
    ledger: Store,
    ttl: Seconds,
    max_ttl: Seconds,
    /// Bad tokens per client identity in the current window.
    failures: Mutex<HashMap<String, FailureWindow>>,
}

/// Bad tokens a client identity presented since `since`.
struct FailureWindow {
    since: Instant,
    count: u32,
}

/// Bad tokens (unknown, expired or another client's) one client identity may present per
/// [`FAILURE_WINDOW`] before its token checks are refused outright. Real clients present a bad
/// token after a restart of the appliance (tokens live in memory) and log in again: a few.
pub const MAX_TOKEN_FAILURES: u32 = 10;

/// The window [`MAX_TOKEN_FAILURES`] counts in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

fn sha256(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn random_text(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut random)
        .expect("the system RNG works");
    Base64UrlUnpadded::encode_string(&random)
}

/// A random request id in UUID form, as Vault's `request_id`.
pub fn request_id() -> String {
    let mut random = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut random)
        .expect("the system RNG works");
    let hex = hex::encode(random);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl TokenStore {
    /// A store with `ttl` per login and `max_ttl` across renewals, holding the configured
    /// static tokens (hex SHA-256 and identity).
    pub fn new(
        ttl: Seconds,
        max_ttl: Seconds,
        statics: &[(String, String)],
        ledger: Store,
    ) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (sha256_hex, identity) in statics {
            let hash: [u8; 32] = hex::decode(sha256_hex)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    format!("vault.static_tokens: {sha256_hex:?} is not a hex SHA-256")
                })?;
            entries.push(Entry {
                hash,
                info: TokenInfo {
                    identity: identity.clone(),
                    accessor: hex::encode(&hash[..8]),
                    issued: SystemTime::now(),
                    expires: None,
                },
            });
        }
        Ok(TokenStore {
            statics: entries,
            ledger,
            ttl,
            max_ttl,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// A new token for `identity`, and what it says, once the ledger keeps it. The token
    /// itself is returned once and never stored.
    pub async fn issue(&self, identity: &str) -> Result<(String, TokenInfo), LedgerError> {
        let token = format!("hvs.{}", random_text(32));
        let now = now_to_the_second();
        let info = TokenInfo {
            identity: identity.to_owned(),
            accessor: random_text(12),
            issued: now,
            expires: Some(now + self.ttl.duration()),
        };
        let stored = StoredToken {
            sha256: hex::encode(sha256(&token)),
            identity: info.identity.clone(),
            accessor: info.accessor.clone(),
            issued_at: unix_seconds(now),
            expires_at: unix_seconds(now + self.ttl.duration()),
        };
        self.ledger.save_token(stored, unix_seconds(now)).await?;
        Ok((token, info))
    }

    /// Checks `token` on a connection with `identity`. An identity that presented
    /// [`MAX_TOKEN_FAILURES`] bad tokens within a minute is refused without a check until the
    /// minute is over.
    pub async fn check(
        &self,
        token: Option<&str>,
        identity: &str,
    ) -> Result<TokenInfo, TokenRefusal> {
        if let Some(window) = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(identity)
            && window.count >= MAX_TOKEN_FAILURES
            && let Some(retry_after) =
                (window.since + FAILURE_WINDOW).checked_duration_since(Instant::now())
        {
            return Err(TokenRefusal::TooManyFailures { retry_after });
        }
        let result = self.check_token(token, identity).await;
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(
            result,
            Err(TokenRefusal::Unknown | TokenRefusal::Expired | TokenRefusal::WrongClient)
        ) {
            // Windows that are over are dropped here, so the map holds only recent offenders.
            failures.retain(|_, window| now.duration_since(window.since) < FAILURE_WINDOW);
            let window = failures
                .entry(identity.to_owned())
                .or_insert(FailureWindow {
                    since: now,
                    count: 0,
                });
            window.count += 1;
        }
        result
    }

    async fn check_token(
        &self,
        token: Option<&str>,
        identity: &str,
    ) -> Result<TokenInfo, TokenRefusal> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(TokenRefusal::Missing)?;
        let hash = sha256(token);
        // Every configured token is compared, in constant time, so timing says nothing about
        // which; a login's token is looked up by its hash, which says nothing of the token.
        let mut found = None;
        for entry in &self.statics {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&entry.hash, &hash).is_ok() {
                found = Some(entry.info.clone());
            }
        }
        let info = match found {
            Some(info) => info,
            None => self
                .ledger
                .find_token(hex::encode(hash))
                .await
                .map_err(|e| TokenRefusal::Unavailable(e.to_string()))?
                .map(|stored| TokenInfo {
                    identity: stored.identity,
                    accessor: stored.accessor,
                    issued: from_unix_seconds(stored.issued_at),
                    expires: Some(from_unix_seconds(stored.expires_at)),
                })
                .ok_or(TokenRefusal::Unknown)?,
        };
        if info.expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(TokenRefusal::Expired);
        }
        if info.identity != identity {
            return Err(TokenRefusal::WrongClient);
        }
        Ok(info)
    }

    /// Extends `token` by `increment` (default: the login TTL), never past `max_ttl` from
    /// its issue. Static tokens do not expire and are returned unchanged.
    pub async fn renew(
        &self,
        token: &str,
        identity: &str,
        increment: Option<Seconds>,
    ) -> Result<TokenInfo, TokenRefusal> {
        let mut info = self.check(Some(token), identity).await?;
        if info.expires.is_some() {
            let wanted = now_to_the_second() + increment.unwrap_or(self.ttl).duration();
            let expires = wanted.min(info.issued + self.max_ttl.duration());
            self.ledger
                .renew_token(hex::encode(sha256(token)), unix_seconds(expires))
                .await
                .map_err(|e| TokenRefusal::Unavailable(e.to_string()))?;
            info.expires = Some(expires);
        }
        Ok(info)
    }

    /// Seconds left on a token (`0` for static tokens, as Vault shows root-like tokens).
    pub fn remaining(info: &TokenInfo) -> u64 {
        info.expires
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::certificates::Ledger;

    /// A token store keeping its tokens in a fresh SQLite ledger.
    fn store(
        ttl: u64,
        max_ttl: u64,
        statics: &[(String, String)],
    ) -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Store::new(Box::new(
            Ledger::open(&dir.path().join("ledger.sqlite")).unwrap(),
        ));
        let tokens = TokenStore::new(Seconds(ttl), Seconds(max_ttl), statics, ledger).unwrap();
        (dir, tokens)
    }

    #[tokio::test]
    async fn an_identity_guessing_tokens_is_refused_outright_after_the_limit() {
        let (_dir, store) = store(60, 90, &[]);
        let (token, _) = store.issue("spiffe://td/spire").await.unwrap();
        for _ in 0..MAX_TOKEN_FAILURES {
            assert_eq!(
                store
                    .check(Some("hvs.guess"), "spiffe://td/guesser")
                    .await
                    .unwrap_err(),
                TokenRefusal::Unknown
            );
        }
        // Missing tokens are not guesses and do not count.
        assert_eq!(
            store.check(None, "spiffe://td/spire").await.unwrap_err(),
            TokenRefusal::Missing
        );
        match store.check(Some(&token), "spiffe://td/guesser").await {
            Err(TokenRefusal::TooManyFailures { retry_after }) => {
                assert!(retry_after <= FAILURE_WINDOW && retry_after > Duration::ZERO)
            }
            other => panic!("{other:?}"),
        }
        // Other identities are not affected.
        assert!(store.check(Some(&token), "spiffe://td/spire").await.is_ok());
    }

    #[tokio::test]
    async fn tokens_are_bound_to_their_identity_and_expire() {
        let (_dir, store) = store(60, 90, &[]);
        let (token, info) = store.issue("spiffe://td/spire").await.unwrap();
        assert!(token.starts_with("hvs.") && token.len() > 40);
        assert!(store.check(Some(&token), "spiffe://td/spire").await.is_ok());
        assert_eq!(
            store
                .check(Some(&token), "spiffe://td/other")
                .await
                .unwrap_err(),
            TokenRefusal::WrongClient
        );
        assert_eq!(
            store.check(Some("hvs.nope"), "x").await.unwrap_err(),
            TokenRefusal::Unknown
        );
        assert_eq!(
            store.check(None, "x").await.unwrap_err(),
            TokenRefusal::Missing
        );
        // Renewal is capped by max_ttl from issue, and kept.
        let renewed = store
            .renew(&token, "spiffe://td/spire", Some(Seconds(3600)))
            .await
            .unwrap();
        let age = |info: &TokenInfo| info.expires.unwrap().duration_since(info.issued).unwrap();
        assert_eq!(age(&renewed).as_secs(), 90);
        let checked = store
            .check(Some(&token), "spiffe://td/spire")
            .await
            .unwrap();
        assert_eq!((checked.issued, age(&checked).as_secs()), (info.issued, 90));
        let (_dir, expired) = store_with_zero_ttl();
        let (token, _) = expired.issue("a").await.unwrap();
        assert_eq!(
            expired.check(Some(&token), "a").await.unwrap_err(),
            TokenRefusal::Expired
        );
    }

    fn store_with_zero_ttl() -> (tempfile::TempDir, TokenStore) {
        store(0, 0, &[])
    }

    #[tokio::test]
    async fn the_ledger_keeps_only_the_hash_and_the_token_outlives_the_store() {
        let (dir, tokens) = store(60, 90, &[]);
        let (token, _) = tokens.issue("spiffe://td/spire").await.unwrap();
        drop(tokens);
        // Neither the database nor its write-ahead log holds the token; they hold its hash.
        let secret = token.strip_prefix("hvs.").unwrap().as_bytes();
        let hash = hex::encode(sha256(&token));
        let mut files = String::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
            files.push_str(&String::from_utf8_lossy(&bytes));
        }
        assert!(files.contains(&hash), "the hash is not stored");
        // Another store on the same ledger (a restart, another replica) accepts it.
        let ledger = Store::new(Box::new(
            Ledger::open(&dir.path().join("ledger.sqlite")).unwrap(),
        ));
        let again = TokenStore::new(Seconds(60), Seconds(90), &[], ledger).unwrap();
        assert!(again.check(Some(&token), "spiffe://td/spire").await.is_ok());
    }

    #[tokio::test]
    async fn static_tokens_are_kept_as_hashes() {
        let hash = hex::encode(sha256("s3cret"));
        let (_dir, store) = store(60, 60, &[(hash, "cm".into())]);
        assert!(store.check(Some("s3cret"), "cm").await.is_ok());
        let (dir, _) = store_with_zero_ttl();
        let ledger = Store::new(Box::new(
            Ledger::open(&dir.path().join("other.sqlite")).unwrap(),
        ));
        assert!(
            TokenStore::new(Seconds(1), Seconds(1), &[("zz".into(), "x".into())], ledger).is_err()
        );
    }
}
