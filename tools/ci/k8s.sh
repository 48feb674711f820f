#!/usr/bin/env bash
# The Kubernetes manifests (deploy/k8s): renders every overlay with `kubectl kustomize`, validates
# the output (and the example manifests kept beside it) offline against the API schemas of
# Kubernetes $K8S_SCHEMA_VERSION with PyPI's kubernetes-validate (strict: unknown fields fail), then
# tools/ci/k8s_check.py asserts what the README promises: gRPC probes on the declared ports, the
# grace period against preStop + SHUTDOWN_DRAIN_SECONDS, the signing key's 0600 copy, non-root and
# read-only everywhere, the pgbouncer overlay's pooling. No cluster is needed. The validator is
# pinned and installed into a temporary venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
KUBERNETES_VALIDATE_VERSION=1.37.0 # its schemas go back to Kubernetes 1.2x
K8S_SCHEMA_VERSION=${K8S_SCHEMA_VERSION:-1.31.0} # the oldest minor still common in managed clusters; >= 1.30 for preStop sleep

if ! command -v kubectl >/dev/null 2>&1; then
    echo "kubectl not found: it renders the kustomizations (kubectl kustomize). Install it (Debian: the" >&2
    echo "kubernetes-client package, or the kubectl binary from your distribution) and run again." >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
if ! python3 -m venv "$work/venv" >/dev/null 2>&1; then
    echo "python3 -m venv failed: installing python3-venv"
    apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null
    python3 -m venv "$work/venv"
fi
"$work/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

echo "== render every overlay ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' | sed 's/^/kustomize /'))"
rendered=()
for dir in deploy/k8s/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" >"$work/$name.yaml"
    echo "$dir: $(grep -c '^kind:' "$work/$name.yaml") objects"
    rendered+=("$name=$work/$name.yaml")
done
if ((${#rendered[@]} < 2)); then
    echo "found ${#rendered[@]} overlays under deploy/k8s/overlays: expected example and pgbouncer" >&2
    exit 1
fi

echo "== validate against the Kubernetes $K8S_SCHEMA_VERSION schemas (strict)"
examples=(deploy/k8s/overlays/example/secrets.example.yaml deploy/k8s/jobs/*.yaml)
"$work/venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_SCHEMA_VERSION" \
    "$work"/*.yaml "${examples[@]}"
echo "$(cat "$work"/*.yaml "${examples[@]}" | grep -c '^kind:') objects valid"

echo "== assertions (tools/ci/k8s_check.py)"
workloads=()
for job in deploy/k8s/jobs/*.yaml; do workloads+=(--workloads "$job"); done
"$work/venv/bin/python" tools/ci/k8s_check.py \
    --secrets-example deploy/k8s/overlays/example/secrets.example.yaml "${workloads[@]}" "${rendered[@]}"

echo "== k8s passed"
