//! The PostgreSQL store's connection and schema against a real server (Debian's
//! `postgresql`, started per test by `common::postgres`): TLS verify-full, the password from
//! a private file, migrations applied once in one transaction even when replicas start
//! together, and a clear refusal for each way the connection can be wrong.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::appliance::runtime;
use common::postgres::{PASSWORD, Postgres};
use hsmca::ledger::postgres::{PostgresConfig, PostgresError, schema_version};

fn settings(server: &Postgres, dir: &std::path::Path, extra: &str) -> PostgresConfig {
    toml::from_str(&format!(
        "postgres = \"{}\"\npassword_file = \"{}\"\n{extra}",
        server.url(),
        server.password_file(dir).display()
    ))
    .unwrap()
}

fn verify_full(server: &Postgres) -> String {
    format!("ca_file = \"{}\"\n", server.ca_file().display())
}

#[test]
fn replicas_starting_together_migrate_the_schema_once_over_verified_tls() {
    let server = Postgres::start(true);
    let dir = tempfile::tempdir().unwrap();
    let config = settings(&server, dir.path(), &verify_full(&server));
    let rt = runtime();
    // Three replicas at once: the advisory lock lets one migrate, the others find it done.
    let pools =
        rt.block_on(async { futures::future::join_all((0..3).map(|_| config.connect())).await });
    for pool in pools {
        let pool = pool.unwrap();
        let client = rt.block_on(pool.get()).unwrap();
        let row = rt
            .block_on(client.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            ))
            .unwrap();
        assert!(row.get::<_, bool>(0), "the connection is not TLS");
    }
    assert_eq!(
        server.psql("SELECT string_agg(version::text, ',') FROM hsmca_schema"),
        schema_version().to_string()
    );
    for table in [
        "certificates",
        "revocations",
        "crls",
        "bundles",
        "audit_records",
        "audit_head",
        "vault_tokens",
    ] {
        assert_eq!(
            server.psql(&format!("SELECT count(*) >= 0 FROM {table}")),
            "t"
        );
    }
    // A restart migrates nothing more.
    rt.block_on(config.connect()).unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM hsmca_schema"), "1");
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_with_a_clear_line() {
    let server = Postgres::start(false);
    let dir = tempfile::tempdir().unwrap();
    let config = settings(&server, dir.path(), "sslmode = \"disable\"\n");
    let rt = runtime();
    rt.block_on(config.connect()).unwrap();
    let newer = schema_version() + 1;
    server.psql(&format!(
        "INSERT INTO hsmca_schema (version, what) VALUES ({newer}, 'from the future')"
    ));
    let error = rt.block_on(config.connect()).unwrap_err();
    assert!(
        matches!(error, PostgresError::SchemaTooNew { found, .. } if found == newer),
        "{error}"
    );
    let line = error.to_string();
    assert!(
        line.contains(&format!(
            "schema is at version {newer}, newer than this hsmca knows"
        )),
        "{line}"
    );
}

#[test]
fn wrong_credentials_tls_and_a_stopped_server_are_refused_without_leaking_the_password() {
    let server = Postgres::start(true);
    let other = Postgres::start(true); // its CA did not issue `server`'s certificate
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let no_secret = |error: &PostgresError| {
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        shown
    };

    // A group-readable password file is refused before it is read.
    let config = settings(&server, dir.path(), &verify_full(&server));
    let password_file = config.password_file.clone().unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = rt.block_on(config.connect()).unwrap_err();
    assert!(no_secret(&error).contains("chmod 600"), "{error}");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A wrong password.
    std::fs::write(&password_file, "not the password\n").unwrap();
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(!shown.contains("not the password"), "{shown}");

    // A server whose certificate the configured CA did not issue.
    let config = settings(&server, dir.path(), &verify_full(&other));
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");

    // The server stopped: a prompt, clear refusal naming where it looked.
    let config = settings(&server, dir.path(), &verify_full(&server));
    rt.block_on(config.connect()).unwrap();
    server.pg_ctl("stop");
    let started = std::time::Instant::now();
    let error = rt.block_on(config.connect()).unwrap_err();
    let shown = no_secret(&error);
    assert!(
        matches!(error, PostgresError::Unavailable { .. }),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("127.0.0.1:{}/hsmca", server.port)),
        "{shown}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // And it is back once the server is.
    server.pg_ctl("start");
    rt.block_on(config.connect()).unwrap();
}
