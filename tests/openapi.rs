//! The native API answers as docs/openapi.yaml says: schemathesis (from the test venv)
//! generates requests from the document, sends them over mTLS to a running appliance and
//! checks statuses, content types and bodies against it.

mod common;

use std::process::Command;

use common::appliance::Appliance;
use common::{assert_success, python, repo_path, stderr, stdout};

/// `schemathesis run docs/openapi.yaml` as the dev TLS client `tls_name`, with `extra` options.
fn schemathesis(appliance: &Appliance, tls_name: &str, extra: &[&str]) -> std::process::Output {
    Command::new(python().with_file_name("schemathesis"))
        // Its cache goes into the working directory: the appliance's, not the repository.
        .current_dir(appliance.dir.path())
        .arg("run")
        .arg(repo_path("docs/openapi.yaml"))
        .args([
            "--url",
            &appliance.url,
            "--no-color",
            "-n",
            "25",
            "--seed",
            "1",
        ])
        .arg("--request-cert")
        .arg(appliance.path(&format!("tls/{tls_name}.pem")))
        .arg("--request-cert-key")
        .arg(appliance.path(&format!("tls/{tls_name}-key.pem")))
        .arg("--tls-verify")
        .arg(appliance.path("tls/tls-ca.pem"))
        // A schema-valid body is not a valid CSR: a CA must refuse most of what a generator
        // makes, so "valid data accepted" is the one check that does not apply.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(extra)
        .output()
        .expect("run schemathesis from the test venv")
}

#[test]
fn the_running_appliance_conforms_to_its_openapi_document() {
    let mut appliance = Appliance::prepare();
    appliance.start();
    // A CA client sees every operation (revoke and reload answer it 403, as documented).
    let output = schemathesis(&appliance, "istiod", &[]);
    assert_success(&output, "schemathesis");
    assert!(
        stdout(&output).contains("Tested: 11"),
        "{}",
        stdout(&output)
    );
    // An officer reaches revoke's and reload's own answers.
    let output = schemathesis(
        &appliance,
        "officer",
        &["--include-path-regex", "^/v1/(revoke|reload)$"],
    );
    assert_success(&output, "schemathesis");
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let verified = common::audit_verify(&appliance.path("audit.log"));
    assert!(verified.status.success(), "{}", stderr(&verified));
}
