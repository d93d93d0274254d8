#!/usr/bin/env bash
# Check the Kubernetes manifests of packaging/k8s offline, in seconds:
#   1. render each kustomization (base, overlays/gpu) without kubectl (render.py: the resources and strategic
#      merge patches they use, every file they name present), and check the references between the resources,
#      the example Secret (packaging/k8s/secret.example.yaml) and the ConfigMap's hearth.toml;
#   2. validate every rendered resource and the Secret against the API schemas of Kubernetes 1.29 and 1.37 (the
#      newest kubernetes-validate 1.37.0 carries) in strict mode: unknown fields and unknown kinds are errors
#      (validate.py, with kubernetes-validate, whose wheel carries the schemas);
#   3. when target/release/hearth (or $HEARTH_BIN) is built, `hearth config check` the ConfigMap's hearth.toml with
#      the Secret's files: the placeholders as shipped must be refused, and with test values (and the commented-out
#      [dingtalk] and [feishu] sections uncommented) it must pass.
# kubernetes-validate is installed, pinned, into a throwaway virtual environment (PyPI), removed at exit.
#
# Usage: tests/k8s/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/k8s
K8S=$ROOT/packaging/k8s
SECRET=$K8S/secret.example.yaml
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
KUBERNETES_VERSIONS=(1.29 1.37)
KUSTOMIZATIONS=(base overlays/gpu)

fail() {
    echo "tests/k8s/run.sh: $*" >&2
    exit 1
}

work=$(mktemp -d -t hearth-k8s.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== $KUBERNETES_VALIDATE into a throwaway virtual environment"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "$KUBERNETES_VALIDATE"
PY=$work/venv/bin/python

rendered=()
for kustomization in "${KUSTOMIZATIONS[@]}"; do
    name=${kustomization//\//-}
    echo "== render packaging/k8s/$kustomization and check its references"
    "$PY" "$HERE/render.py" "$K8S/$kustomization" --secret "$SECRET" -o "$work/$name.yaml" \
        --hearth-config "$work/$name-config" || fail "packaging/k8s/$kustomization does not render (above)"
    rendered+=("$name.yaml")
done

echo "== validate against Kubernetes ${KUBERNETES_VERSIONS[*]}, strict"
(cd "$work" && "$PY" "$HERE/validate.py" "${KUBERNETES_VERSIONS[@]/#/--kubernetes-version=}" \
    "${rendered[@]}" "$SECRET") || fail "resources do not validate (FAIL lines above)"

if [[ -x $HEARTH ]]; then
    for kustomization in "${KUSTOMIZATIONS[@]}"; do
        config=$work/${kustomization//\//-}-config
        echo "== hearth config check: packaging/k8s/$kustomization's hearth.toml and the example Secret"
        # Only the Secret's URL in the environment, as the Deployment sets it: none of this shell's HEARTH_*.
        check() { env -i HOME="$work" HEARTH_DATA__URL="$(<"$config/data_url")" "$HEARTH" --config "$1" config check; }
        if check "$config/shipped/hearth.toml" >/dev/null 2>"$work/refused"; then
            fail "hearth accepted the example Secret's placeholder API keys"
        fi
        grep -q 'server.api_keys_file' "$work/refused" ||
            fail "hearth refused the example for another reason than its placeholder keys: $(cat "$work/refused")"
        check "$config/filled/hearth.toml" >/dev/null || fail "hearth config check refused the filled-in hearth.toml"
    done
else
    echo "== hearth config check skipped: $HEARTH is not built (cargo build --release -p gateway)"
fi
echo "tests/k8s/run.sh: ok (${#KUSTOMIZATIONS[@]} kustomizations, Kubernetes ${KUBERNETES_VERSIONS[*]}) in ${SECONDS}s"
