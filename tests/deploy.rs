//! The deployment files: the systemd unit's hardening as systemd scores it, the Kubernetes
//! manifests against the Kubernetes API schemas and the restricted Pod Security Standard,
//! and the configuration they ship, parsed by hsmca itself.

mod common;

use std::process::Command;

use common::{python_script, repo_path, stderr, stdout};

#[test]
fn the_systemd_unit_scores_ok_in_systemd_analyze_security() {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_path("deploy/systemd/hsmca.service"))
        .output()
        .expect("systemd-analyze is not installed: run softhsm/install-deps.sh");
    let text = stdout(&output);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for hsmca.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", stderr(&output)));
    // docs/operations.md records the score; 10 is the worst, 2 and below is "OK".
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

#[test]
fn the_kubernetes_manifests_are_valid_and_restricted() {
    let dir = repo_path("deploy/kubernetes");
    let mut files: Vec<_> = [dir.clone(), dir.join("replicated")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "{files:?}");
    let mut args = vec![std::path::PathBuf::from("1.31.0")];
    args.extend(files.iter().cloned());
    let refs: Vec<&std::path::Path> = args.iter().map(|p| p.as_path()).collect();
    let output = python_script("k8s_check.py", &refs);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );

    // The checks can fail: an unknown field, and a hostPath volume.
    let tmp = tempfile::tempdir().unwrap();
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    for (name, broken, expected) in [
        (
            "typo.yaml",
            deployment.replace(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFileSystem: true",
            ),
            "readOnlyRootFileSystem",
        ),
        (
            "hostpath.yaml",
            deployment.replace(
                "emptyDir:\n            sizeLimit: 256Mi",
                "hostPath:\n            path: /opt/hsm",
            ),
            "hostPath volume pkcs11",
        ),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, broken).unwrap();
        let output = python_script("k8s_check.py", &[std::path::Path::new("1.31.0"), &path]);
        assert!(!output.status.success(), "{name} passed");
        assert!(
            stdout(&output).contains(expected),
            "{name}: {}",
            stdout(&output)
        );
    }
}

/// The `hsmca.toml` a ConfigMap manifest ships, parsed.
fn shipped_config(path: &str) -> hsmca::config::Config {
    let configmap = std::fs::read_to_string(repo_path(path)).unwrap();
    let toml: String = configmap
        .split("hsmca.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let config = hsmca::config::Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    // Chains under the shipped profiles must verify in rustls-based peers (ztunnel,
    // linkerd2-proxy), so none of them writes URI name constraints.
    for (name, profile) in &config.profiles {
        assert_eq!(profile.verifier_warning(), None, "profile {name}");
    }
    config
}

#[test]
fn the_replicated_manifests_run_two_replicas_on_postgres_on_two_nodes() {
    let config = shipped_config("deploy/kubernetes/replicated/configmap.yaml");
    let backend = config.storage.as_ref().unwrap().backend().unwrap();
    let hsmca::ledger::StorageBackend::Postgres(postgres) = backend else {
        panic!("the replicated ConfigMap must use PostgreSQL: {backend:?}")
    };
    postgres.validate().unwrap();
    assert_eq!(
        postgres.sslmode,
        hsmca::ledger::postgres::PostgresTls::VerifyFull
    );
    for secret in [&postgres.password_file, &postgres.ca_file] {
        assert!(secret.as_ref().unwrap().starts_with("/run/hsmca/private"));
    }
    let deployment =
        std::fs::read_to_string(repo_path("deploy/kubernetes/replicated/deployment.yaml")).unwrap();
    for needed in [
        "replicas: 2",
        "podAntiAffinity",
        "topologyKey: kubernetes.io/hostname",
        "/secret/postgres/*",
        "maxUnavailable: 0",
    ] {
        assert!(deployment.contains(needed), "{needed}");
    }
    assert!(!deployment.contains("persistentVolumeClaim"));
}

#[test]
fn the_configuration_the_manifests_ship_is_one_hsmca_accepts() {
    let config = shipped_config("deploy/kubernetes/configmap.yaml");
    let server = config.server.expect("[server]");
    assert!(
        server.ops_listen.is_some(),
        "the probes need the operations listener"
    );
    // The PIN file and the key are the init container's private copies.
    assert_eq!(
        config.hsm.pin_file.as_deref(),
        Some(std::path::Path::new("/run/hsmca/private/pin"))
    );
    let deployment =
        std::fs::read_to_string(repo_path("deploy/kubernetes/deployment.yaml")).unwrap();
    assert!(
        deployment.contains("install -m 0600 /secret/tls/* /secret/pin/pin /run/hsmca/private/")
    );
    assert!(server.key.starts_with("/run/hsmca/private"));
}
