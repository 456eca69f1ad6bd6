//! Key ceremonies end to end on SoftHSM2: the example hierarchy shipped in
//! `deploy/ceremonies/`, checked by openssl, pkilint and pyca `cryptography`; and every way a
//! ceremony must refuse before anything is signed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestToken, assert_pkilint_clean, audit_verify, python_script, stderr, stdout};

/// A copy of `deploy/ceremonies/` with an offline root token and an online token.
struct Ceremonies {
    dir: tempfile::TempDir,
    root: TestToken,
    online: TestToken,
}

impl Ceremonies {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(common::repo_path("deploy/ceremonies")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        Ceremonies {
            dir,
            root: TestToken::create("mesh-root"),
            online: TestToken::create("hsmca-online"),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// `hsmca ceremony KIND --config FILE [extra...]` against the token the config names
    /// (key ceremonies run on the online HSM).
    fn run(&self, kind: &str, config: &str, extra: &[&str]) -> Output {
        let token = if config.contains("-key-") {
            &self.online
        } else {
            &self.root
        };
        token
            .hsmca_command(&["ceremony", kind, "--config"])
            .arg(self.path(config))
            .args(extra)
            .env("HSMCA_ROOT_PIN", self.root.user_pin())
            .env("HSMCA_ONLINE_PIN", self.online.user_pin())
            .output()
            .unwrap()
    }

    fn run_ok(&self, kind: &str, config: &str) -> String {
        let output = self.run(kind, config, &[]);
        assert!(
            output.status.success(),
            "ceremony {kind} {config} failed:\n{}{}",
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }

    /// The shipped hierarchy up to the two intermediates.
    fn run_hierarchy(&self) {
        self.run_ok("root", "01-root.toml");
        self.run_ok("key", "02-key-online-p256.toml");
        self.run_ok("key", "03-key-online-rsa2048.toml");
        self.run_ok("intermediate", "04-intermediate-p256.toml");
        self.run_ok("intermediate", "05-intermediate-rsa2048.toml");
    }

    /// Writes a variant of a shipped config, with `edit` applied to its text.
    fn variant(&self, from: &str, to: &str, edit: impl Fn(String) -> String) -> String {
        let text = std::fs::read_to_string(self.path(from)).unwrap();
        std::fs::write(self.path(to), edit(text)).unwrap();
        to.to_owned()
    }
}

/// `pkcs11-tool --list-objects` output: the token's object list, to compare before and after.
fn objects(token: &TestToken) -> String {
    let output = token.pkcs11_tool(&["--login", "--pin", &token.user_pin(), "--list-objects"]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

fn openssl(args: &[&str], files: &[&Path]) -> Output {
    Command::new("openssl")
        .args(args)
        .args(files)
        .output()
        .expect("openssl is not installed")
}

#[test]
fn the_shipped_hierarchy_runs_and_outside_tools_accept_it() {
    let c = Ceremonies::new();
    let out = c.run_ok("root", "01-root.toml");
    for step in [
        "rehearsal: self-signed root certificate passed",
        "generating ecdsa-p256 key \"mesh-root-2026\" in the HSM: done in",
        "signature verified with the issuer key, TBS bytes identical",
        "audit record #1 appended",
    ] {
        assert!(out.contains(step), "missing step {step:?} in:\n{out}");
    }
    c.run_ok("key", "02-key-online-p256.toml");
    c.run_ok("key", "03-key-online-rsa2048.toml");
    c.run_ok("intermediate", "04-intermediate-p256.toml");
    c.run_ok("intermediate", "05-intermediate-rsa2048.toml");
    c.run_ok("crl", "06-root-crl.toml");
    c.run_ok("root", "07-root-2027.toml");
    c.run_ok("cross-sign", "08-cross-sign-2027.toml");
    c.run_ok("csr", "09-csr-root-2026.toml");
    c.run_ok("key", "10-key-audit-checkpoint.toml");
    c.run_ok("key", "11-key-jwt-es256.toml");
    c.run_ok("key", "12-key-jwt-rs256.toml");

    let root = c.path("out/root-2026.pem");
    let p256 = c.path("out/online-p256-2026.pem");
    let rsa = c.path("out/online-rsa2048-2026.pem");
    let new_root = c.path("out/root-2027.pem");
    let cross = c.path("out/root-2027-cross-signed-by-2026.pem");
    let crl = c.path("out/root-2026-crl-1.pem");

    // openssl: the chains, the cross certificate, the CRL and the CSR signatures.
    let root_arg = root.to_str().unwrap();
    let verify = openssl(
        &["verify", "-x509_strict", "-CAfile", root_arg],
        &[&p256, &rsa, &cross],
    );
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let verify = openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            new_root.to_str().unwrap(),
        ],
        &[&new_root],
    );
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let crl_check = openssl(&["crl", "-noout", "-CAfile", root_arg, "-in"], &[&crl]);
    assert!(
        stderr(&crl_check).contains("verify OK"),
        "{}",
        stderr(&crl_check)
    );
    let csr = openssl(
        &["req", "-verify", "-noout", "-in"],
        &[&c.path("out/root-2026.csr.pem")],
    );
    assert!(csr.status.success(), "{}", stderr(&csr));
    // A wrong trust anchor is rejected: the verification above can fail.
    let wrong = openssl(&["verify", "-CAfile", new_root.to_str().unwrap()], &[&p256]);
    assert!(!wrong.status.success());

    // The new root's cross certificate carries its subject and key exactly.
    let fingerprint = |path: &Path| {
        let out = openssl(&["x509", "-noout", "-subject", "-pubkey", "-in"], &[path]);
        stdout(&out)
    };
    assert_eq!(fingerprint(&cross), fingerprint(&new_root));

    // pkilint: no error or warning on any certificate or the CRL.
    assert_pkilint_clean("certificate", &[&root, &p256, &rsa, &new_root, &cross]);
    assert_pkilint_clean("crl", &[&crl]);

    // A second root CRL revokes the RSA intermediate: pkilint accepts it with its reason
    // code, and openssl then rejects that intermediate and still accepts the other.
    let revoking = c.variant("06-root-crl.toml", "06-root-crl-2.toml", |t| {
        t.replace("number = 1", "number = 2")
            .replace(
                "# [[crl.revoked]]\n# certificate",
                "[[crl.revoked]]\ncertificate",
            )
            .replace("# reason = \"superseded\"", "reason = \"superseded\"")
            .replace("# revoked_at", "revoked_at")
            .replace("crl-1", "crl-2")
    });
    c.run_ok("crl", &revoking);
    let crl2 = c.path("out/root-2026-crl-2.pem");
    assert_pkilint_clean("crl", &[&crl2]);
    let text = stdout(&openssl(&["crl", "-noout", "-text", "-in"], &[&crl2]));
    assert!(
        text.contains("Superseded") && text.contains("CRL Number: \n                2"),
        "{text}"
    );
    let crl_arg = crl2.to_str().unwrap();
    let check = |cert: &Path| {
        openssl(
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                root_arg,
                "-CRLfile",
                crl_arg,
            ],
            &[cert],
        )
    };
    let revoked = check(&rsa);
    assert!(!revoked.status.success());
    assert!(
        stdout(&revoked).contains("certificate revoked")
            || stderr(&revoked).contains("certificate revoked")
    );
    assert!(check(&p256).status.success());

    // pyca cryptography: the consumer rules for CA certificates.
    let rules = python_script(
        "ca_rules.py",
        &[
            &root,
            &root,
            Path::new("none"),
            &root,
            &p256,
            Path::new("1"),
            &root,
            &rsa,
            Path::new("1"),
            &root,
            &cross,
            Path::new("none"),
        ],
    );
    assert!(
        rules.status.success(),
        "{}{}",
        stdout(&rules),
        stderr(&rules)
    );

    // The audit log holds one record per ceremony and verifies; each transcript names its
    // record and the head it extended.
    let log = c.path("out/audit.log");
    let verified = audit_verify(&log);
    assert!(
        stdout(&verified).contains("13 records, chain intact"),
        "{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    let transcript: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.path("out/04-intermediate-p256-ceremony.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(transcript["audit"]["seq"], 4);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(transcript["audit"]["hash"], records[3]["hash"]);
    assert_eq!(transcript["audit"]["previous_head"], records[2]["hash"]);
    assert_eq!(records[3]["event"], "ceremony.intermediate");
    assert_eq!(transcript["token"]["label"], "mesh-root");
    assert_eq!(transcript["keys"][0]["label"], "mesh-root-2026");
    assert_eq!(transcript["officers"].as_array().unwrap().len(), 3);
    let text = std::fs::read_to_string(c.path("out/04-intermediate-p256-ceremony.txt")).unwrap();
    let cert_sha = transcript["certificates"][1]["sha256"].as_str().unwrap();
    assert!(
        text.contains(cert_sha) && text.contains("signature: ____"),
        "{text}"
    );

    // Editing a record breaks the chain at that line.
    let tampered = c.path("out/audit-tampered.log");
    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &tampered,
        original.replacen("mesh-root-2026", "mesh-root-2099", 1),
    )
    .unwrap();
    let out = audit_verify(&tampered);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

#[test]
fn a_second_run_refuses_to_overwrite_and_to_regenerate() {
    let c = Ceremonies::new();
    c.run_ok("root", "01-root.toml");
    let before = objects(&c.root);
    let first_cert = std::fs::read(c.path("out/root-2026.pem")).unwrap();

    let again = c.run("root", "01-root.toml", &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("root-2026.pem already exists; ceremonies never overwrite"),
        "{}",
        stderr(&again)
    );

    // New output names, same key label: the HSM refuses to make a second key.
    let renamed = c.variant("01-root.toml", "01-root-again.toml", |t| {
        t.replace("out/root-2026", "out/again-root-2026")
            .replace("out/01-root-ceremony", "out/01-root-again-ceremony")
    });
    let again = c.run("root", &renamed, &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("mesh-root-2026"),
        "{}",
        stderr(&again)
    );
    assert!(!c.path("out/again-root-2026.pem").exists());
    assert_eq!(objects(&c.root), before, "the token changed");
    assert_eq!(
        std::fs::read(c.path("out/root-2026.pem")).unwrap(),
        first_cert
    );

    // The refusal is audited after the successful ceremony, and the chain still verifies.
    let log = std::fs::read_to_string(c.path("out/audit.log")).unwrap();
    let events: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(events, ["ceremony.root", "ceremony.root.failed"]);
    assert!(audit_verify(&c.path("out/audit.log")).status.success());
}

#[test]
fn bad_configs_are_refused_before_anything_is_signed() {
    let c = Ceremonies::new();
    c.run_hierarchy();
    c.run_ok("root", "07-root-2027.toml");
    let before = objects(&c.root);
    let records = |c: &Ceremonies| {
        std::fs::read_to_string(c.path("out/audit.log"))
            .unwrap()
            .lines()
            .count()
    };
    let audited = records(&c);

    // An unknown key, with its line and column.
    let typo = c.variant("04-intermediate-p256.toml", "typo.toml", |t| {
        t.replace("path_length = 1", "path_lenght = 1")
    });
    let out = c.run("intermediate", &typo, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown field `path_lenght`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("line "), "{}", stderr(&out));

    // A validity reaching past the issuer's.
    let too_long = c.variant("04-intermediate-p256.toml", "too-long.toml", |t| {
        t.replace(
            "not_after = 2031-11-01T00:00:00Z",
            "not_after = 2047-01-01T00:00:00Z",
        )
        .replace("out/online-p256-2026.pem", "out/too-long.pem")
        .replace("out/04-intermediate-p256-ceremony", "out/too-long-ceremony")
    });
    let out = c.run("intermediate", &too_long, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not inside the issuer's"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nothing was signed"),
        "{}",
        stderr(&out)
    );
    assert!(!c.path("out/too-long.pem").exists());

    // An issuer key that does not match the issuer certificate: the label names the 2027
    // root's key, the certificate is the 2026 root's.
    let wrong_key = c.variant("04-intermediate-p256.toml", "wrong-key.toml", |t| {
        t.replace(
            "key_label = \"mesh-root-2026\"",
            "key_label = \"mesh-root-2027\"",
        )
        .replace(
            "certificate = \"out/online-p256-2026.pem\"",
            "certificate = \"out/wrong-key.pem\"",
        )
        .replace(
            "out/04-intermediate-p256-ceremony",
            "out/wrong-key-ceremony",
        )
    });
    let out = c.run("intermediate", &wrong_key, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mesh-root-2027"), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("public key"),
        "{}",
        stderr(&out)
    );
    assert!(!c.path("out/wrong-key.pem").exists());

    // A CRL number that does not grow: the audit log knows the last one.
    c.run_ok("crl", "06-root-crl.toml");
    let same_number = c.variant("06-root-crl.toml", "crl-again.toml", |t| {
        t.replace("crl-1", "crl-again")
    });
    let out = c.run("crl", &same_number, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`crl.number` 1 must be above 1"),
        "{}",
        stderr(&out)
    );
    assert!(!c.path("out/root-2026-crl-again.pem").exists());

    assert_eq!(
        objects(&c.root),
        before,
        "a refused ceremony changed the token"
    );
    // The typo never reached the audit log (the config was not understood); the CRL and the
    // three refusals that were understood are recorded.
    assert_eq!(records(&c), audited + 4);
    assert!(audit_verify(&c.path("out/audit.log")).status.success());
}

#[test]
fn dry_run_leaves_the_token_and_the_disk_untouched() {
    let c = Ceremonies::new();
    let root_before = objects(&c.root);
    let online_before = objects(&c.online);
    for (kind, config) in [
        ("root", "01-root.toml"),
        ("key", "02-key-online-p256.toml"),
        ("key", "03-key-online-rsa2048.toml"),
    ] {
        let out = c.run(kind, config, &["--dry-run"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("dry run passed"), "{}", stdout(&out));
    }
    assert_eq!(objects(&c.root), root_before);
    assert_eq!(objects(&c.online), online_before);
    assert!(!c.path("out").exists(), "a dry run wrote files");

    // After the real hierarchy, a dry run of an intermediate checks everything and still
    // changes nothing; a bad one fails the same way the real run would.
    c.run_hierarchy();
    let before = objects(&c.root);
    let log = std::fs::read(c.path("out/audit.log")).unwrap();
    let again = c.variant("04-intermediate-p256.toml", "again.toml", |t| {
        t.replace("out/online-p256-2026.pem\"\n", "out/again.pem\"\n")
            .replace("out/04-intermediate-p256-ceremony", "out/again-ceremony")
    });
    let out = c.run("intermediate", &again, &["--dry-run"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let bad = c.variant("again.toml", "bad.toml", |t| {
        t.replace("\"key-cert-sign\", ", "")
    });
    let out = c.run("intermediate", &bad, &["--dry-run"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("keyUsage must be critical, include keyCertSign"),
        "{}",
        stderr(&out)
    );
    assert_eq!(objects(&c.root), before);
    assert_eq!(std::fs::read(c.path("out/audit.log")).unwrap(), log);
    assert!(!c.path("out/again.pem").exists());
}

/// The outside checks used above can fail: a CA certificate made by openssl with a
/// non-critical basicConstraints and a keyUsage without cRLSign is rejected by both.
#[test]
fn the_outside_checks_reject_a_broken_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("bad.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=Broken CA", "-days", "30"])
        .args([
            "-addext",
            "basicConstraints=CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let lint = python_script("pkilint_check.py", &[Path::new("certificate"), &cert]);
    assert!(!lint.status.success());
    assert!(
        stdout(&lint).contains("pkix.basic_constraints_extension_not_critical"),
        "{}",
        stdout(&lint)
    );
    let rules = python_script("ca_rules.py", &[&cert, &cert, Path::new("none")]);
    assert!(!rules.status.success());
    assert!(
        stdout(&rules).contains("basicConstraints must be critical"),
        "{}",
        stdout(&rules)
    );
}
