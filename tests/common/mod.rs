//! Test support: fresh SoftHSM2 tokens, configs for them, and the real `hsmca` binary.
//!
//! A test that needs SoftHSM2 fails loudly when it is missing; it never skips.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod appliance;
pub mod load;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hsmca::hsm::{Hsm, HsmConfig, PoolConfig};

/// Where Debian's softhsm2 package puts the module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Where Debian's opensc-pkcs11 package puts the call tracer.
pub const PKCS11_SPY_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";

/// The fault-injecting PKCS#11 module (softhsm/fault-module), next to the test binaries'
/// `deps` directory; tests/run.sh builds it before the tests.
pub fn fault_module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let module = profile_dir.join("libhsmca_fault_pkcs11.so");
    assert!(
        module.exists(),
        "{} is missing: build it with `cargo build -p hsmca-fault-pkcs11` (tests/run.sh does)",
        module.display()
    );
    module
}

/// A SoftHSM2 token made fresh in its own temporary directory.
pub struct TestToken {
    pub dir: tempfile::TempDir,
    pub label: String,
}

impl TestToken {
    /// Creates a token with `softhsm/new-token.sh`, as the quick start and CI do.
    pub fn create(label: &str) -> TestToken {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed ({SOFTHSM_MODULE} missing): run softhsm/install-deps.sh"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let output = Command::new(repo_path("softhsm/new-token.sh"))
            .arg(dir.path())
            .arg(label)
            .output()
            .expect("run softhsm/new-token.sh");
        assert!(
            output.status.success(),
            "softhsm/new-token.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TestToken {
            dir,
            label: label.into(),
        }
    }

    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("user.pin")
    }

    pub fn user_pin(&self) -> String {
        std::fs::read_to_string(self.pin_file()).expect("read user.pin")
    }

    pub fn hsm_config(&self) -> HsmConfig {
        HsmConfig {
            module: SOFTHSM_MODULE.into(),
            token_label: Some(self.label.clone()),
            token_serial: None,
            pin_file: Some(self.pin_file()),
            pin_env: None,
            pool: PoolConfig::default(),
        }
    }

    /// Writes an hsmca config file for this token; `extra` is appended to the [hsm] section.
    pub fn write_config(&self, name: &str, hsm_lines: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("[hsm]\n{hsm_lines}\n")).expect("write config");
        path
    }

    /// The usual config: SoftHSM module, this token's label, its PIN file.
    pub fn default_config(&self) -> PathBuf {
        self.write_config(
            "hsmca.toml",
            &format!(
                "module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{}\"\npin_file = \"{}\"",
                self.label,
                self.pin_file().display()
            ),
        )
    }

    /// Runs the real `hsmca` binary against this token.
    pub fn hsmca(&self, args: &[&str]) -> Output {
        self.hsmca_command(args).output().expect("run hsmca")
    }

    pub fn hsmca_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hsmca"));
        command
            .args(args)
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .env_remove("HSMCA_CONFIG")
            .env_remove("HSMCA_LOG");
        command
    }

    /// Runs `pkcs11-tool` (OpenSC) against this token.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(SOFTHSM_MODULE)
            .args(args)
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .output()
            .expect("pkcs11-tool (opensc) is not installed: run softhsm/install-deps.sh")
    }
}

/// The token and HSM shared by the in-process tests of one test binary.
///
/// PKCS#11 is initialised once per process and SoftHSM2 reads `SOFTHSM2_CONF` at that
/// moment, so every in-process test of a binary shares one fresh token (under nextest each
/// test is its own process and so gets its own token). Keys get unique labels per test.
pub fn shared_hsm() -> &'static (TestToken, Hsm) {
    static SHARED: OnceLock<(TestToken, Hsm)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let token = TestToken::create("hsmca-test");
        // SAFETY: runs once, inside OnceLock initialisation, before this process loads any
        // PKCS#11 module; nothing else in the test binaries reads or writes the environment.
        unsafe { std::env::set_var("SOFTHSM2_CONF", token.softhsm_conf()) };
        let hsm = Hsm::open(&token.hsm_config()).expect("open the test token");
        (token, hsm)
    })
}

/// Calls `C_CloseAllSessions` on the module hsmca has loaded, from this process: every session
/// handle hsmca holds dies, and (per PKCS#11) the application is logged out.
pub fn close_all_sessions_behind_hsmcas_back(slot_id: u64) {
    // SAFETY: `dlopen` of the already-loaded module returns the same library, initialised by
    // hsmca; C_CloseAllSessions takes a plain slot ID and touches no memory of ours.
    let rv = unsafe {
        let module = cryptoki_sys::Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM2");
        module.C_CloseAllSessions(slot_id)
    };
    assert_eq!(rv, cryptoki_sys::CKR_OK, "C_CloseAllSessions");
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Verifies with `openssl` (not our code) that `signature` over `message` is valid for the
/// `PUBLIC KEY` PEM. `digest` is `sha256`/`sha384`/`sha512`, or `None` for Ed25519.
pub fn openssl_verify(
    dir: &Path,
    public_key_pem: &str,
    digest: Option<&str>,
    pss: bool,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let key = dir.join("pub.pem");
    let msg = dir.join("msg.bin");
    let sig = dir.join("sig.bin");
    std::fs::write(&key, public_key_pem).unwrap();
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sig, signature).unwrap();
    let mut command = Command::new("openssl");
    match digest {
        Some(digest) => {
            command.arg("dgst").arg(format!("-{digest}"));
            if pss {
                command.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]);
            }
            command
                .arg("-verify")
                .arg(&key)
                .arg("-signature")
                .arg(&sig)
                .arg(&msg);
        }
        None => {
            command
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&key)
                .arg("-in")
                .arg(&msg)
                .arg("-sigfile")
                .arg(&sig);
        }
    }
    let output = command.output().expect("openssl is not installed");
    output.status.success()
}

/// The PEM blocks of `text`, each with its trailing newline.
pub fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|block| block.contains("BEGIN"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that a command succeeded, showing its output otherwise.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        stdout(output),
        stderr(output)
    );
}

/// `openssl verify` of `cert` against `roots`, with `untrusted` intermediates.
pub fn openssl_verify_chain(roots: &Path, untrusted: &Path, cert: &Path) {
    let output = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(roots)
        .arg("-untrusted")
        .arg(untrusted)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl verify {}: {}{}",
        cert.display(),
        stdout(&output),
        stderr(&output)
    );
}

/// `openssl x509 -text` of the certificate in `cert`.
pub fn openssl_text(cert: &Path) -> String {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

/// `hsmca audit verify LOG`, which needs no config and no HSM.
pub fn audit_verify(log: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hsmca"))
        .args(["audit", "verify"])
        .arg(log)
        .env_remove("HSMCA_CONFIG")
        .output()
        .unwrap()
}

/// The Python of the test venv (pkilint, cryptography, hvac), made by `tests/run.sh`.
/// `HSMCA_PYTHON` overrides; a missing venv fails the test, it never skips it.
pub fn python() -> PathBuf {
    let python = std::env::var_os("HSMCA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run tests/run.sh, which creates the test venv",
        python.display()
    );
    python
}

/// Runs a script of `tests/py/` with the venv's Python; returns its output.
pub fn python_script(script: &str, args: &[&Path]) -> Output {
    Command::new(python())
        .arg(repo_path(&format!("tests/py/{script}")))
        .args(args)
        .output()
        .expect("run the test venv's python")
}

/// Asserts that pkilint reports no error or warning on `files` (`kind`: certificate or crl).
pub fn assert_pkilint_clean(kind: &str, files: &[&Path]) {
    let mut args: Vec<&Path> = vec![Path::new(kind)];
    args.extend_from_slice(files);
    let output = python_script("pkilint_check.py", &args);
    assert!(
        output.status.success(),
        "pkilint found problems:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
}
