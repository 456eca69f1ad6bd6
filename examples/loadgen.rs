//! The load generator of `benches/e2e.sh`: N keep-alive connections sending signing requests
//! for a fixed time, from a pool of CSRs made before the clock starts (no key generation in the
//! loop), reporting throughput, p50/p99/p99.9 latency and errors as text and JSON. And, as
//! `raw`, the PKCS#11 ceiling: threads calling `C_Sign` on their own sessions.
//!
//! ```text
//! loadgen http --target hsmca|vault|cfssl --url URL --connections N --seconds S
//!              [--profile P] [--cert C --key K --ca CA] [--token T] [--csrs 512] [--json F]
//! loadgen raw  --token-label L --key-label K --mechanism ecdsa|rsa|rsa-pss --pin-file F
//!              --threads N --seconds S [--module M] [--slot ID] [--json F]
//! loadgen ready --url http://HOST:PORT/PATH [--seconds 30]
//! ```
//!
//! Latency percentiles are of the answers that carried a certificate; 503 answers (load
//! shed by the server) are counted and timed apart, since a fast refusal would otherwise
//! pull the percentiles down. `ready` polls a plain-HTTP URL every millisecond until it
//! answers 200, for timing a start without the poller's own start-up in the figure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn required(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| panic!("{name} is required"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let report = match args.get(1).map(String::as_str) {
        Some("http") => http(&args),
        Some("raw") => raw(&args),
        Some("ready") => ready(&args),
        _ => {
            eprintln!("usage: loadgen http|raw|ready ... (see the source's header)");
            std::process::exit(2);
        }
    };
    println!("{}", text(&report));
    if let Some(path) = arg(&args, "--json") {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
    }
}

fn text(report: &Value) -> String {
    if let Some(ms) = report["ready_ms"].as_f64() {
        return format!("{} ready after {ms:.1} ms of polling", report["url"]);
    }
    format!(
        "{:<10} {:<12} conns {:>4}: {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}{}",
        report["target"].as_str().unwrap_or(""),
        report["scenario"].as_str().unwrap_or(""),
        report["connections"],
        report["throughput"].as_f64().unwrap_or(0.0),
        report["p50_ms"].as_f64().unwrap_or(0.0),
        report["p99_ms"].as_f64().unwrap_or(0.0),
        report["p999_ms"].as_f64().unwrap_or(0.0),
        report["errors"],
        match report["shed_503"].as_u64() {
            Some(shed) if shed > 0 => format!(
                " (503 shed {shed}, their p99 {:.2} ms)",
                report["refused_p99_ms"].as_f64().unwrap_or(0.0)
            ),
            _ => String::new(),
        }
    )
}

/// Latency percentiles (ms) of sorted microsecond samples.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

/// A P-256 CSR for `target`: an issuing CA (`spiffe://mesh.example`) or a workload.
fn csr(workload: bool, index: usize) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "SPIFFE");
    let uri = if workload {
        format!("spiffe://mesh.example/ns/prod/sa/w{index}")
    } else {
        "spiffe://mesh.example".to_string()
    };
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// What the connections saw: answers by status, and the latencies of certificates and of
/// 503s (shed load) apart.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    /// Microseconds, one per 200.
    issued: Vec<u64>,
    /// Microseconds, one per 503.
    shed: Vec<u64>,
    /// Requests that got an answer or lost their connection (connect failures excluded).
    answered: u64,
}

impl Tally {
    fn count(&mut self, status: String) {
        *self.statuses.entry(status).or_default() += 1;
    }

    /// A request sent at `sent` that ended with `status`.
    fn answer(&mut self, status: String, sent: Instant) {
        let micros = sent.elapsed().as_micros() as u64;
        match status.as_str() {
            "200" => self.issued.push(micros),
            "503" => self.shed.push(micros),
            _ => {}
        }
        self.answered += 1;
        self.count(status);
    }

    fn merge(&mut self, other: Tally) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.issued.extend(other.issued);
        self.shed.extend(other.shed);
        self.answered += other.answered;
    }
}

fn http(args: &[String]) -> Value {
    let target = required(args, "--target");
    let url = required(args, "--url");
    let connections: usize = required(args, "--connections").parse().unwrap();
    let seconds: f64 = required(args, "--seconds").parse().unwrap();
    let profile = arg(args, "--profile").unwrap_or_else(|| "issuing-ca".into());
    let csr_count: usize = arg(args, "--csrs").map_or(512, |n| n.parse().unwrap());
    let workload = profile == "workload" || target == "vault";
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..csr_count)
            .map(|i| {
                let pem = csr(workload, i);
                let body = match target.as_str() {
                    "hsmca" => json!({ "csr": pem, "profile": profile, "ttl": "1h" }),
                    "vault" => json!({ "csr": pem, "ttl": "1h" }),
                    "cfssl" => json!({ "certificate_request": pem }),
                    other => panic!("unknown --target {other}"),
                };
                body.to_string().into_bytes()
            })
            .collect(),
    );
    let (path, token) = match target.as_str() {
        "hsmca" => ("/v1/sign".to_string(), None),
        "vault" => (
            "/v1/pki/sign/workload".to_string(),
            Some(required(args, "--token")),
        ),
        _ => ("/api/v1/cfssl/sign".to_string(), None),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deadline_after = Duration::from_secs_f64(seconds);
    let results = runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + deadline_after;
        let mut tasks = Vec::new();
        for worker in 0..connections {
            let (csrs, path, token, url, target) = (
                csrs.clone(),
                path.clone(),
                token.clone(),
                url.clone(),
                target.clone(),
            );
            let (cert, key, ca) = (
                arg(args, "--cert").map(PathBuf::from),
                arg(args, "--key").map(PathBuf::from),
                arg(args, "--ca").map(PathBuf::from),
            );
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
                if let Some(token) = &token {
                    headers.push(("x-vault-token", token));
                }
                if target == "cfssl" {
                    let mut connection = match plain::connect(&url).await {
                        Ok(c) => c,
                        Err(e) => {
                            tally.count(format!("connect: {e}"));
                            return tally;
                        }
                    };
                    let mut i = worker;
                    while Instant::now() < deadline {
                        let body = csrs[i % csrs.len()].clone();
                        i += connections;
                        let sent = Instant::now();
                        let status = connection.post(&path, body).await;
                        tally.answer(status, sent);
                    }
                    return tally;
                }
                let client = hsmca::api::client::Client::new(
                    &url,
                    &cert.unwrap(),
                    &key.unwrap(),
                    &ca.unwrap(),
                )
                .unwrap();
                let mut connection = None;
                let mut i = worker;
                while Instant::now() < deadline {
                    if connection.is_none() {
                        match client.connect().await {
                            Ok(c) => connection = Some(c),
                            Err(e) => {
                                tally.count(format!("connect: {e}"));
                                continue;
                            }
                        }
                    }
                    let body = csrs[i % csrs.len()].clone();
                    i += connections;
                    let sent = Instant::now();
                    let answer = connection
                        .as_mut()
                        .unwrap()
                        .send("POST", &path, &headers, body)
                        .await;
                    let status = match answer {
                        Ok(response) => response.status.to_string(),
                        Err(_) => {
                            connection = None;
                            "connection error".to_string()
                        }
                    };
                    tally.answer(status, sent);
                }
                tally
            }));
        }
        let mut tally = Tally::default();
        for task in tasks {
            tally.merge(task.await.unwrap());
        }
        (tally, started.elapsed())
    });
    let (mut tally, elapsed) = results;
    tally.issued.sort_unstable();
    tally.shed.sort_unstable();
    let Tally {
        statuses,
        issued,
        shed: shed_latencies,
        answered,
    } = tally;
    let ok = statuses.get("200").copied().unwrap_or(0);
    let errors: u64 = statuses
        .iter()
        .filter(|(k, _)| k.as_str() != "200")
        .map(|(_, v)| v)
        .sum();
    json!({
        "target": target,
        "scenario": if target == "vault" { "sign/workload".to_string() } else { profile },
        "connections": connections,
        "seconds": elapsed.as_secs_f64(),
        "requests": answered,
        "ok": ok,
        "errors": errors,
        "shed_503": shed_latencies.len(),
        "statuses": statuses,
        "throughput": ok as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile(&issued, 0.50),
        "p99_ms": percentile(&issued, 0.99),
        "p999_ms": percentile(&issued, 0.999),
        "refused_p99_ms": percentile(&shed_latencies, 0.99),
    })
}

/// Plain HTTP/1.1 keep-alive for the cfssl peer (it serves no TLS).
mod plain {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    pub struct Connection {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        host: String,
    }

    pub async fn connect(url: &str) -> Result<Connection, String> {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Connection { sender, host })
    }

    impl Connection {
        pub async fn post(&mut self, path: &str, body: Vec<u8>) -> String {
            let request = hyper::Request::post(path)
                .header("host", &self.host)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            match self.sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.into_body().collect().await {
                        Ok(body) => {
                            let body = body.to_bytes();
                            // cfssl answers 200 with "success":false on some failures.
                            let success = body.windows(14).any(|w| w == b"\"success\":true");
                            if status == 200 && success {
                                "200".into()
                            } else {
                                format!("{status} (success false)")
                            }
                        }
                        Err(e) => format!("body: {e}"),
                    }
                }
                Err(e) => format!("request: {e}"),
            }
        }
    }
}

/// Polls a plain-HTTP URL until it answers 200; the report holds how long that took.
fn ready(args: &[String]) -> Value {
    use std::io::{Read, Write};
    let url = required(args, "--url");
    let seconds: f64 = arg(args, "--seconds").map_or(30.0, |s| s.parse().unwrap());
    let rest = url
        .strip_prefix("http://")
        .expect("--url must be http://HOST:PORT/PATH");
    let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let started = Instant::now();
    loop {
        let answered_ok = std::net::TcpStream::connect(address)
            .and_then(|mut stream| {
                write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer)?;
                Ok(answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"))
            })
            .unwrap_or(false);
        if answered_ok {
            return json!({ "target": "ready", "url": url, "ready_ms": started.elapsed().as_secs_f64() * 1000.0 });
        }
        if started.elapsed().as_secs_f64() > seconds {
            eprintln!("{url} did not answer 200 within {seconds} s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The raw PKCS#11 ceiling: threads, each with its own session, calling `C_Sign` in a loop.
fn raw(args: &[String]) -> Value {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    let token_label = required(args, "--token-label");
    let key_label = required(args, "--key-label");
    let mechanism_name = required(args, "--mechanism");
    let threads: usize = required(args, "--threads").parse().unwrap();
    let seconds: f64 = required(args, "--seconds").parse().unwrap();
    let pin = secrecy::SecretString::from(
        std::fs::read_to_string(required(args, "--pin-file"))
            .unwrap()
            .trim()
            .to_owned(),
    );
    let module = arg(args, "--module").unwrap_or_else(|| "/usr/lib/softhsm/libsofthsm2.so".into());
    let pkcs11 = Pkcs11::new(&module).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    // By slot ID when given: some modules' token info does not parse (opencryptoki's clock).
    let wanted_slot: Option<u64> = arg(args, "--slot").map(|id| id.parse().unwrap());
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|&slot| match wanted_slot {
            Some(id) => slot.id() == id,
            None => pkcs11
                .get_token_info(slot)
                .is_ok_and(|i| i.label() == token_label),
        })
        .expect("the token");
    let sessions: Vec<_> = (0..threads)
        .map(|_| pkcs11.open_ro_session(slot).unwrap())
        .collect();
    sessions[0].login(UserType::User, Some(&pin)).unwrap();
    let duration = Duration::from_secs_f64(seconds);
    let barrier = std::sync::Barrier::new(threads);
    let signed: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                let (barrier, key_label, mechanism_name) = (&barrier, &key_label, &mechanism_name);
                scope.spawn(move || {
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(key_label.as_bytes().to_vec()),
                        ])
                        .unwrap()[0];
                    let (mechanism, message): (Mechanism, Vec<u8>) = match mechanism_name.as_str() {
                        "ecdsa" => (Mechanism::Ecdsa, vec![0x5a; 32]),
                        "rsa-pss" => (
                            Mechanism::Sha256RsaPkcsPss(cryptoki::mechanism::rsa::PkcsPssParams {
                                hash_alg: cryptoki::mechanism::MechanismType::SHA256,
                                mgf: cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA256,
                                s_len: 32.into(),
                            }),
                            vec![0x5a; 512],
                        ),
                        _ => (Mechanism::Sha256RsaPkcs, vec![0x5a; 512]),
                    };
                    barrier.wait();
                    let start = Instant::now();
                    let mut count = 0u64;
                    while start.elapsed() < duration {
                        session.sign(&mechanism, key, &message).unwrap();
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    json!({
        "target": "raw",
        "scenario": format!("C_Sign {mechanism_name}"),
        "connections": threads,
        "throughput": signed as f64 / seconds,
        "ok": signed,
        "errors": 0,
    })
}
