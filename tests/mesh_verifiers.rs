//! Every chain hsmca issues, checked by the verifiers the mesh's peers run, none written here:
//! **rustls-webpki** (ztunnel, linkerd2-proxy, spiffe-rustls), Go's `crypto/x509` (SPIRE,
//! istiod, Linkerd's controller; `tests/go/svid_verify.go`), pyca `cryptography`'s path
//! builder and OpenSSL. For each issuing-CA layout `hsmca request` writes (plain, istio,
//! linkerd; P-256 and RSA-2048), a workload certificate is signed under the new CA's key the
//! way SPIRE or istiod would (by `openssl x509 -req`, which sets the AKI from the CA's SKI as
//! Go does) and verified for server and client authentication against the written roots with
//! the written chain. URI name constraints are refused by rustls-webpki and pyca, which the
//! start-up warning says; DNS name constraints work everywhere and are enforced.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::appliance::{Appliance, TRUST_DOMAIN, p256, runtime, write};
use common::{assert_success, openssl_text, openssl_verify_chain, python_script, stderr, stdout};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Two more issuing-CA profiles under the P-256 intermediate: one with URI name constraints
/// (the refused kind), one with Linkerd's DNS domain as a permitted subtree.
const CONSTRAINED_PROFILES: &str = r#"
[profiles.issuing-ca-uri-constrained]
kind = "issuing-ca"
issuer = "online-p256"
default_ttl = "720h"
max_ttl = "2160h"
name_constraints = true

[profiles.issuing-ca-linkerd]
kind = "issuing-ca"
issuer = "online-p256"
default_ttl = "720h"
max_ttl = "2160h"
permitted_dns_domains = ["identity.linkerd.cluster.local"]
"#;

const LINKERD_DOMAIN: &str = "identity.linkerd.cluster.local";
const WORKLOAD_ID: &str = "spiffe://mesh.example/ns/prod/sa/web";

/// The files one `hsmca request` layout wrote, as a peer loads them.
struct IssuedCa {
    /// The new CA's private key.
    key: PathBuf,
    /// The new CA's certificate.
    certificate: PathBuf,
    /// What a workload presents above its own certificate.
    chain: PathBuf,
    /// The trust anchors a peer is configured with.
    roots: PathBuf,
}

impl IssuedCa {
    fn files(dir: &Path, layout: &str) -> IssuedCa {
        let [key, certificate, chain, roots] = match layout {
            "plain" => ["key.pem", "cert.pem", "chain.pem", "roots.pem"],
            "istio" => [
                "ca-key.pem",
                "ca-cert.pem",
                "cert-chain.pem",
                "root-cert.pem",
            ],
            // issuer.crt is the CA certificate followed by its intermediates.
            "linkerd" => ["issuer.key", "issuer.crt", "issuer.crt", "ca.crt"],
            _ => unreachable!("unknown layout {layout}"),
        };
        IssuedCa {
            key: dir.join(key),
            certificate: dir.join(certificate),
            chain: dir.join(chain),
            roots: dir.join(roots),
        }
    }
}

/// `hsmca request` as istiod.
fn request(
    appliance: &Appliance,
    profile: &str,
    layout: &str,
    key_type: &str,
    dir: &Path,
) -> IssuedCa {
    let output = appliance
        .hsmca_as("istiod", "request")
        .args(["--trust-domain", TRUST_DOMAIN, "--profile", profile])
        .args(["--layout", layout, "--key-type", key_type])
        .arg("--out-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert_success(&output, &format!("hsmca request {profile} {layout}"));
    IssuedCa::files(dir, layout)
}

/// A workload certificate signed under `ca` by OpenSSL, shaped like an X509-SVID
/// (digitalSignature, serverAuth + clientAuth, cA=false) with `sans` (OpenSSL syntax).
fn sign_workload(ca: &IssuedCa, dir: &Path, name: &str, sans: &str) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let certificate = dir.join(format!("{name}.pem"));
    let extensions = write(
        dir,
        &format!("{name}.ext"),
        &format!(
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth, clientAuth\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid:always\n\
             subjectAltName = {sans}\n"
        ),
    );
    let openssl = |args: &[&str], paths: &[(&str, &Path)]| {
        let mut command = Command::new("openssl");
        command.args(args);
        for (flag, path) in paths {
            command.arg(flag).arg(path);
        }
        assert_success(&command.output().unwrap(), &format!("openssl {args:?}"));
    };
    openssl(
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            "/O=SPIFFE",
        ],
        &[("-keyout", &key), ("-out", &csr)],
    );
    openssl(
        &["x509", "-req", "-sha256", "-days", "1", "-set_serial", "1"],
        &[
            ("-in", &csr),
            ("-CA", &ca.certificate),
            ("-CAkey", &ca.key),
            ("-extfile", &extensions),
            ("-out", &certificate),
        ],
    );
    certificate
}

fn ders(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// rustls-webpki's decision on `leaf` presented with `chain` to a peer trusting `roots`, for
/// server and for client authentication (each with rustls's own algorithm list), and, when
/// `dns_name` is given, whether the leaf is valid for that name.
fn rustls_webpki(
    roots: &Path,
    chain: &Path,
    leaf: &Path,
    dns_name: Option<&str>,
) -> [Result<(), webpki::Error>; 2] {
    let roots = ders(roots);
    let anchors: Vec<_> = roots
        .iter()
        .map(|root| webpki::anchor_from_trusted_cert(root).unwrap())
        .collect();
    let intermediates = ders(chain);
    let [leaf] = <[_; 1]>::try_from(ders(leaf)).unwrap();
    let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let algorithms = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ]
    .map(|usage| {
        end_entity.verify_for_usage(
            algorithms,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
        if let Some(name) = dns_name {
            let name = ServerName::try_from(name.to_owned()).unwrap();
            end_entity.verify_is_valid_for_subject_name(&name)?;
        }
        Ok(())
    })
}

/// Go's `crypto/x509` on `leaf` presented with `chain` to a peer trusting `roots`, for server
/// and client authentication (and `dns_name`): `tests/go/svid_verify.go`, built once.
fn go_verify(roots: &Path, chain: &Path, leaf: &Path, dns_name: Option<&str>) -> Output {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    let binary = BINARY.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("svid_verify");
        let build = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&out)
            .arg(common::repo_path("tests/go/svid_verify.go"))
            .env(
                "GOCACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
            )
            .output()
            .expect("go is not installed: softhsm/install-deps.sh installs golang-go");
        assert_success(&build, "go build tests/go/svid_verify.go");
        out
    });
    let mut command = Command::new(binary);
    command.arg(roots).arg(chain).arg(leaf).args(dns_name);
    command.output().unwrap()
}

/// Asserts that rustls-webpki, Go, pyca and OpenSSL all accept `leaf` presented with `chain` to
/// a peer trusting `roots`.
fn assert_every_verifier_accepts(
    roots: &Path,
    chain: &Path,
    leaf: &Path,
    dns_name: Option<&str>,
    what: &str,
) {
    for (usage, decision) in ["server", "client"]
        .iter()
        .zip(rustls_webpki(roots, chain, leaf, dns_name))
    {
        assert_eq!(decision, Ok(()), "rustls-webpki {usage} auth, {what}");
    }
    let go = go_verify(roots, chain, leaf, dns_name);
    assert!(
        go.status.success(),
        "Go, {what}: {}{}",
        stdout(&go),
        stderr(&go)
    );
    let pyca = python_script("svid_verify.py", &[roots, chain, leaf]);
    assert!(
        pyca.status.success(),
        "pyca, {what}: {}{}",
        stdout(&pyca),
        stderr(&pyca)
    );
    openssl_verify_chain(roots, chain, leaf);
}

/// Waits (at most 10 s) until the service's log holds `text`; the log is written by a thread.
fn wait_for_log(appliance: &Appliance, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = appliance.server_log();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_issued_chain_verifies_with_rustls_webpki_go_pyca_and_openssl() {
    let mut appliance = Appliance::prepare();
    appliance.write_config_with(|text| {
        let istiod_profiles = r#"profiles = ["issuing-ca", "issuing-ca-rsa", "workload"]"#;
        assert!(text.contains(istiod_profiles));
        let text = text.replace(
            istiod_profiles,
            r#"profiles = ["issuing-ca", "issuing-ca-rsa", "workload", "issuing-ca-uri-constrained", "issuing-ca-linkerd"]"#,
        );
        format!("{text}{CONSTRAINED_PROFILES}")
    });
    appliance.start();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let svid_sans = format!("URI:{WORKLOAD_ID}");

    // Each layout, with a P-256 and an RSA-2048 cluster CA (Linkerd's issuer is P-256 only,
    // so it gets the RSA intermediate above it instead).
    for (layout, key_type, profile) in [
        ("plain", "ecdsa-p256", "issuing-ca"),
        ("plain", "rsa2048", "issuing-ca-rsa"),
        ("istio", "ecdsa-p256", "issuing-ca"),
        ("istio", "rsa2048", "issuing-ca-rsa"),
        ("linkerd", "ecdsa-p256", "issuing-ca"),
        ("linkerd", "ecdsa-p256", "issuing-ca-rsa"),
        ("linkerd", "ecdsa-p256", "issuing-ca-linkerd"),
    ] {
        let name = format!("{layout}-{key_type}-{profile}");
        let ca_dir = dir.join(&name);
        let ca = request(&appliance, profile, layout, key_type, &ca_dir);
        let svid = sign_workload(&ca, &ca_dir, "svid", &svid_sans);
        assert_every_verifier_accepts(
            &ca.roots,
            &ca.chain,
            &svid,
            None,
            &format!("X509-SVID under {name}"),
        );
        if layout == "linkerd" {
            let identity = format!("web.prod.serviceaccount.{LINKERD_DOMAIN}");
            let leaf = sign_workload(
                &ca,
                &ca_dir,
                "linkerd-leaf",
                &format!("DNS:{identity}, {svid_sans}"),
            );
            assert_every_verifier_accepts(
                &ca.roots,
                &ca.chain,
                &leaf,
                Some(&identity),
                &format!("Linkerd identity under {name}"),
            );
        }
    }

    // The DNS subtree is enforced by rustls-webpki and Go: a name outside it is refused.
    let linkerd = IssuedCa::files(
        &dir.join("linkerd-ecdsa-p256-issuing-ca-linkerd"),
        "linkerd",
    );
    let text = openssl_text(&linkerd.certificate);
    assert!(
        text.contains(&format!(
            "Permitted:\n                  DNS:{LINKERD_DOMAIN}\n"
        )),
        "{text}"
    );
    let outside = sign_workload(
        &linkerd,
        dir,
        "outside",
        &format!("DNS:web.prod.svc.cluster.local, {svid_sans}"),
    );
    assert_eq!(
        rustls_webpki(&linkerd.roots, &linkerd.chain, &outside, None),
        [
            Err(webpki::Error::NameConstraintViolation),
            Err(webpki::Error::NameConstraintViolation)
        ]
    );

    let go = go_verify(&linkerd.roots, &linkerd.chain, &outside, None);
    assert!(
        !go.status.success() && stdout(&go).contains("not permitted"),
        "Go: {}{}",
        stdout(&go),
        stderr(&go)
    );

    // The workload profile's own leaves.
    let leaf_key = p256();
    let mut params =
        rcgen::CertificateParams::new(vec!["web.prod.svc.cluster.local".into()]).unwrap();
    params
        .subject_alt_names
        .insert(0, rcgen::SanType::URI(WORKLOAD_ID.try_into().unwrap()));
    let csr = params.serialize_request(&leaf_key).unwrap().pem().unwrap();
    let response = runtime()
        .block_on(appliance.client("istiod").sign(&csr, "workload", None))
        .unwrap();
    let answer = response.json().unwrap();
    assert_eq!(response.status, 200, "{answer}");
    let field = |name: &str| answer[name].as_str().unwrap();
    assert_every_verifier_accepts(
        &write(dir, "workload-roots.pem", field("roots")),
        &write(dir, "workload-chain.pem", field("chain")),
        &write(dir, "workload.pem", field("certificate")),
        Some("web.prod.svc.cluster.local"),
        "workload profile leaf",
    );

    // URI name constraints: rustls-webpki and pyca refuse every SVID under such a CA, Go and
    // OpenSSL accept it; the start-up warning says so, once, for that profile only.
    let constrained = request(
        &appliance,
        "issuing-ca-uri-constrained",
        "istio",
        "ecdsa-p256",
        &dir.join("uri-constrained"),
    );
    let text = openssl_text(&constrained.certificate);
    assert!(
        text.contains("Permitted:\n                  URI:mesh.example\n"),
        "{text}"
    );
    let svid = sign_workload(&constrained, dir, "constrained-svid", &svid_sans);
    assert_eq!(
        rustls_webpki(&constrained.roots, &constrained.chain, &svid, None),
        [
            Err(webpki::Error::NameConstraintViolation),
            Err(webpki::Error::NameConstraintViolation)
        ]
    );
    let pyca = python_script(
        "svid_verify.py",
        &[&constrained.roots, &constrained.chain, &svid],
    );
    assert!(
        !pyca.status.success() && stdout(&pyca).contains("unsupported name constraint"),
        "pyca: {}{}",
        stdout(&pyca),
        stderr(&pyca)
    );
    openssl_verify_chain(&constrained.roots, &constrained.chain, &svid);
    let go = go_verify(&constrained.roots, &constrained.chain, &svid, None);
    assert!(go.status.success(), "Go: {}{}", stdout(&go), stderr(&go));

    let warning = "writes URI name constraints";
    wait_for_log(&appliance, warning);
    assert!(appliance.stop().success(), "{}", appliance.server_log());
    let log = appliance.server_log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("issuing-ca-uri-constrained")
            && warnings[0].contains("rustls-webpki")
            && warnings[0].contains("pyca"),
        "{}",
        warnings[0]
    );
}
