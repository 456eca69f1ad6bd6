//! A real PostgreSQL server for a test: Debian's `postgresql` binaries, a fresh data directory
//! owned by the `postgres` user (initdb refuses root), listening on a loopback port of its own
//! and a private unix socket directory, with password (SCRAM) authentication over TCP for the
//! `hsmca` role and optional TLS. Stopped and removed when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where Debian's PostgreSQL 15 keeps `initdb`, `pg_ctl` and `postgres` (not on PATH).
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The role and database hsmca uses in the tests.
pub const ROLE: &str = "hsmca";
/// The test role's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(program));
    command
}

fn must(output: std::io::Result<Output>, what: &str) -> Output {
    let output = output.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Postgres {
    /// initdb, a `hsmca` role with [`PASSWORD`] owning database `hsmca`, and the server
    /// started; with `tls`, it also serves TLS with a certificate for `localhost` and
    /// `127.0.0.1` issued by a throwaway CA ([`Postgres::ca_file`]).
    pub fn start(tls: bool) -> Postgres {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL is not installed: tests/run.sh installs the Debian package postgresql"
        );
        let dir = tempfile::Builder::new()
            .prefix("hsmca-pg")
            .tempdir()
            .unwrap();
        // The postgres user must reach and own its directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Postgres { dir, port };
        for sub in ["data", "socket"] {
            std::fs::create_dir(server.path(sub)).unwrap();
            must(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(server.path(sub))
                    .output(),
                "chown",
            );
        }
        must(
            as_postgres("initdb")
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .args(["--username=postgres", "--encoding=UTF8", "--no-sync"])
                .arg("-D")
                .arg(server.path("data"))
                .output(),
            "initdb",
        );
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = on\n",
            server.path("socket").display()
        );
        if tls {
            server.make_tls_material();
            settings
                .push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let conf = server.path("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        server.pg_ctl("start");
        server.psql_in(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        server.psql_in("postgres", &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"));
        server
    }

    /// A path inside the server's directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The CA that issued the server's TLS certificate (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// `postgresql://hsmca@127.0.0.1:PORT/hsmca`, without the password.
    pub fn url(&self) -> String {
        format!("postgresql://{ROLE}@127.0.0.1:{}/{ROLE}", self.port)
    }

    /// Runs SQL as the superuser in the `hsmca` database; returns what psql printed
    /// (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(ROLE, sql)
    }

    /// Runs SQL as the superuser in `database` through the unix socket.
    fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = must(
            Command::new("runuser")
                .args(["-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t"])
                .arg("-h")
                .arg(self.path("socket"))
                .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
                .output(),
            &format!("psql {sql}"),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `pg_ctl start` (waits until it accepts connections) or `pg_ctl -m fast stop`.
    pub fn pg_ctl(&self, action: &str) {
        let mut command = as_postgres("pg_ctl");
        command
            .arg("-D")
            .arg(self.path("data"))
            .arg("-l")
            .arg(self.path("data/server.log"))
            .args(["-w", "-t", "30"]);
        if action == "stop" {
            command.args(["-m", "fast"]);
        }
        must(command.arg(action).output(), &format!("pg_ctl {action}"));
    }

    /// A throwaway CA and a server certificate for localhost/127.0.0.1 in the data
    /// directory, owned by postgres, the key 0600 as the server demands.
    fn make_tls_material(&self) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hsmca test PostgreSQL CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        std::fs::write(self.ca_file(), ca_cert.pem()).unwrap();
        let data = self.path("data");
        std::fs::write(data.join("server.crt"), server_cert.pem()).unwrap();
        std::fs::write(data.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        for file in ["server.crt", "server.key"] {
            must(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(file))
                    .output(),
                "chown",
            );
        }
    }

    /// A `[storage]` section on this server, the password in `dir`: over TLS verify-full
    /// against [`Postgres::ca_file`] with `tls`, else without TLS (loopback).
    pub fn storage_section(&self, dir: &Path, tls: bool) -> String {
        let security = if tls {
            format!("ca_file = \"{}\"\n", self.ca_file().display())
        } else {
            "sslmode = \"disable\"\n".into()
        };
        format!(
            "[storage]\npostgres = \"{}\"\npassword_file = \"{}\"\n{security}",
            self.url(),
            self.password_file(dir).display()
        )
    }

    /// Writes the role's password to `dir/pg-password`, mode 0600; returns the path.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pg-password");
        std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Best effort: a server already stopped by the test makes pg_ctl fail.
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.path("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
