//! The `[storage]` section: where the ledger and the audit chain are kept. Either SQLite and
//! an audit log file (`ledger`, `audit_log`: the embedded default, one replica), or
//! PostgreSQL (`postgres` and its settings: several replicas, one chain).

use std::path::PathBuf;

use serde::Deserialize;

use super::postgres::{PostgresConfig, PostgresTls};

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The SQLite ledger of issued certificates (created 0600 if absent).
    pub ledger: Option<PathBuf>,
    /// The hash-chained audit log beside the SQLite ledger (created 0600 if absent; may be
    /// the ceremonies' log).
    pub audit_log: Option<PathBuf>,
    /// PostgreSQL instead: `postgresql://USER@HOST:PORT/DATABASE`, see [`PostgresConfig`].
    pub postgres: Option<String>,
    /// PostgreSQL: a file holding the password, mode 0600.
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: or an environment variable holding it.
    pub password_env: Option<String>,
    /// PostgreSQL: `verify-full` (default) or `disable`.
    #[serde(default)]
    pub sslmode: PostgresTls,
    /// PostgreSQL: the CA of the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: connections per replica (default 8).
    pub pool_size: Option<usize>,
}

/// Which backend `[storage]` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    /// SQLite and the audit log file.
    Sqlite {
        /// The ledger database.
        ledger: PathBuf,
        /// The audit log.
        audit_log: PathBuf,
    },
    /// PostgreSQL, shared by the replicas.
    Postgres(PostgresConfig),
}

impl StorageBackend {
    /// The same backend with its file paths (ledger, audit log, password file, CA file)
    /// passed through `resolve`, e.g. made relative to the config file's directory.
    pub fn resolved(self, resolve: impl Fn(&std::path::Path) -> PathBuf) -> Self {
        match self {
            StorageBackend::Sqlite { ledger, audit_log } => StorageBackend::Sqlite {
                ledger: resolve(&ledger),
                audit_log: resolve(&audit_log),
            },
            StorageBackend::Postgres(mut postgres) => {
                postgres.password_file = postgres.password_file.map(|p| resolve(&p));
                postgres.ca_file = postgres.ca_file.map(|p| resolve(&p));
                StorageBackend::Postgres(postgres)
            }
        }
    }
}

impl StorageConfig {
    /// The backend, or what is wrong with the section. Relative paths are as written; the
    /// caller resolves them against the config file's directory.
    pub fn backend(&self) -> Result<StorageBackend, String> {
        let postgres_only = [
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("sslmode", self.sslmode != PostgresTls::default()),
        ];
        match (&self.postgres, &self.ledger, &self.audit_log) {
            (Some(url), None, None) => Ok(StorageBackend::Postgres(PostgresConfig {
                postgres: url.clone(),
                password_file: self.password_file.clone(),
                password_env: self.password_env.clone(),
                sslmode: self.sslmode,
                ca_file: self.ca_file.clone(),
                pool_size: self.pool_size.unwrap_or(PostgresConfig::DEFAULT_POOL_SIZE),
            })),
            (None, Some(ledger), Some(audit_log)) => {
                if let Some((name, _)) = postgres_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "[storage] {name} applies to postgres only; the SQLite ledger takes ledger and audit_log"
                    ));
                }
                Ok(StorageBackend::Sqlite {
                    ledger: ledger.clone(),
                    audit_log: audit_log.clone(),
                })
            }
            (Some(_), _, _) => Err(
                "[storage] takes either postgres (several replicas; the audit chain is in the database) or ledger and audit_log (SQLite), not both"
                    .into(),
            ),
            (None, _, _) => Err(
                "[storage] needs ledger and audit_log (SQLite, the embedded default), or postgres = \"postgresql://USER@HOST:PORT/DATABASE\""
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(text: &str) -> Result<StorageBackend, String> {
        toml::from_str::<StorageConfig>(text).unwrap().backend()
    }

    #[test]
    fn either_sqlite_or_postgres() {
        assert_eq!(
            backend("ledger = \"l.sqlite\"\naudit_log = \"a.log\"\n").unwrap(),
            StorageBackend::Sqlite {
                ledger: "l.sqlite".into(),
                audit_log: "a.log".into()
            }
        );
        let StorageBackend::Postgres(postgres) = backend(
            "postgres = \"postgresql://hsmca@db/hsmca\"\npassword_file = \"pw\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap() else {
            panic!("postgres")
        };
        assert_eq!(postgres.pool_size, 8);
        for (text, why) in [
            ("ledger = \"l.sqlite\"\n", "needs ledger and audit_log"),
            (
                "ledger = \"l\"\naudit_log = \"a\"\npostgres = \"postgresql://h@db/h\"\n",
                "not both",
            ),
            (
                "ledger = \"l\"\naudit_log = \"a\"\npassword_file = \"pw\"\n",
                "password_file applies to postgres only",
            ),
        ] {
            let error = backend(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
