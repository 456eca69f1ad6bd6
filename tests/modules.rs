//! hsmca on PKCS#11 modules other than SoftHSM2, each set up by its script in softhsm/:
//! opencryptoki's software token (a daemon, a token whose info has a malformed clock, RSA
//! only with PSS) and a TPM 2.0 token (tpm2-pkcs11 over swtpm: a module that derives the
//! public key's usage itself, three object slots, slow key generation). On each: keys are
//! generated with the safe attributes (as OpenSC's pkcs11-tool reads them), what the module
//! lacks is refused naming the mechanism, an online intermediate is made by ceremony (its key
//! on the module, certified by the development root on SoftHSM2), and `hsmca serve` issues
//! under load with every certificate in the ledger and the audit log.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::appliance::{Appliance, runtime};
use common::load::{Load, Outcome, distinct_csrs, issued};
use common::{assert_success, repo_path, stderr, stdout};

/// A token on another module, made by its setup script in a directory of its own.
struct ModuleToken {
    /// The module's name, for messages.
    name: &'static str,
    /// The PKCS#11 module.
    module: PathBuf,
    /// The token's label.
    label: String,
    /// The user PIN's file.
    pin_file: PathBuf,
    /// What the module needs in the environment of the process that loads it.
    env: Vec<(String, String)>,
    /// The script's directory (PINs, and for the TPM its state and daemon).
    dir: tempfile::TempDir,
}

impl ModuleToken {
    /// Runs `script DIR LABEL` and reads the `export NAME=VALUE` lines it prints.
    fn set_up(name: &'static str, script: &str, label: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("bash")
            .arg(repo_path(script))
            .arg(dir.path())
            .arg(label)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{script} failed: {}",
            stderr(&output)
        );
        let exports: Vec<(String, String)> = stdout(&output)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.trim_matches('"').to_owned()))
            .collect();
        let get = |suffix: &str| {
            exports
                .iter()
                .find(|(name, _)| name == &format!("{prefix}_{suffix}"))
                .map(|(_, value)| value.clone())
                .unwrap_or_else(|| panic!("{script} printed no {prefix}_{suffix}: {exports:?}"))
        };
        ModuleToken {
            name,
            module: get("MODULE").into(),
            label: get("LABEL"),
            pin_file: get("PIN_FILE").into(),
            env: exports
                .iter()
                .filter(|(name, _)| !name.starts_with("HSMCA_"))
                .cloned()
                .collect(),
            dir,
        }
    }

    /// opencryptoki's software token (one per machine: the script makes it afresh).
    fn opencryptoki() -> Self {
        Self::set_up(
            "opencryptoki",
            "softhsm/opencryptoki-token.sh",
            "hsmca-ock",
            "HSMCA_OCK",
        )
    }

    /// A tpm2-pkcs11 token on a software TPM of its own.
    fn tpm() -> Self {
        Self::set_up(
            "tpm2-pkcs11",
            "softhsm/tpm-token.sh",
            "hsmca-tpm",
            "HSMCA_TPM",
        )
    }

    /// The `[hsm]` lines for this token.
    fn hsm_lines(&self) -> String {
        format!(
            "module = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
            self.module.display(),
            self.label,
            self.pin_file.display()
        )
    }

    /// `hsmca ARGS` with the module's environment.
    fn hsmca(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hsmca"))
            .args(args)
            .envs(self.env.iter().cloned())
            .env_remove("HSMCA_CONFIG")
            .output()
            .unwrap()
    }

    /// A config file with only `[hsm]`, for `hsmca hsm …`.
    fn hsm_config(&self) -> PathBuf {
        let path = self.dir.path().join("hsm.toml");
        std::fs::write(&path, format!("[hsm]\n{}", self.hsm_lines())).unwrap();
        path
    }

    /// `hsmca hsm keygen` of a `key_type` key labelled `label`.
    fn keygen(&self, label: &str, key_type: &str) -> Output {
        let config = self.hsm_config();
        self.hsmca(&[
            "--config",
            config.to_str().unwrap(),
            "hsm",
            "keygen",
            "--label",
            label,
            "--type",
            key_type,
        ])
    }

    /// Checks with OpenSC's pkcs11-tool that the private key `label` is sensitive, never
    /// extractable, and signs only.
    fn assert_safe(&self, label: &str) {
        let pin = std::fs::read_to_string(&self.pin_file).unwrap();
        let listing = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", pin.trim()])
            .args(["--list-objects", "--type", "privkey", "--label", label])
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        assert_success(&listing, "pkcs11-tool --list-objects");
        let listing = stdout(&listing);
        assert!(
            listing.contains("Access:     sensitive, always sensitive, never extractable, local"),
            "{}: {listing}",
            self.name
        );
        assert!(
            listing.contains("Usage:      sign\n"),
            "{}: sign only: {listing}",
            self.name
        );
    }
}

impl Drop for ModuleToken {
    fn drop(&mut self) {
        // The TPM's daemon lives as long as its token.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("swtpm.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Makes the online intermediate `label` the ceremony way (softhsm/online-intermediate.sh): a
/// key ceremony on the module's token, then the development root (on the appliance's SoftHSM2
/// token) certifies its public key. Returns the certificate's path, relative to the
/// appliance's directory.
fn online_intermediate(
    appliance: &Appliance,
    token: &ModuleToken,
    label: &str,
    key_type: &str,
) -> String {
    let ran = Command::new(repo_path("softhsm/online-intermediate.sh"))
        .arg(appliance.path("ceremony"))
        .args([label, key_type])
        .arg(&token.module)
        .arg(&token.label)
        .arg(&token.pin_file)
        .arg("hsmca-dev")
        .arg(appliance.token.pin_file())
        .env("HSMCA", env!("CARGO_BIN_EXE_hsmca"))
        .env("SOFTHSM2_CONF", appliance.token.softhsm_conf())
        .envs(token.env.iter().cloned())
        .output()
        .unwrap();
    assert_success(
        &ran,
        &format!("ceremonies for {label} with its key on {}", token.name),
    );
    format!("ceremony/out/{label}.pem")
}

/// Points the appliance's two issuers at new online intermediates on the module (`p256` for
/// `online-p256`, `rsa` for `online-rsa2048`, each a key label and a signature algorithm
/// line or "") and its `[hsm]` at the module's token.
fn configure_on(
    appliance: &mut Appliance,
    token: &ModuleToken,
    p256: (&str, &str),
    rsa: (&str, &str),
) {
    let certificates = [
        online_intermediate(appliance, token, p256.0, token_key_type(p256.0)),
        online_intermediate(appliance, token, rsa.0, token_key_type(rsa.0)),
    ];
    let hsm_lines = token.hsm_lines();
    appliance.write_config_with(|text| {
        let start = text.find("module = ").unwrap();
        let end = text.find("\n[hsm.pool]").unwrap();
        let mut text = format!("{}{hsm_lines}{}", &text[..start], &text[end..]);
        for (old, label, algorithm, certificate) in [
            ("online-p256-2026", p256.0, p256.1, &certificates[0]),
            ("online-rsa2048-2026", rsa.0, rsa.1, &certificates[1]),
        ] {
            text = text
                .replace(
                    &format!("certificate = \"ceremony/out/{old}.pem\""),
                    &format!("certificate = \"{certificate}\"\n{algorithm}"),
                )
                .replace(
                    &format!("key_label = \"{old}\""),
                    &format!("key_label = \"{label}\""),
                );
        }
        text
    });
    appliance.env.extend(
        token
            .env
            .iter()
            .map(|(name, value)| (name.clone(), PathBuf::from(value))),
    );
}

/// The key type a test label names (`…-p256-…` or `…-rsa…`).
fn token_key_type(label: &str) -> &'static str {
    if label.contains("p256") {
        "ecdsa-p256"
    } else {
        "rsa-2048"
    }
}

/// Issues under load from 4 connections for `seconds`, and for the RSA issuer's profile once;
/// every request must be issued, and the books must hold exactly what was handed out.
fn issue_under_load_and_check_the_books(appliance: &mut Appliance, seconds: u64) -> usize {
    let rt = runtime();
    let client = appliance.client("istiod");
    let load = Load::start(&rt, &client, 4, &distinct_csrs(16), "issuing-ca");
    std::thread::sleep(Duration::from_secs(seconds));
    let mut outcomes = load.finish(&rt);
    let rsa = rt
        .block_on(client.sign(&distinct_csrs(1)[0], "issuing-ca-rsa", None))
        .unwrap();
    outcomes.push(match rsa.status {
        200 => Outcome::Issued(rsa.json().unwrap()),
        status => Outcome::Refused(status, rsa.json().unwrap()),
    });
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|outcome| !matches!(outcome, Outcome::Issued(_)))
        .collect();
    assert!(
        refused.is_empty(),
        "{refused:?}\n{}",
        appliance.server_log()
    );
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let answers = issued(&outcomes);
    appliance.assert_recorded(&answers);
    answers.len()
}

/// Checks with openssl that a certificate of the RSA issuer (read back with `hsmca certs
/// show`) is signed with `algorithm_oid_name`.
fn assert_signed_with(appliance: &Appliance, algorithm_oid_name: &str) {
    let ledger_certificate = appliance
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "sign.issued" && r["details"]["issuer"] == "online-rsa2048")
        .expect("an issuance by the RSA issuer");
    let serial = ledger_certificate["details"]["serial"].as_str().unwrap();
    let shown = appliance
        .token
        .hsmca_command(&["certs", "show", serial])
        .arg("--config")
        .arg(appliance.config_path())
        .output()
        .unwrap();
    assert_success(&shown, "certs show");
    let pem = stdout(&shown);
    let pem = &pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..];
    let file = appliance.path("rsa-issued.pem");
    std::fs::write(&file, pem).unwrap();
    let text = common::openssl_text(&file);
    assert!(
        text.contains(&format!("Signature Algorithm: {algorithm_oid_name}")),
        "{text}"
    );
}

#[test]
fn opencryptoki_finds_its_token_refuses_what_it_lacks_and_serves_rsa_with_pss() {
    let token = ModuleToken::opencryptoki();
    // The soft token's clock reads "08:29:11"-style: the token is still found and listed.
    let config = token.hsm_config();
    let info = token.hsmca(&["--config", config.to_str().unwrap(), "hsm", "info"]);
    assert_success(&info, "hsm info on opencryptoki");
    assert!(stdout(&info).contains("\"hsmca-ock\""), "{}", stdout(&info));

    // No EC in opencryptoki 3.8: refused by name, before the HSM is asked.
    let refused = token.keygen("no-ec", "ecdsa-p256");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("does not support CKM_EC_KEY_PAIR_GEN"),
        "{}",
        stderr(&refused)
    );
    let made = token.keygen("rsa-probe", "rsa-2048");
    assert_success(&made, "rsa-2048 keygen on opencryptoki");
    token.assert_safe("rsa-probe");

    // Its RSA signs with PSS only (no CKM_SHA256_RSA_PKCS): an issuer left at the usual
    // PKCS#1 v1.5 is refused at start, naming the mechanism and what the token offers.
    let mut appliance = Appliance::prepare();
    let pss = "signature_algorithm = \"rsa-pss-sha256\"";
    configure_on(
        &mut appliance,
        &token,
        ("online-rsa-a-2026", pss),
        ("online-rsa2048-b-2026", ""),
    );
    let refused = appliance.serve_command().output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused)
            .contains("does not support CKM_SHA256_RSA_PKCS, which rsa-pkcs1-sha256 needs")
            && stderr(&refused).contains("rsa-pss-sha256"),
        "{}",
        stderr(&refused)
    );

    // Both issuers with PSS: it serves, under load, and the books hold.
    let mut appliance = Appliance::prepare();
    configure_on(
        &mut appliance,
        &token,
        ("online-rsa-c-2026", pss),
        ("online-rsa2048-d-2026", pss),
    );
    appliance.start();
    let issued = issue_under_load_and_check_the_books(&mut appliance, 2);
    assert!(issued > 4, "{issued}");
    assert_signed_with(&appliance, "rsassaPss");
}

#[test]
fn a_tpm_token_holds_p256_and_rsa_keys_and_serves() {
    let token = ModuleToken::tpm();
    let refused = token.keygen("no-ed25519", "ed25519");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("does not support CKM_EC_EDWARDS_KEY_PAIR_GEN"),
        "{}",
        stderr(&refused)
    );
    for (label, key_type) in [("p256-probe", "ecdsa-p256"), ("rsa-probe", "rsa-2048")] {
        let made = token.keygen(label, key_type);
        assert_success(&made, &format!("{key_type} keygen on the TPM"));
        token.assert_safe(label);
    }
    let mut appliance = Appliance::prepare();
    configure_on(
        &mut appliance,
        &token,
        ("online-p256-tpm-2026", ""),
        ("online-rsa2048-tpm-2026", ""),
    );
    appliance.start();
    let issued = issue_under_load_and_check_the_books(&mut appliance, 2);
    assert!(issued > 4, "{issued}");
    assert_signed_with(&appliance, "sha256WithRSAEncryption");
}
