//! The `hsmca hsm` commands, run as the real binary against a fresh SoftHSM2 token.

mod common;

use common::{PKCS11_SPY_MODULE, SOFTHSM_MODULE, TestToken, stderr, stdout};
use std::os::unix::fs::PermissionsExt;

/// The one `error: ...` line a failed command prints.
fn error_line(output: &std::process::Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit code: {}",
        stderr(output)
    );
    let text = stderr(output);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {text}");
    errors[0].to_owned()
}

#[test]
fn keygen_and_info_show_keys_with_their_protection() {
    let token = TestToken::create("cli");
    let config = token.default_config();
    let config = config.to_str().unwrap();
    let pem_path = token.dir.path().join("root.pub.pem");

    let out = token.hsmca(&[
        "--config",
        config,
        "hsm",
        "keygen",
        "--label",
        "root",
        "--type",
        "ecdsa-p256",
        "--public-key-out",
        pem_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.starts_with("generated ecdsa-p256 key pair \"root\" on token \"cli\""),
        "{report}"
    );
    assert!(report.contains("SPKI SHA-256:  "), "{report}");
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    assert!(report.contains(&pem), "the PEM printed is the PEM written");
    // openssl reads the public key and agrees on the fingerprint.
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(der.status.success());
    let fingerprint = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &der.stdout,
    ));
    assert!(report.contains(&fingerprint), "{report}");

    let info = token.hsmca(&["--config", config, "hsm", "info"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info = stdout(&info);
    assert!(
        info.contains(&format!("module:   {SOFTHSM_MODULE}")),
        "{info}"
    );
    assert!(
        info.contains("* slot"),
        "the selected token is marked: {info}"
    );
    assert!(info.contains("CKM_ECDSA"), "{info}");
    assert!(info.contains("keys on \"cli\": 2"), "{info}");
    assert!(info.contains("CKO_PRIVATE_KEY \"root\""), "{info}");
    assert!(
        info.contains("token private sensitive always-sensitive !extractable never-extractable local sign !decrypt !derive !unwrap"),
        "{info}"
    );

    // Neither a second key with the label nor an existing output file is accepted, and the
    // refused output file leaves no key behind.
    let again = token.hsmca(&[
        "--config",
        config,
        "hsm",
        "keygen",
        "--label",
        "root",
        "--type",
        "ecdsa-p384",
    ]);
    assert_eq!(
        error_line(&again),
        "error: a key labelled \"root\" already exists on the token: choose a new label (keys are never replaced)"
    );
    let clash = token.hsmca(&[
        "--config",
        config,
        "hsm",
        "keygen",
        "--label",
        "other",
        "--type",
        "ed25519",
        "--public-key-out",
        pem_path.to_str().unwrap(),
    ]);
    assert!(error_line(&clash).contains("already exists: outputs are never overwritten"));
    let info = stdout(&token.hsmca(&["--config", config, "hsm", "info"]));
    assert!(info.contains("keys on \"cli\": 2"), "{info}");
    assert_eq!(
        std::fs::read_to_string(&pem_path).unwrap(),
        pem,
        "file untouched"
    );
}

#[test]
fn a_wrong_pin_fails_once_with_one_login_attempt() {
    let token = TestToken::create("pin");
    let wrong_pin = "918273645";
    let wrong_pin_file = token.dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin_file, wrong_pin).unwrap();
    std::fs::set_permissions(&wrong_pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // pkcs11-spy (OpenSC) sits between hsmca and SoftHSM2 and logs every PKCS#11 call.
    let config = token.write_config(
        "spy.toml",
        &format!(
            "module = \"{PKCS11_SPY_MODULE}\"\ntoken_label = \"pin\"\npin_file = \"{}\"",
            wrong_pin_file.display()
        ),
    );
    let spy_log = token.dir.path().join("spy.log");
    let out = token
        .hsmca_command(&["--config", config.to_str().unwrap(), "hsm", "info"])
        .env("PKCS11SPY", SOFTHSM_MODULE)
        .env("PKCS11SPY_OUTPUT", &spy_log)
        .env("HSMCA_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(
        error_line(&out),
        "error: the token \"pin\" rejected the user PIN (CKR_PIN_INCORRECT); hsmca did not retry, because tokens lock after a few failures: fix the PIN source and run again"
    );
    assert!(stdout(&out).is_empty());
    let combined = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!combined.contains(wrong_pin), "the PIN leaked: {combined}");

    let calls = std::fs::read_to_string(&spy_log).unwrap();
    let logins = calls.lines().filter(|l| l.ends_with(": C_Login")).count();
    assert_eq!(logins, 1, "exactly one login attempt:\n{calls}");
    assert_eq!(calls.matches("CKR_PIN_INCORRECT").count(), 1);

    // The token itself saw a single failure: the PIN counter is low, not final, not locked.
    let listing = stdout(&token.pkcs11_tool(&["--list-token-slots"]));
    assert!(listing.contains("user PIN count low"), "{listing}");
    assert!(
        !listing.contains("final try") && !listing.contains("locked"),
        "{listing}"
    );

    // And the right PIN still works.
    let ok = token.hsmca(&[
        "--config",
        token.default_config().to_str().unwrap(),
        "hsm",
        "info",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn the_pin_never_reaches_output_or_logs() {
    let token = TestToken::create("secret");
    let pin = token.user_pin();
    let config = token.write_config(
        "env.toml",
        &format!(
            "module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"secret\"\npin_env = \"HSMCA_TEST_PIN\""
        ),
    );
    let config = config.to_str().unwrap();
    for args in [
        vec![
            "--config", config, "hsm", "keygen", "--label", "k", "--type", "rsa-2048",
        ],
        vec!["--config", config, "hsm", "info"],
    ] {
        let out = token
            .hsmca_command(&args)
            .env("HSMCA_TEST_PIN", &pin)
            .env("HSMCA_LOG", "trace")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("logged in to token"),
            "trace logging was on"
        );
        let combined = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!combined.contains(&pin), "the PIN leaked: {combined}");
    }
}

#[test]
fn configuration_mistakes_get_one_clear_error_each() {
    let token = TestToken::create("errors");
    let pin = token.pin_file();
    let pin = pin.display();
    let open_pin = token.dir.path().join("open.pin");
    std::fs::write(&open_pin, "1234").unwrap();
    std::fs::set_permissions(&open_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            format!("module = \"/nonexistent/libpkcs11.so\"\ntoken_label = \"errors\"\npin_file = \"{pin}\""),
            "error: PKCS#11 module /nonexistent/libpkcs11.so does not exist: install the HSM vendor's library (SoftHSM2: apt-get install softhsm2) or fix `hsm.module`".to_owned(),
        ),
        (
            format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"nope\"\npin_file = \"{pin}\""),
            "error: no token with label \"nope\" in this module (tokens present: \"errors\" (serial ".to_owned(),
        ),
        (
            format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"errors\"\npin_file = \"{}\"", open_pin.display()),
            format!("error: PIN file {} has mode 644, readable by other users: run `chmod 600 {}`", open_pin.display(), open_pin.display()),
        ),
        (
            format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"errors\"\npin_env = \"HSMCA_SURELY_UNSET\""),
            "error: environment variable HSMCA_SURELY_UNSET named by `hsm.pin_env` is not set".to_owned(),
        ),
        (
            format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"errors\"\npin_file = \"{pin}\"\npin_env = \"X\""),
            "error: invalid [hsm] configuration: set exactly one of `hsm.pin_file` and `hsm.pin_env`".to_owned(),
        ),
        (
            format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"errors\"\npin_file = \"{pin}\"\nslot = 0"),
            "unknown field `slot`".to_owned(),
        ),
    ];
    for (index, (hsm_section, expected)) in cases.iter().enumerate() {
        let config = token.write_config(&format!("case{index}.toml"), hsm_section);
        let out = token.hsmca(&["--config", config.to_str().unwrap(), "hsm", "info"]);
        let line = error_line(&out);
        assert!(line.contains(expected.as_str()), "case {index}: {line}");
    }

    let missing = token.hsmca(&["--config", "/nonexistent/hsmca.toml", "hsm", "info"]);
    assert!(
        error_line(&missing).starts_with("error: cannot read config file /nonexistent/hsmca.toml")
    );

    // A ceremony names its own config; there is no default for it.
    let out = token.hsmca(&["ceremony", "root", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        "error: a ceremony needs its config file: hsmca ceremony root --config FILE.toml"
    );
    let out = token.hsmca(&["ceremony", "cross-sign", "--config", "/nonexistent/x.toml"]);
    assert!(
        error_line(&out).starts_with("error: cannot read ceremony config /nonexistent/x.toml"),
        "{}",
        error_line(&out)
    );

    // An unsupported key type is a usage error (exit 2) that lists the choices.
    let config = token.default_config();
    let out = token.hsmca(&[
        "--config",
        config.to_str().unwrap(),
        "hsm",
        "keygen",
        "--label",
        "k",
        "--type",
        "dsa-1024",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unsupported key type \"dsa-1024\": use one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519"),
        "{}",
        stderr(&out)
    );
}
