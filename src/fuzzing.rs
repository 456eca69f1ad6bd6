//! Entry points for the fuzz targets in `tests/fuzz`, compiled only under cargo-fuzz's
//! `--cfg fuzzing`. Each runs untrusted input through the same code the service runs it
//! through; any panic, hang or sanitizer report is a defect.

use std::sync::OnceLock;

use crate::pki::{Profile, SpiffeId, verify_csr};

/// The two profile shapes, as a config would declare them.
fn profiles() -> &'static [Profile; 2] {
    static PROFILES: OnceLock<[Profile; 2]> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let profile = |kind: &str, ttl: &str| {
            toml::from_str::<Profile>(&format!(
                "kind = \"{kind}\"\nissuer = \"online\"\ndefault_ttl = \"{ttl}\"\nmax_ttl = \"{ttl}\"\n"
            ))
            .expect("a valid profile")
        };
        [profile("issuing-ca", "720h"), profile("workload", "1h")]
    })
}

/// A CSR as `/v1/sign` receives it (PEM or DER): parsed, signature verified, then checked
/// against both profiles. The bytes are also tried as a SPIFFE ID, since the SAN checks
/// behind a valid signature are rarely reached by mutation.
pub fn csr(bytes: &[u8]) {
    if let Ok(csr) = verify_csr(bytes) {
        for profile in profiles() {
            let _ = profile.requested_names(&csr);
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = SpiffeId::parse(text);
    }
}

/// A configuration file's text, parsed and its profiles checked, as `hsmca serve` starts.
pub fn config(text: &str) {
    if let Ok(config) = crate::config::Config::parse(text) {
        for (name, profile) in &config.profiles {
            let _ = profile.validate(name);
        }
    }
}

/// A Vault signing request body, decoded as `sign-intermediate` and `sign/<role>` do.
pub fn vault_sign_body(body: &[u8]) {
    crate::api::fuzz_vault_sign_body(body);
}
