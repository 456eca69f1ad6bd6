//! A running `hsmca serve` for tests: a fresh SoftHSM2 token with the development hierarchy
//! (deploy/dev-ceremony.sh), development TLS material, a config, and the real binary as a
//! child process on a free port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hsmca::api::client::Client;
use hsmca::ledger::certificates::{CertificateStore, Ledger};

use super::load::{Outcome, issued};
use super::{TestToken, repo_path};

/// The trust domain the test clients may request.
pub const TRUST_DOMAIN: &str = "mesh.example";

/// The clients `hsmca dev-tls` makes for the tests, as NAME=URI.
const CLIENTS: [&str; 5] = [
    "istiod=spiffe://mesh.example/istiod",
    "spire=spiffe://mesh.example/spire",
    "stranger=spiffe://mesh.example/stranger",
    "limited=spiffe://mesh.example/limited",
    "officer=spiffe://mesh.example/officer",
];

/// The policy and profiles of the test appliance: `istiod` may use every profile in
/// mesh.example under /ns/prod; `spire` only issuing CAs for 48 h; `stranger` has no entry;
/// `limited` is added by the tests that need it; `officer` may revoke.
const POLICY: &str = r#"
[profiles.issuing-ca]
kind = "issuing-ca"
issuer = "online-p256"
default_ttl = "720h"
max_ttl = "2160h"

[profiles.issuing-ca-rsa]
kind = "issuing-ca"
issuer = "online-rsa2048"
default_ttl = "720h"
max_ttl = "2160h"

[profiles.workload]
kind = "workload"
issuer = "online-p256"
default_ttl = "1h"
max_ttl = "24h"

[[clients]]
name = "istiod"
identity = "spiffe://mesh.example/istiod"
profiles = ["issuing-ca", "issuing-ca-rsa", "workload"]
trust_domains = ["mesh.example"]
spiffe_path_prefixes = ["/ns/prod"]
dns_suffixes = [".svc.cluster.local"]
max_ttl = "2160h"
requests_per_minute = 100000
burst = 10000

[[officers]]
name = "Alice (security officer)"
identity = "spiffe://mesh.example/officer"

[[clients]]
name = "spire"
identity = "spiffe://mesh.example/spire"
profiles = ["issuing-ca"]
trust_domains = ["mesh.example"]
max_ttl = "48h"
"#;

/// A service just started: its process, its stdout lines, its listeners.
struct Started {
    child: Child,
    stdout: mpsc::Receiver<String>,
    url: String,
    ops_url: String,
}

/// Another `hsmca serve` of the same appliance ([`Appliance::start_replica`]). Killed when
/// dropped.
pub struct Replica {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// `http://127.0.0.1:PORT`, the operations listener.
    pub ops_url: String,
    log: PathBuf,
}

impl Replica {
    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        send_signal(self.pid(), "KILL");
        self.child
            .take()
            .expect("the replica is running")
            .wait()
            .unwrap();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the replica is running").id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        send_signal(self.pid(), "TERM");
        self.child
            .take()
            .expect("the replica is running")
            .wait()
            .unwrap()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A prepared (and possibly running) appliance.
pub struct Appliance {
    pub token: TestToken,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    stdout: Option<mpsc::Receiver<String>>,
    pub url: String,
    /// The plain-HTTP operations listener, `http://127.0.0.1:PORT`.
    pub ops_url: String,
    /// Extra environment for `hsmca serve`.
    pub env: Vec<(String, PathBuf)>,
}

impl Appliance {
    /// Token, development ceremony, TLS material for the clients and for a second, untrusted
    /// TLS CA (`other-tls/`), and the config; not started.
    pub fn prepare() -> Self {
        let token = TestToken::create("hsmca-dev");
        let dir = tempfile::tempdir().unwrap();
        let ceremony = Command::new(repo_path("deploy/dev-ceremony.sh"))
            .arg(dir.path().join("ceremony"))
            .arg("hsmca-dev")
            .arg(token.pin_file())
            .env("HSMCA", env!("CARGO_BIN_EXE_hsmca"))
            .env("SOFTHSM2_CONF", token.softhsm_conf())
            .output()
            .unwrap();
        assert!(
            ceremony.status.success(),
            "dev ceremony failed: {}",
            String::from_utf8_lossy(&ceremony.stderr)
        );
        for (out, clients) in [("tls", &CLIENTS[..]), ("other-tls", &CLIENTS[..1])] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_hsmca"));
            command
                .arg("dev-tls")
                .arg("--out-dir")
                .arg(dir.path().join(out));
            for client in clients {
                command.args(["--client", client]);
            }
            let output = command.output().unwrap();
            assert!(output.status.success(), "{output:?}");
        }
        let appliance = Appliance {
            token,
            dir,
            child: None,
            stdout: None,
            url: String::new(),
            ops_url: String::new(),
            env: Vec::new(),
        };
        appliance.write_config("");
        appliance
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("hsmca.toml")
    }

    /// Writes `hsmca.toml`: the standard config with `edit` applied to its text.
    pub fn write_config_with(&self, edit: impl Fn(String) -> String) {
        let text = format!(
            r#"[hsm]
module = "{module}"
token_label = "hsmca-dev"
pin_file = "{pin}"

[hsm.pool]
op_timeout_ms = 2000

[server]
listen = "127.0.0.1:0"
certificate = "tls/server.pem"
key = "tls/server-key.pem"
client_ca = "tls/tls-ca.pem"
shutdown_grace = "20s"
ops_listen = "127.0.0.1:0"

[storage]
ledger = "ledger.sqlite"
audit_log = "audit.log"

[trust]
roots = ["ceremony/out/root-2026.pem"]

[issuers.online-p256]
certificate = "ceremony/out/online-p256-2026.pem"
key_label = "online-p256-2026"
crl_url = "http://pki.example.org/crl/online-p256.crl"

[issuers.online-rsa2048]
certificate = "ceremony/out/online-rsa2048-2026.pem"
key_label = "online-rsa2048-2026"
{POLICY}"#,
            module = super::SOFTHSM_MODULE,
            pin = self.token.pin_file().display(),
        );
        std::fs::write(self.config_path(), edit(text)).unwrap();
    }

    /// The standard config's `[storage]` section (SQLite and the audit file).
    pub const SQLITE_STORAGE: &str =
        "[storage]\nledger = \"ledger.sqlite\"\naudit_log = \"audit.log\"\n";

    /// Puts the config's `[storage]` on `server` (see [`super::postgres::Postgres::storage_section`]);
    /// returns its PostgreSQL settings, for the test to read the books with.
    pub fn use_postgres(
        &self,
        server: &super::postgres::Postgres,
        tls: bool,
    ) -> hsmca::ledger::postgres::PostgresConfig {
        let storage = server.storage_section(self.dir.path(), tls);
        self.write_config_with(|text| {
            assert!(text.contains(Self::SQLITE_STORAGE));
            text.replace(Self::SQLITE_STORAGE, &storage)
        });
        toml::from_str(&storage.replace("[storage]\n", "")).unwrap()
    }

    /// `POST /v1/revoke` of `serial` for `reason` as the officer, at `url`.
    pub fn revoke(&self, url: &str, serial: &str, reason: &str) -> hsmca::api::client::Response {
        runtime()
            .block_on(
                self.client_of(url, "tls", "officer").send(
                    "POST",
                    "/v1/revoke",
                    Some("application/json"),
                    serde_json::json!({ "serial": serial, "reason": reason })
                        .to_string()
                        .into_bytes(),
                ),
            )
            .unwrap()
    }

    /// Writes the standard config with `extra` appended.
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(|text| format!("{text}{extra}"));
    }

    /// `hsmca serve` with this config, the token's SoftHSM2 config and `HSMCA_LOG`.
    pub fn serve_command(&self) -> Command {
        self.serve_command_with(&self.config_path())
    }

    /// `hsmca serve` with the config at `config` (a replica's own).
    fn serve_command_with(&self, config: &Path) -> Command {
        let mut command = self.token.hsmca_command(&["serve"]);
        command
            .arg("--config")
            .arg(config)
            .env("HSMCA_LOG", "hsmca=info")
            .envs(self.env.iter().cloned());
        command
    }

    /// Serves through the fault-injecting PKCS#11 module (softhsm/fault-module) in front of
    /// SoftHSM2, controlled by the returned file (empty: no faults); `edit` changes the rest
    /// of the standard config.
    pub fn use_fault_module(&mut self, edit: impl Fn(String) -> String) -> PathBuf {
        let module = super::fault_module();
        self.write_config_with(|text| {
            edit(text.replace(super::SOFTHSM_MODULE, &module.display().to_string()))
        });
        let control = self.path("faults");
        std::fs::write(&control, "").unwrap();
        self.env.push(("HSMCA_FAULTS".into(), control.clone()));
        control
    }

    /// Checks that every certificate in `answers` (native `/v1/sign` answers) has its ledger
    /// row, byte for byte, and its `sign.issued` audit record, and that the audit log verifies.
    pub fn assert_recorded(&self, answers: &[&serde_json::Value]) {
        let ledger = Ledger::open(&self.path("ledger.sqlite")).unwrap();
        assert_recorded_in(&ledger, &self.path("audit.log"), answers);
    }

    /// Starts the service and waits until it says where it listens. Panics with its output
    /// if it exits instead.
    pub fn start(&mut self) {
        let started = self.spawn("serve.log", &self.config_path());
        self.url = started.url;
        self.ops_url = started.ops_url;
        self.child = Some(started.child);
        self.stdout = Some(started.stdout);
    }

    /// Starts one more `hsmca serve` with the same config and token, as another replica
    /// would (its own ports, its log in `serve-NAME.log`).
    pub fn start_replica(&self, name: &str) -> Replica {
        self.start_replica_with(name, &self.config_path())
    }

    /// [`Appliance::start_replica`] with a config of the replica's own (fixed ports, say).
    pub fn start_replica_with(&self, name: &str, config: &Path) -> Replica {
        let started = self.spawn(&format!("serve-{name}.log"), config);
        Replica {
            child: Some(started.child),
            url: started.url,
            ops_url: started.ops_url,
            log: self.path(&format!("serve-{name}.log")),
        }
    }

    /// Spawns `hsmca serve`, its stderr appended to `log`, and waits for its listeners.
    fn spawn(&self, log: &str, config: &Path) -> Started {
        let mut child = self
            .serve_command_with(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, receiver) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.path(log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let log_path = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            // Appended to, so that a restarted service's log follows the previous one's.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
            }
        });
        let mut ops_url = String::new();
        let url = loop {
            match receiver.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("hsmca: operations on ") {
                        ops_url = url.to_owned();
                    }
                    if let Some(url) = line.strip_prefix("hsmca: serving on ") {
                        break url.to_owned();
                    }
                }
                Err(_) => {
                    let status = child.try_wait().unwrap();
                    let _ = child.kill();
                    panic!(
                        "hsmca serve did not start (exit {status:?}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        Started {
            child,
            stdout: receiver,
            url,
            ops_url,
        }
    }

    /// What the service logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("the appliance is running");
        child.wait().unwrap()
    }

    /// Kills the service with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let mut child = self.child.take().expect("the appliance is running");
        child.wait().unwrap();
    }

    /// Sends a signal to the running service (`kill -s NAME`).
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the appliance is running").id()
    }

    /// Waits for the service to exit by itself.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the appliance is running");
        child.wait().unwrap()
    }

    /// A client presenting `name`'s certificate from `tls_dir` (`tls` or `other-tls`).
    pub fn client_from(&self, tls_dir: &str, name: &str) -> Client {
        self.client_of(&self.url, tls_dir, name)
    }

    /// A client of the service at `url` (this one or a replica) presenting `name`'s
    /// certificate from `tls_dir`.
    pub fn client_of(&self, url: &str, tls_dir: &str, name: &str) -> Client {
        let dir = self.path(tls_dir);
        Client::new(
            url,
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}-key.pem")),
            &self.path("tls/tls-ca.pem"),
        )
        .unwrap()
    }

    /// `hsmca SUBCOMMAND --server URL --cert --key --ca` as the dev TLS client `tls_name`.
    pub fn hsmca_as(&self, tls_name: &str, subcommand: &str) -> Command {
        let mut command = self
            .token
            .hsmca_command(&[subcommand, "--server", &self.url]);
        command
            .arg("--cert")
            .arg(self.path(&format!("tls/{tls_name}.pem")))
            .arg("--key")
            .arg(self.path(&format!("tls/{tls_name}-key.pem")))
            .arg("--ca")
            .arg(self.path("tls/tls-ca.pem"));
        command
    }

    /// `GET path` on the plain-HTTP operations listener: (status, body).
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        ops_get(&self.ops_url, path)
    }

    /// The value of the metric `series` (name and labels) on the operations listener.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, metrics) = self.ops_get("/metrics");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    }

    /// Waits (up to `within`) until the metric `series` reads `value`.
    pub fn wait_for_metric(&self, series: &str, value: u64, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.metric(series);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {series} is {now}, not {value}, after {within:?}:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A rustls client config presenting `cert`/`key` (none if `None`) and trusting the dev TLS CA.
    pub fn tls_client(&self, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in hsmca::api::read_certificates(&self.path("tls/tls-ca.pem"), "ca").unwrap() {
            roots.add(cert).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    hsmca::api::read_certificates(cert, "cert").unwrap(),
                    hsmca::api::read_private_key(key, "key").unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        }
    }

    /// A client of the trusted TLS CA.
    pub fn client(&self, name: &str) -> Client {
        self.client_from("tls", name)
    }

    /// `GET path` as the dev client `client`, on a connection of its own.
    pub fn get(&self, client: &str, path: &str) -> hsmca::api::client::Response {
        self.get_at(&self.url, client, path)
    }

    /// `GET path` on the service at `url` (this one or a replica) as the dev client `client`.
    pub fn get_at(&self, url: &str, client: &str, path: &str) -> hsmca::api::client::Response {
        runtime()
            .block_on(
                self.client_of(url, "tls", client)
                    .send("GET", path, None, vec![]),
            )
            .unwrap()
    }

    /// Polls `/readyz` on the operations listener until it answers `status`, for up to
    /// `within`.
    pub fn wait_for_readiness(&self, status: u16, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let (now, body) = self.ops_get("/readyz");
            if now == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz still answers {now} ({body}) after {within:?}, expected {status}\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the appliance and checks the books against what clients saw: every certificate
    /// handed out is in the ledger byte for byte and audited, the ledger holds exactly those,
    /// and every refusal is audited.
    pub fn stop_and_assert_books_balance(&mut self, outcomes: &[Outcome]) {
        assert!(self.stop().success(), "{}", self.server_log());
        let answers = issued(outcomes);
        self.assert_recorded(&answers);
        let ledger = Ledger::open(&self.path("ledger.sqlite")).unwrap();
        assert_eq!(
            ledger.count().unwrap(),
            answers.len() as u64,
            "the ledger holds a certificate nobody received"
        );
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(..)))
            .count();
        let audited_refusals = self
            .audit_records()
            .iter()
            .filter(|r| r["event"] == "sign.failed" || r["event"] == "sign.refused")
            .count();
        assert_eq!(audited_refusals, refused, "one audit record per refusal");
    }

    /// The audit log's records as JSON.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub fn root_pem(&self) -> PathBuf {
        self.path("ceremony/out/root-2026.pem")
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends signal `name` to process `pid` with `kill -s`.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {name} {pid}");
}

/// `GET path` on the plain-HTTP operations listener at `ops_url`: (status, body).
pub fn ops_get(ops_url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = ops_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Asserts that every certificate in `answers` is in `store` byte for byte and has its
/// `sign.issued` record in the audit log (or export) at `audit_log`, which verifies.
pub fn assert_recorded_in(
    store: &dyn hsmca::ledger::certificates::CertificateStore,
    audit_log: &Path,
    answers: &[&serde_json::Value],
) {
    let records: Vec<serde_json::Value> = std::fs::read_to_string(audit_log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let audited: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "sign.issued")
        .filter_map(|r| r["details"]["serial"].as_str())
        .collect();
    for answer in answers {
        let serial = answer["serial"].as_str().unwrap();
        let row = store
            .find(serial)
            .unwrap()
            .unwrap_or_else(|| panic!("certificate {serial} was handed out without its row"));
        assert_eq!(
            hsmca::pki::to_pem("CERTIFICATE", &row.der),
            answer["certificate"].as_str().unwrap(),
            "the ledger row of {serial} differs from what the client received"
        );
        assert!(
            audited.contains(serial),
            "certificate {serial} has no sign.issued record"
        );
    }
    let verify = super::audit_verify(audit_log);
    assert!(verify.status.success(), "{verify:?}");
}

/// A CSR shaped like SPIRE's for an issuing CA: subject C=US, O=SPIFFE, URI SAN
/// `spiffe://<td>`; `key` is the requester's key.
pub fn spire_csr(key: &rcgen::KeyPair, uri_sans: &[&str]) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CountryName, "US");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "SPIFFE");
    params.subject_alt_names = uri_sans
        .iter()
        .map(|uri| rcgen::SanType::URI(uri.to_string().try_into().unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

pub fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

pub fn rsa2048() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A tokio runtime for the test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
