"""Validates hsmca's Kubernetes manifests offline against the Kubernetes API schemas
(`kubernetes-validate`, strict: unknown fields fail) and checks the pod against the
restricted Pod Security Standard the namespace enforces.

usage: k8s_check.py KUBERNETES_VERSION FILE.yaml [FILE.yaml ...]

Prints one line per resource; exits 1 on the first failure.
"""

import sys

import kubernetes_validate
import yaml


def restricted(pod_spec, where):
    """The restricted Pod Security Standard, as far as a manifest shows it."""
    security = pod_spec.get("securityContext", {})
    assert security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot must be true"
    assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"
    for volume in pod_spec.get("volumes", []):
        assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID") and not pod_spec.get("hostIPC"), where
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        name = f"{where} container {container['name']}"
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
        assert context.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
        assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: drop ALL capabilities"
        assert not context.get("capabilities", {}).get("add"), f"{name}: adds capabilities"
        assert not context.get("privileged"), f"{name}: privileged"
        assert "limits" in container.get("resources", {}), f"{name}: resource limits"


def main(args):
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    version, files = args[0], args[1:]
    try:
        for path in files:
            with open(path) as f:
                documents = [d for d in yaml.safe_load_all(f) if d]
            for document in documents:
                kubernetes_validate.validate(document, version, strict=True)
                kind, name = document["kind"], document["metadata"]["name"]
                if kind == "Deployment":
                    restricted(document["spec"]["template"]["spec"], f"{path} {kind}/{name}")
                print(f"{path}: {kind}/{name} valid for Kubernetes {version}")
    except (kubernetes_validate.ValidationError, AssertionError, KeyError) as e:
        print(f"FAIL: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
