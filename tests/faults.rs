//! The appliance under HSM faults, through the fault-injecting PKCS#11 module
//! (softhsm/fault-module) in front of a fresh SoftHSM2 token: transient errors, a slow HSM, a
//! hung HSM, a vanished device. Throughout, nothing is handed out without its ledger row and
//! audit record, and the ledger holds nothing that was not handed out.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::appliance::{Appliance, runtime};
use common::load::{Load, Outcome, distinct_csrs, issued};
use common::{stderr, stdout};
use hsmca::api::client::Client;

/// Replaces the fault module's rules; `generation` makes each write differ, since the module
/// resets its `times=` counters only when the file changes.
fn set_faults(control: &Path, generation: u32, rules: &str) {
    std::fs::write(control, format!("# {generation}\n{rules}")).unwrap();
}

/// Lines of the module's injection log (`FUNCTION ACTION`).
fn injected(control: &Path) -> Vec<String> {
    let mut log = control.as_os_str().to_owned();
    log.push(".log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An appliance on the fault module whose HSM operations time out after one second, started;
/// and the fault module's control file.
fn started_with_one_second_timeout() -> (Appliance, PathBuf) {
    let mut appliance = Appliance::prepare();
    let control = appliance
        .use_fault_module(|text| text.replace("op_timeout_ms = 2000", "op_timeout_ms = 1000"));
    appliance.start();
    (appliance, control)
}

/// Signs `csr` alone with the issuing-ca profile and checks the answer: a certificate when
/// `refusal` is `None`, else a 503 with that error code. Returns the outcome for the books.
fn sign_one(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    csr: &str,
    refusal: Option<&str>,
) -> Outcome {
    let response = rt.block_on(client.sign(csr, "issuing-ca", None)).unwrap();
    let body = response.json().unwrap();
    match refusal {
        None => {
            assert_eq!(response.status, 200, "{body}");
            Outcome::Issued(body)
        }
        Some(code) => {
            assert_eq!(
                (response.status, body["error"]["code"].as_str()),
                (503, Some(code)),
                "{body}"
            );
            Outcome::Refused(response.status, body)
        }
    }
}

/// Waits (up to 20 s) until the injection log has `count` lines.
fn wait_for_injections(control: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while injected(control).len() < count {
        assert!(
            Instant::now() < deadline,
            "the fault module injected {:?}, expected {count} faults",
            injected(control)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn transient_hsm_errors_under_load_fail_at_most_one_request_each_and_heal_without_restart() {
    let mut appliance = Appliance::prepare();
    let control = appliance.use_fault_module(|text| text);
    appliance.start();
    let rt = runtime();
    let load = Load::start(
        &rt,
        &appliance.client("istiod"),
        8,
        &distinct_csrs(16),
        "issuing-ca",
    );
    // One fault at a time on the signing path, each on the next call only; every kind the
    // recovery code treats differently. With each, how many injections it makes.
    let faults = [
        ("C_Sign CKR_DEVICE_ERROR times=1", 1),
        ("C_Sign CKR_SESSION_HANDLE_INVALID times=1", 1),
        ("C_SignInit CKR_DEVICE_REMOVED times=1", 1),
        ("C_SignInit CKR_USER_NOT_LOGGED_IN times=1", 1),
        // The session is reopened after the first failure; fail that too.
        (
            "C_Sign CKR_DEVICE_ERROR times=1\nC_OpenSession CKR_DEVICE_ERROR times=1",
            2,
        ),
        // A slow HSM: 20 signatures at 100 ms each.
        ("C_Sign delay=100ms times=20", 20),
    ];
    let mut expected = 0;
    for (generation, (fault, injections)) in faults.iter().enumerate() {
        set_faults(&control, generation as u32, fault);
        expected += injections;
        wait_for_injections(&control, expected);
    }
    set_faults(&control, 99, "");
    let before_heal = load.finish(&rt);
    // Healed without a restart: ready, and the next requests all succeed.
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    let client = appliance.client("istiod");
    let after: Vec<Outcome> = distinct_csrs(8)
        .iter()
        .map(|csr| {
            let response = rt.block_on(client.sign(csr, "issuing-ca", None)).unwrap();
            assert_eq!(
                response.status,
                200,
                "after the faults: {:?}",
                response.json()
            );
            Outcome::Issued(response.json().unwrap())
        })
        .collect();

    let failures: Vec<_> = before_heal
        .iter()
        .filter(|o| !matches!(o, Outcome::Issued(_)))
        .collect();
    let error_faults = faults.len() - 1;
    assert!(
        failures.len() <= error_faults,
        "{} failed requests for {error_faults} one-call faults: {failures:?}",
        failures.len()
    );
    for failure in &failures {
        assert!(
            matches!(failure, Outcome::Refused(503, answer) if answer["error"]["code"] == "hsm_unavailable"),
            "a fault must surface as 503 hsm_unavailable: {failure:?}"
        );
    }
    assert!(
        issued(&before_heal).len() > 20,
        "the load went on through the faults"
    );
    let mut outcomes = before_heal;
    outcomes.extend(after);
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_hung_hsm_answers_503_within_the_timeout_fails_readiness_and_recovers_when_it_returns() {
    let (mut appliance, control) = started_with_one_second_timeout();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(12);
    let mut outcomes = vec![sign_one(&rt, &client, &csrs[0], None)];

    set_faults(&control, 1, "C_Sign hang");
    // More requests than sessions, so some wait in the queue: every one must come back.
    let hung: Vec<_> = rt.block_on(async {
        let tasks: Vec<_> = csrs[1..11]
            .iter()
            .map(|csr| {
                let (client, csr) = (client.clone(), csr.clone());
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(30),
                        client.sign(&csr, "issuing-ca", None),
                    )
                    .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    for answer in hung {
        let response = answer
            .expect("a request to a hung HSM must not hang")
            .unwrap();
        let body = response.json().unwrap();
        assert_eq!(response.status, 503, "{body}");
        assert_eq!(body["error"]["code"], "hsm_timeout", "{body}");
        assert!(response.retry_after.is_some());
        outcomes.push(Outcome::Refused(response.status, body));
    }
    assert!(injected(&control).iter().any(|line| line == "C_Sign hang"));
    // Readiness signs through the same sessions: it fails too.
    appliance.wait_for_readiness(503, Duration::from_secs(20));

    // The HSM answers again: ready, and signing, without a restart.
    set_faults(&control, 2, "");
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    outcomes.push(sign_one(&rt, &client, &csrs[11], None));
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_signature_that_comes_back_after_its_request_gave_up_is_never_recorded() {
    let (mut appliance, control) = started_with_one_second_timeout();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(2);
    // A lone request, so the check and the record would run on the session's thread right
    // after the signature: which comes half a second after the request gave up.
    set_faults(&control, 1, "C_Sign delay=1500ms times=1\n");
    let outcomes = [
        sign_one(&rt, &client, &csrs[0], Some("hsm_timeout")),
        sign_one(&rt, &client, &csrs[1], None),
    ];
    // Once the late signature is back and its session idle, what came after it has run.
    appliance.wait_for_metric(
        "hsmca_hsm_pool_busy",
        0,
        Duration::from_secs(10),
        "the late signature to come back",
    );
    assert_eq!(
        injected(&control)
            .iter()
            .filter(|line| line.starts_with("C_Sign delay"))
            .count(),
        1
    );
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_vanished_device_fails_readiness_and_signing_until_it_returns() {
    let mut appliance = Appliance::prepare();
    let control = appliance.use_fault_module(|text| text);
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csr = &distinct_csrs(1)[0];
    let mut outcomes = Vec::new();
    let mut sign = |refusal| outcomes.push(sign_one(&rt, &client, csr, refusal));
    sign(None);
    // Every call the appliance makes fails, re-initialising the module included.
    set_faults(&control, 1, "* CKR_DEVICE_REMOVED");
    sign(Some("hsm_unavailable"));
    appliance.wait_for_readiness(503, Duration::from_secs(20));
    sign(Some("hsm_unavailable"));
    set_faults(&control, 2, "");
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    sign(None);
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn past_max_in_flight_a_signing_request_is_refused_at_once_with_503_and_audited() {
    let mut appliance = Appliance::prepare();
    // One slot, and an HSM that holds each signature until told to go on; the operation
    // timeout is long so the held request keeps its slot for the whole test.
    let control = appliance.use_fault_module(|text| {
        text.replace("op_timeout_ms = 2000", "op_timeout_ms = 60000")
            .replace("[server]\n", "[server]\nmax_in_flight = 1\n")
    });
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(3);
    set_faults(&control, 1, "C_Sign hang");
    let held = {
        let (client, csr) = (client.clone(), csrs[0].clone());
        rt.spawn(async move { client.sign(&csr, "issuing-ca", None).await })
    };
    // The slot is taken once the signature is inside the HSM.
    wait_for_injections(&control, 1);

    let refused = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                client.sign(&csrs[1], "issuing-ca", None),
            )
            .await
        })
        .expect("a request over the limit is answered at once, not queued")
        .unwrap();
    let body = refused.json().unwrap();
    assert_eq!(refused.status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_in_flight"),
        "{body}"
    );
    assert!(
        refused.retry_after.is_some(),
        "a shed request says when to retry"
    );
    let mut outcomes = vec![Outcome::Refused(refused.status, body)];

    // The HSM goes on: the held request is signed, and its slot frees again.
    set_faults(&control, 2, "");
    let response = rt.block_on(held).unwrap().unwrap();
    assert_eq!(response.status, 200, "{:?}", response.json());
    outcomes.push(Outcome::Issued(response.json().unwrap()));
    let response = rt
        .block_on(client.sign(&csrs[2], "issuing-ca", None))
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.json());
    outcomes.push(Outcome::Issued(response.json().unwrap()));

    let failed: Vec<_> = appliance
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "sign.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["details"]["code"], "overloaded");
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_hung_signature_holds_only_its_own_request_and_its_session_is_replaced() {
    let mut appliance = Appliance::prepare();
    let control = appliance
        .use_fault_module(|text| text.replace("[hsm.pool]\n", "[hsm.pool]\nsessions = 2\n"));
    appliance.start();
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(8);
    // Both sessions busy for a second with the first two requests, so the next six queue up
    // behind them; then one signature hangs. Only its own request may wait for it: the other
    // session signs every queued one well within the 2 s operation timeout.
    set_faults(
        &control,
        1,
        "C_Sign delay=1000ms times=2\nC_Sign hang times=1\n",
    );
    let answers: Vec<_> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (index, csr) in csrs.iter().enumerate() {
            let (client, csr) = (client.clone(), csr.clone());
            tasks.push(tokio::spawn(async move {
                client.sign(&csr, "issuing-ca", None).await.unwrap()
            }));
            if index == 1 {
                // The first two are inside the HSM before the rest arrive.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    let mut outcomes = Vec::new();
    for response in answers {
        let body = response.json().unwrap();
        outcomes.push(if response.status == 200 {
            Outcome::Issued(body)
        } else {
            assert_eq!(
                (response.status, body["error"]["code"].as_str()),
                (503, Some("hsm_timeout")),
                "{body}"
            );
            Outcome::Refused(response.status, body)
        });
    }
    assert_eq!(
        injected(&control)
            .iter()
            .filter(|line| *line == "C_Sign hang")
            .count(),
        1
    );
    assert_eq!(
        issued(&outcomes).len(),
        7,
        "one request waits for the hung signature, the other session signs the other seven: {:?}",
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Issued(_) => 200,
                Outcome::Refused(status, _) => *status,
                Outcome::Lost(_) => 0,
            })
            .collect::<Vec<_>>()
    );

    // Past twice the operation timeout the hung session is abandoned and replaced; the module
    // (one instance per process) cannot be re-initialised under the hung call, and is not
    // held up trying: the pool signs on at full size.
    appliance.wait_for_metric(
        "hsmca_hsm_pool_stuck_sessions",
        1,
        Duration::from_secs(10),
        "the hung session is abandoned",
    );
    assert_eq!(appliance.metric("hsmca_hsm_pool_sessions"), 2);
    for csr in distinct_csrs(4) {
        let started = Instant::now();
        let response = rt.block_on(client.sign(&csr, "issuing-ca", None)).unwrap();
        let body = response.json().unwrap();
        assert_eq!(response.status, 200, "beside the hung call: {body}");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        outcomes.push(Outcome::Issued(body));
    }
    appliance.wait_for_readiness(200, Duration::from_secs(5));
    let log = appliance.server_log();
    assert!(
        log.contains("abandoning the HSM session and starting another")
            && log
                .contains("cannot re-initialise the PKCS#11 module: 1 call(s) still running in it"),
        "{log}"
    );

    // The hung call returns: its thread ends, and its signature goes nowhere.
    set_faults(&control, 2, "");
    appliance.wait_for_metric(
        "hsmca_hsm_pool_stuck_sessions",
        0,
        Duration::from_secs(10),
        "the abandoned call returned",
    );
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_serial_refill_that_hangs_holds_up_only_its_own_request() {
    let mut appliance = Appliance::prepare();
    let control = appliance
        .use_fault_module(|text| text.replace("[hsm.pool]\n", "[hsm.pool]\nsessions = 2\n"));
    appliance.start();
    // The first fetch of serial numbers from the HSM's RNG (the first request's) hangs.
    set_faults(&control, 1, "C_GenerateRandom hang times=1\n");
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(6);
    let mut outcomes = vec![sign_one(&rt, &client, &csrs[0], Some("hsm_timeout"))];
    assert_eq!(injected(&control), ["C_GenerateRandom hang"]);
    // The hung refill holds its pool session only: the next request refills on the other one.
    for csr in &csrs[1..] {
        outcomes.push(sign_one(&rt, &client, csr, None));
    }
    appliance.wait_for_metric(
        "hsmca_hsm_pool_stuck_sessions",
        1,
        Duration::from_secs(10),
        "the hung refill's session is abandoned",
    );
    set_faults(&control, 2, "");
    appliance.wait_for_metric(
        "hsmca_hsm_pool_stuck_sessions",
        0,
        Duration::from_secs(10),
        "the abandoned refill returned",
    );
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_reload_whose_key_check_hangs_is_refused_in_time_and_the_next_reload_uses_another_session() {
    let mut appliance = Appliance::prepare();
    // One pool session, whose key handles are all found (by readiness and one request)
    // before the fault: only the reload looks keys up afterwards.
    let control = appliance
        .use_fault_module(|text| text.replace("[hsm.pool]\n", "[hsm.pool]\nsessions = 1\n"));
    appliance.start();
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    let rt = runtime();
    let client = appliance.client("istiod");
    let csrs = distinct_csrs(2);
    let mut outcomes = Vec::new();
    let mut sign = |csr: &str| {
        let response = rt.block_on(client.sign(csr, "issuing-ca", None)).unwrap();
        let body = response.json().unwrap();
        assert_eq!(response.status, 200, "{body}");
        outcomes.push(Outcome::Issued(body));
    };
    sign(&csrs[0]);

    set_faults(&control, 1, "C_FindObjectsInit hang times=1\n");
    let started = Instant::now();
    let refused = appliance.hsmca_as("officer", "reload").output().unwrap();
    let took = started.elapsed();
    let said = format!("{}{}", stdout(&refused), stderr(&refused));
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("reload_timed_out") && said.contains("the running configuration stays"),
        "{said}"
    );
    // 4 × the 2 s operation timeout, and a margin for a loaded machine.
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert_eq!(injected(&control), ["C_FindObjectsInit hang"]);

    // The key check before still hangs: this reload checks the keys on another session.
    let reloaded = appliance.hsmca_as("officer", "reload").output().unwrap();
    assert!(
        reloaded.status.success(),
        "{}{}",
        stdout(&reloaded),
        stderr(&reloaded)
    );
    assert!(appliance.server_log().contains(
        "a PKCS#11 call on the control session has not returned; opening another session"
    ));
    sign(&csrs[1]);
    let events: Vec<_> = appliance
        .audit_records()
        .iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("config.reload"))
        })
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["config.reload.refused", "config.reloaded"]);

    set_faults(&control, 2, "");
    appliance.stop_and_assert_books_balance(&outcomes);
}

#[test]
fn a_token_with_few_sessions_gets_a_pool_of_its_size_and_says_so() {
    let mut appliance = Appliance::prepare();
    // Three sessions on the token, eight asked for: one is the control session's, so the pool
    // gets two, and the start says so instead of failing.
    appliance.use_fault_module(|text| text.replace("[hsm.pool]\n", "[hsm.pool]\nsessions = 8\n"));
    appliance
        .env
        .push(("HSMCA_FAULT_MAX_SESSIONS".into(), "3".into()));
    appliance.start();
    let (_, metrics) = appliance.ops_get("/metrics");
    assert!(
        metrics.contains("\nhsmca_hsm_pool_sessions 2\n"),
        "{metrics}"
    );
    let rt = runtime();
    let load = Load::start(
        &rt,
        &appliance.client("istiod"),
        4,
        &distinct_csrs(8),
        "issuing-ca",
    );
    appliance.wait_for_readiness(200, Duration::from_secs(20));
    let outcomes = load.finish(&rt);
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|o| matches!(o, Outcome::Issued(_))),
        "{outcomes:?}"
    );
    let log = appliance.server_log();
    assert!(
        log.contains("hsm.pool.sessions is more than the token allows beside the control session")
            && log.contains("token_allows=3")
            && log.contains("pool_sessions=2"),
        "{log}"
    );
    appliance.stop_and_assert_books_balance(&outcomes);
}
