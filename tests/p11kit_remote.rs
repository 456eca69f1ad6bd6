//! The appliance against a network HSM stand-in: SoftHSM2 behind p11-kit remoting. `p11-kit
//! server` exports the appliance's token on a unix socket and hsmca loads p11-kit's client
//! module (`p11-kit-client.so`, pointed at the socket by `P11_KIT_SERVER_ADDRESS`), so every
//! PKCS#11 call crosses a link that can drop, as a network HSM's does.
//!
//! Proved here: `hsmca hsm info` and `hsm keygen` work through the link; the appliance issues
//! under load through it; when the server dies under load (SIGKILL of its process group, a
//! dropped link) every request is answered 503 well within the operation timeout and
//! `/readyz` fails; when a server comes back on the same socket the appliance recovers by
//! itself, without a restart; when the link stops answering instead (the server's process for
//! hsmca's connection stopped, so calls wait for good), requests are still answered 503 within
//! the bound, the stuck sessions are abandoned and replaced, and the appliance recovers on a new connection while the old one still hangs; and throughout, the books
//! balance: every certificate handed out is in the ledger and audited, the ledger holds
//! nothing else, and every refusal is audited.
//! Requests per second through the link and straight to SoftHSM2 are printed, not asserted.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::appliance::{Appliance, runtime, send_signal};
use common::load::{Load, Outcome, distinct_csrs, issued};
use common::{SOFTHSM_MODULE, TestToken, stderr, stdout};
use hsmca::api::client::Client;

/// The operation timeout of the standard test config (`[hsm.pool] op_timeout_ms`).
const OP_TIMEOUT: Duration = Duration::from_millis(2000);
/// The longest any answer may take while the HSM is away: the operation timeout plus a margin
/// for queueing behind the other sessions' failures and for a loaded test machine.
const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// p11-kit's client module, from `softhsm/p11kit-remote.sh` (which installs p11-kit when
/// missing); run once per test process.
fn p11kit_client() -> &'static Path {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let output = Command::new("bash")
            .arg(common::repo_path("softhsm/p11kit-remote.sh"))
            .output()
            .expect("run softhsm/p11kit-remote.sh");
        assert!(
            output.status.success(),
            "softhsm/p11kit-remote.sh failed: {}",
            stderr(&output)
        );
        let out = stdout(&output);
        let client = out
            .lines()
            .find_map(|line| line.strip_prefix("HSMCA_P11KIT_CLIENT="))
            .unwrap_or_else(|| panic!("softhsm/p11kit-remote.sh printed no client: {out}"));
        let client = PathBuf::from(client);
        assert!(client.exists(), "{} is missing", client.display());
        client
    })
}

/// `P11_KIT_SERVER_ADDRESS` for a server on `socket`.
fn server_address(socket: &Path) -> PathBuf {
    format!("unix:path={}", socket.display()).into()
}

/// A running `p11-kit server` exporting one SoftHSM2 token on a unix socket, in a process
/// group of its own: the server forks one `p11-kit-remote` per client connection, and only
/// killing the whole group drops the clients' links. Killed when dropped.
struct P11KitServer {
    child: Option<Child>,
    socket: PathBuf,
}

impl P11KitServer {
    /// Starts the server in the foreground on `socket` for the token labelled `token.label`,
    /// its output appended to `log`, and waits (up to 10 s) until it accepts connections.
    fn start(token: &TestToken, socket: &Path, log: &Path) -> P11KitServer {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("p11-kit")
            .args(["server", "--foreground", "--name"])
            .arg(socket)
            .args(["--provider", SOFTHSM_MODULE])
            .arg(format!("pkcs11:token={}", token.label))
            .env("SOFTHSM2_CONF", token.softhsm_conf())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("p11-kit is not installed: run softhsm/p11kit-remote.sh");
        let mut server = P11KitServer {
            child: Some(child),
            socket: socket.to_owned(),
        };
        server.wait_until_listening(log);
        server
    }

    /// Polls the socket until a connection succeeds (a killed server leaves its socket file
    /// behind, which refuses connections until the next server replaces it).
    fn wait_until_listening(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            let status = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                status.is_none() && Instant::now() < deadline,
                "p11-kit server is not listening on {} (exit {status:?}):\n{}",
                self.socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The processes serving the connections made so far (the server forks one per client
    /// connection).
    fn connections(&self) -> Vec<u32> {
        let server = self.child.as_ref().expect("server running").id();
        let output = Command::new("pgrep")
            .args(["-P", &server.to_string()])
            .output()
            .unwrap();
        stdout(&output)
            .lines()
            .map(|pid| pid.trim().parse().unwrap())
            .collect()
    }

    /// SIGKILL to the server and every connection's `p11-kit-remote`, as a network link drop
    /// or a crashed HSM appliance would; reaps the server.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status()
                .unwrap();
            assert!(status.success(), "kill the p11-kit server's process group");
            child.wait().unwrap();
        }
    }
}

impl Drop for P11KitServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

/// Rewrites the appliance's config to load p11-kit's client module instead of SoftHSM2, and
/// points `hsmca serve` at the server on `socket`.
fn use_p11kit_client(appliance: &mut Appliance, socket: &Path) {
    let client = p11kit_client().display().to_string();
    appliance.write_config_with(|text| {
        assert!(
            text.contains(SOFTHSM_MODULE),
            "the standard config names SoftHSM2"
        );
        two_sessions(text).replace(SOFTHSM_MODULE, &client)
    });
    appliance
        .env
        .push(("P11_KIT_SERVER_ADDRESS".into(), server_address(socket)));
}

/// Two signing sessions, so the load queues and the comparison with SoftHSM2 is like for like.
fn two_sessions(text: String) -> String {
    assert!(
        text.contains("[hsm.pool]\nop_timeout_ms = 2000\n"),
        "{text}"
    );
    text.replace("[hsm.pool]\n", "[hsm.pool]\nsessions = 2\n")
}

/// Runs [`Load`] for `duration` with 4 connections and returns its outcomes and the rate of
/// issued certificates per second.
fn measured_load(
    rt: &tokio::runtime::Runtime,
    appliance: &Appliance,
    duration: Duration,
) -> (Vec<Outcome>, f64) {
    let started = Instant::now();
    let load = Load::start(
        rt,
        &appliance.client("istiod"),
        4,
        &distinct_csrs(16),
        "issuing-ca",
    );
    std::thread::sleep(duration);
    let outcomes = load.finish(rt);
    let rate = issued(&outcomes).len() as f64 / started.elapsed().as_secs_f64();
    (outcomes, rate)
}

/// Asserts that every outcome is a 200.
fn assert_all_issued(outcomes: &[Outcome], what: &str) {
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Outcome::Issued(_)))
        .collect();
    assert!(
        failed.is_empty() && !outcomes.is_empty(),
        "{what}: {} of {} requests not issued: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}

/// One answer of the [`Prober`]: when it was sent, how long it took, what it was.
struct Probe {
    sent: Instant,
    took: Duration,
    outcome: Outcome,
}

/// Sends `POST /v1/sign` requests one after another, each on a connection of its own, and
/// times every answer; a request not answered within [`ANSWER_BOUND`] is recorded as lost
/// (and fails the test). Runs until [`Prober::finish`].
struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(rt: &tokio::runtime::Runtime, client: Client, csrs: Vec<String>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (stop, probes) = (stop.clone(), probes.clone());
            rt.spawn(async move {
                let mut next = 0;
                while !stop.load(Ordering::Relaxed) {
                    let csr = &csrs[next % csrs.len()];
                    next += 1;
                    let sent = Instant::now();
                    let answer =
                        tokio::time::timeout(ANSWER_BOUND, client.sign(csr, "issuing-ca", None))
                            .await;
                    let outcome = match answer {
                        Ok(Ok(response)) => {
                            let body = response.json().unwrap_or(serde_json::Value::Null);
                            if response.status == 200 {
                                Outcome::Issued(body)
                            } else {
                                Outcome::Refused(response.status, body)
                            }
                        }
                        Ok(Err(error)) => Outcome::Lost(error),
                        Err(_) => Outcome::Lost(format!("no answer within {ANSWER_BOUND:?}")),
                    };
                    probes.lock().unwrap().push(Probe {
                        sent,
                        took: sent.elapsed(),
                        outcome,
                    });
                    // Paced a little, so the timings sample the outage rather than flood it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Prober { stop, probes, task }
    }

    /// Waits (up to `within`) until `count` answers sent after `since` match `wanted`.
    fn wait_for(
        &self,
        since: Instant,
        count: usize,
        within: Duration,
        what: &str,
        wanted: impl Fn(&Outcome) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self
                .probes
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.sent >= since && wanted(&p.outcome))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {seen} of {count} answers within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.task).unwrap();
        Arc::try_unwrap(self.probes)
            .unwrap_or_else(|_| panic!("the prober is done"))
            .into_inner()
            .unwrap()
    }
}

/// True for the answers an unreachable HSM may give: 503 `hsm_unavailable` (the module failed)
/// or `hsm_timeout` (it did not answer within the operation timeout).
fn is_hsm_refusal(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Refused(503, body)
        if body["error"]["code"] == "hsm_unavailable" || body["error"]["code"] == "hsm_timeout")
}

#[test]
fn hsm_info_and_keygen_work_through_p11kit_remoting() {
    let token = TestToken::create("hsmca-remote");
    let socket = token.dir.path().join("p11kit.sock");
    let _server = P11KitServer::start(&token, &socket, &token.dir.path().join("p11kit.log"));
    let config = token.write_config(
        "remote.toml",
        &format!(
            "module = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"",
            p11kit_client().display(),
            token.label,
            token.pin_file().display()
        ),
    );
    let remote = |args: &[&str]| {
        let output = token
            .hsmca_command(&["--config", config.to_str().unwrap()])
            .args(args)
            // Only the server may see the token: the client module must not need SoftHSM2.
            .env_remove("SOFTHSM2_CONF")
            .env("P11_KIT_SERVER_ADDRESS", server_address(&socket))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "hsmca {args:?} through p11-kit failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    };

    let info = remote(&["hsm", "info"]);
    assert!(
        info.contains("hsmca-remote"),
        "hsm info names the token: {info}"
    );
    assert!(
        info.contains("SoftHSM"),
        "the token behind the link is SoftHSM2: {info}"
    );
    remote(&[
        "hsm",
        "keygen",
        "--label",
        "remote-key",
        "--type",
        "ecdsa-p256",
    ]);
    // The key is on the token itself, as SoftHSM2 seen directly shows.
    let objects = token.pkcs11_tool(&[
        "--login",
        "--pin",
        token.user_pin().trim(),
        "--list-objects",
    ]);
    let objects = stdout(&objects);
    assert_eq!(
        objects.matches("label:      remote-key").count(),
        2,
        "a private and a public key labelled remote-key: {objects}"
    );
}

#[test]
fn through_p11kit_remoting_a_dropped_link_answers_503_fails_readiness_and_recovers_without_restart()
{
    let mut appliance = Appliance::prepare();
    let rt = runtime();

    // For comparison: the same load straight to SoftHSM2.
    appliance.write_config_with(two_sessions);
    appliance.start();
    let (direct, direct_rate) = measured_load(&rt, &appliance, Duration::from_secs(1));
    assert_all_issued(&direct, "straight to SoftHSM2");
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let mut outcomes = direct;

    // The same token behind p11-kit remoting.
    let socket = appliance.path("p11kit.sock");
    let server_log = appliance.path("p11kit.log");
    let mut server = P11KitServer::start(&appliance.token, &socket, &server_log);
    use_p11kit_client(&mut appliance, &socket);
    appliance.start();
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    let (remote, remote_rate) = measured_load(&rt, &appliance, Duration::from_secs(1));
    assert_all_issued(&remote, "through p11-kit remoting");
    outcomes.extend(remote);
    eprintln!(
        "issuing-ca signing, 4 connections, 2 HSM sessions: {direct_rate:.0} certificates/s \
         straight to SoftHSM2, {remote_rate:.0}/s through p11-kit remoting \
         ({:.2} ms vs {:.2} ms per certificate)",
        1000.0 / direct_rate,
        1000.0 / remote_rate
    );

    // The link drops under load.
    let load = Load::start(
        &rt,
        &appliance.client("istiod"),
        4,
        &distinct_csrs(16),
        "issuing-ca",
    );
    let prober = Prober::start(&rt, appliance.client("istiod"), distinct_csrs(8));
    prober.wait_for(
        Instant::now(),
        2,
        Duration::from_secs(10),
        "issued before the link drops",
        |o| matches!(o, Outcome::Issued(_)),
    );
    let dropped = Instant::now();
    server.kill9();
    appliance.wait_for_readiness(503, Duration::from_secs(20));
    prober.wait_for(
        dropped,
        3,
        Duration::from_secs(20),
        "refused while the link is down",
        is_hsm_refusal,
    );

    // A server again on the same socket: the appliance finds the token by itself.
    let restarted = Instant::now();
    let _server = P11KitServer::start(&appliance.token, &socket, &server_log);
    appliance.wait_for_readiness(200, Duration::from_secs(30));
    prober.wait_for(
        restarted,
        3,
        Duration::from_secs(30),
        "issued after the server came back",
        |o| matches!(o, Outcome::Issued(_)),
    );
    let through_outage = load.finish(&rt);
    let probes = prober.finish(&rt);

    let slowest = probes.iter().map(|p| p.took).max().unwrap_or_default();
    let refused: Vec<_> = probes
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Refused(..)))
        .collect();
    eprintln!(
        "link down for the prober: {} answers, {} refused, slowest refusal {:?}, slowest answer \
         {slowest:?}; load through the outage: {} issued, {} refused; sessions abandoned with \
         a call that never returned: {}",
        probes.len(),
        refused.len(),
        refused.iter().map(|p| p.took).max().unwrap_or_default(),
        issued(&through_outage).len(),
        through_outage.len() - issued(&through_outage).len(),
        appliance.metric("hsmca_hsm_pool_stuck_sessions")
    );
    assert_probes_bounded(&probes);
    for outcome in &through_outage {
        assert!(
            matches!(outcome, Outcome::Issued(_)) || is_hsm_refusal(outcome),
            "under load through the outage, every answer is a certificate or 503 \
             hsm_unavailable/hsm_timeout: {outcome:?}"
        );
    }
    outcomes.extend(through_outage);
    outcomes.extend(probes.into_iter().map(|p| p.outcome));

    // Healed: the next requests are all signed.
    let client = appliance.client("istiod");
    for csr in distinct_csrs(4) {
        let response = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
        let body = response.json().unwrap();
        assert_eq!(response.status, 200, "after recovery: {body}");
        outcomes.push(Outcome::Issued(body));
    }
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn through_p11kit_remoting_a_link_that_stops_answering_is_abandoned_and_the_appliance_recovers_on_a_new_one()
 {
    let mut appliance = Appliance::prepare();
    let rt = runtime();
    let socket = appliance.path("p11kit.sock");
    let server = P11KitServer::start(&appliance.token, &socket, &appliance.path("p11kit.log"));
    use_p11kit_client(&mut appliance, &socket);
    appliance.start();
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    assert_eq!(appliance.metric("hsmca_hsm_pool_stuck_sessions"), 0);

    let prober = Prober::start(&rt, appliance.client("istiod"), distinct_csrs(8));
    prober.wait_for(
        Instant::now(),
        2,
        Duration::from_secs(10),
        "issued before the link stops answering",
        |o| matches!(o, Outcome::Issued(_)),
    );
    // The process serving hsmca's connection stops: every call on that connection waits for
    // an answer that does not come, as over a network link that went silent.
    let hung = server.connections();
    assert_eq!(hung.len(), 1, "one connection from hsmca: {hung:?}");
    send_signal(hung[0], "STOP");
    let stopped = Instant::now();
    prober.wait_for(
        stopped,
        1,
        Duration::from_secs(20),
        "refused while the link is silent",
        is_hsm_refusal,
    );
    // Both sessions' calls hang; after twice the operation timeout the watchdog abandons them,
    // says the HSM is degraded, and their replacements connect afresh.
    prober.wait_for(
        stopped,
        3,
        Duration::from_secs(30),
        "issued on a new connection while the old one still hangs",
        |o| matches!(o, Outcome::Issued(_)),
    );
    appliance.wait_for_readiness(200, Duration::from_secs(10));
    let stuck = appliance.metric("hsmca_hsm_pool_stuck_sessions");
    assert!(
        (1..=2).contains(&stuck),
        "the sessions whose calls hang are abandoned, still waiting: {stuck}"
    );
    assert_eq!(appliance.metric("hsmca_hsm_pool_sessions"), 2);
    assert!(
        server.connections().len() >= 2,
        "the replacements connected anew"
    );
    let log = appliance.server_log();
    assert!(
        log.contains("abandoning the HSM session and starting another"),
        "{log}"
    );

    // The old link answers again: the abandoned calls return, their threads end, and what
    // they signed is thrown away unrecorded with nobody waiting for it.
    send_signal(hung[0], "CONT");
    appliance.wait_for_metric(
        "hsmca_hsm_pool_stuck_sessions",
        0,
        Duration::from_secs(10),
        "the abandoned calls returned once the link answered again",
    );
    let probes = prober.finish(&rt);
    let issued_again = probes
        .iter()
        .filter(|p| p.sent >= stopped && matches!(p.outcome, Outcome::Issued(_)))
        .map(|p| p.sent + p.took - stopped)
        .min()
        .unwrap_or_default();
    eprintln!(
        "link silent: {} answers after it went silent, {} refused, slowest {:?}; issuing again \
         on a new connection {issued_again:?} after it went silent; abandoned sessions: {stuck}",
        probes.iter().filter(|p| p.sent >= stopped).count(),
        probes
            .iter()
            .filter(|p| p.sent >= stopped && is_hsm_refusal(&p.outcome))
            .count(),
        probes.iter().map(|p| p.took).max().unwrap_or_default(),
    );
    assert_probes_bounded(&probes);
    let outcomes: Vec<Outcome> = probes.into_iter().map(|p| p.outcome).collect();
    appliance.stop_and_assert_books_balance(&outcomes);
}

/// Asserts that every probe was a certificate or an HSM refusal, answered within
/// [`ANSWER_BOUND`].
fn assert_probes_bounded(probes: &[Probe]) {
    for probe in probes {
        assert!(
            matches!(probe.outcome, Outcome::Issued(_)) || is_hsm_refusal(&probe.outcome),
            "every answer is a certificate or 503 hsm_unavailable/hsm_timeout: {:?}",
            probe.outcome
        );
        assert!(
            probe.took < ANSWER_BOUND,
            "an answer took {:?} (operation timeout {OP_TIMEOUT:?}): {:?}",
            probe.took,
            probe.outcome
        );
    }
}
