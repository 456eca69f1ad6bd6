//! Rotation without downtime: a reload switches the active online intermediate under load
//! without failing a request; a broken reload keeps the running configuration; a root
//! rotation publishes both roots during the overlap and grows `spiffe_sequence`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::appliance::{Appliance, p256, runtime, send_signal, spire_csr, write};
use common::{assert_success, openssl_verify_chain, stderr, stdout};
use serde_json::Value;

/// `hsmca reload` as the officer.
fn hsmca_reload(appliance: &Appliance) -> std::process::Output {
    appliance.hsmca_as("officer", "reload").output().unwrap()
}

/// The subject CN of the certificate that issued the first certificate of `chain`.
fn issuer_of(answer: &Value) -> String {
    let chain = answer["chain"].as_str().unwrap();
    let issuer = &common::pem_blocks(chain)[1];
    let der = der::pem::decode_vec(issuer.as_bytes()).unwrap().1;
    let certificate = <x509_cert::Certificate as der::Decode>::from_der(&der).unwrap();
    certificate.tbs_certificate.subject.to_string()
}

const P256_PROFILE: &str = "issuer = \"online-p256\"\ndefault_ttl = \"720h\"";
const RSA_PROFILE: &str = "issuer = \"online-rsa2048\"\ndefault_ttl = \"720h\"";

#[test]
fn reloading_to_a_new_intermediate_under_load_fails_no_request() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let rt = runtime();
    // istiod's rate allows the load; spire's 100-request burst would not.
    let client = appliance.client("istiod");
    let csr = spire_csr(&p256(), &["spiffe://mesh.example"]);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (client, csr, stop, issued, answers) = (
                client.clone(),
                csr.clone(),
                stop.clone(),
                issued.clone(),
                answers.clone(),
            );
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let response = client.sign(&csr, "issuing-ca", Some("1h")).await.unwrap();
                    issued.fetch_add(1, Ordering::SeqCst);
                    answers
                        .lock()
                        .unwrap()
                        .push((response.status, response.json().unwrap()));
                }
            })
        })
        .collect();
    let wait_for = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while issued.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                issued.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(30);
    // The issuing-ca profile now signs with the RSA intermediate.
    appliance.write_config_with(|c| c.replacen(P256_PROFILE, RSA_PROFILE, 1));
    let output = hsmca_reload(&appliance);
    assert_success(&output, "hsmca reload");
    assert!(
        stdout(&output).contains("online-rsa2048"),
        "{}",
        stdout(&output)
    );
    let at_reload = issued.load(Ordering::SeqCst);
    wait_for(at_reload + 30);
    // A broken configuration is refused with the reason, and the running one stays.
    appliance.write_config_with(|c| {
        c.replacen(
            P256_PROFILE,
            "issuer = \"online-p384\"\ndefault_ttl = \"720h\"",
            1,
        )
    });
    let output = hsmca_reload(&appliance);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("issuer \"online-p384\" is not defined"),
        "{}",
        stderr(&output)
    );
    // So is a change to a section only a restart can change.
    appliance.write_config_with(|c| {
        c.replacen(P256_PROFILE, RSA_PROFILE, 1)
            .replace("max_body_bytes", "x")
            .replace("shutdown_grace = \"20s\"", "shutdown_grace = \"21s\"")
    });
    let output = hsmca_reload(&appliance);
    assert!(
        stderr(&output).contains("[server] changed; those sections need a restart"),
        "{}",
        stderr(&output)
    );
    let after_broken = issued.load(Ordering::SeqCst);
    wait_for(after_broken + 20);
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        rt.block_on(worker).unwrap();
    }

    let answers = answers.lock().unwrap();
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed during the reloads: {failed:?}"
    );
    let issuers: Vec<String> = answers
        .iter()
        .map(|(_, answer)| issuer_of(answer))
        .collect();
    let p256 = issuers.iter().filter(|i| i.contains("P-256")).count();
    let rsa = issuers.iter().filter(|i| i.contains("RSA")).count();
    assert!(
        p256 >= 30 && rsa >= 50,
        "{p256} under P-256, {rsa} under RSA"
    );
    // The refused reloads changed nothing: what completed after them (long after the last
    // request that started before the good reload) came from the new intermediate.
    assert!(issuers[after_broken..].iter().all(|i| i.contains("RSA")));
    // Old and new chains both verify.
    let tmp = tempfile::tempdir().unwrap();
    for (name, answer) in [
        ("old", &answers[0].1),
        ("new", &answers[answers.len() - 1].1),
    ] {
        let cert = write(
            tmp.path(),
            &format!("{name}.pem"),
            answer["certificate"].as_str().unwrap(),
        );
        let chain = write(
            tmp.path(),
            &format!("{name}-chain.pem"),
            answer["chain"].as_str().unwrap(),
        );
        openssl_verify_chain(&appliance.root_pem(), &chain, &cert);
    }

    // SIGHUP does the same: back to the P-256 intermediate.
    appliance.write_config("");
    let reloads = |appliance: &Appliance| {
        appliance
            .audit_records()
            .iter()
            .filter(|r| r["event"] == "config.reloaded")
            .count()
    };
    let before = reloads(&appliance);
    send_signal(appliance.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloads(&appliance) == before {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            appliance.server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = rt
        .block_on(client.sign(&csr, "issuing-ca", None))
        .unwrap()
        .json()
        .unwrap();
    assert!(
        issuer_of(&answer).contains("P-256"),
        "{}",
        issuer_of(&answer)
    );
    assert!(appliance.stop().success());
    let refused = appliance
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "config.reload.refused")
        .count();
    assert_eq!(refused, 2);
}

#[test]
fn a_root_rotation_publishes_both_roots_and_grows_the_bundle_sequence() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    let rt = runtime();
    let client = appliance.client("officer");
    let bundle = || -> (Value, String) {
        let spiffe = rt
            .block_on(client.send("GET", "/v1/bundle/spiffe", None, vec![]))
            .unwrap()
            .json()
            .unwrap();
        let pem = rt
            .block_on(client.send("GET", "/v1/bundle", None, vec![]))
            .unwrap()
            .body;
        (spiffe, String::from_utf8(pem).unwrap())
    };
    let root_2026 = std::fs::read_to_string(appliance.root_pem()).unwrap();
    let root_2027 = std::fs::read_to_string(appliance.path("ceremony/out/root-2027.pem")).unwrap();
    let (spiffe, pem) = bundle();
    assert_eq!(
        (
            spiffe["spiffe_sequence"].as_u64(),
            spiffe["keys"].as_array().unwrap().len()
        ),
        (Some(1), 1)
    );
    assert_eq!(pem, root_2026);

    // The overlap: both roots, the new one vouched for by the old one's cross-certificate.
    // The overlap, with an expiry margin wider than the intermediates' remaining five years,
    // so the expiry watch reports them.
    let overlap = |c: String| {
        c.replace(
            "roots = [\"ceremony/out/root-2026.pem\"]",
            "roots = [\"ceremony/out/root-2026.pem\", \"ceremony/out/root-2027.pem\"]\nissuer_expiry_warning = \"100000h\"",
        )
    };
    appliance.write_config_with(overlap);
    assert!(hsmca_reload(&appliance).status.success());
    let (spiffe, pem) = bundle();
    assert_eq!(spiffe["spiffe_sequence"].as_u64(), Some(2));
    assert_eq!(spiffe["keys"].as_array().unwrap().len(), 2);
    assert_eq!(pem, format!("{root_2026}{root_2027}"));
    let metrics = String::from_utf8(
        rt.block_on(client.send("GET", "/metrics", None, vec![]))
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains("hsmca_issuer_expiring{issuer=\"online-p256\"} 1"),
        "{metrics}"
    );
    assert!(
        appliance
            .server_log()
            .contains("online intermediate close to expiry")
    );
    // The same bundle again keeps its sequence.
    assert!(hsmca_reload(&appliance).status.success());
    assert_eq!(bundle().0["spiffe_sequence"].as_u64(), Some(2));
    // The cross-certificate links the roots: the new root verifies under the old one.
    let cross = appliance.path("ceremony/out/root-2027-cross-signed-by-2026.pem");
    openssl_verify_chain(&appliance.root_pem(), &cross, &cross);

    // Back to one root: another change, another sequence; kept across a restart.
    appliance.write_config("");
    assert!(hsmca_reload(&appliance).status.success());
    assert_eq!(bundle().0["spiffe_sequence"].as_u64(), Some(3));
    assert!(appliance.stop().success());
    appliance.start();
    let client = appliance.client("officer");
    let spiffe: Value = rt
        .block_on(client.send("GET", "/v1/bundle/spiffe", None, vec![]))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(spiffe["spiffe_sequence"].as_u64(), Some(3));
    assert!(appliance.stop().success());
}
