#!/usr/bin/env bash
# Validates deploy/k8s offline: renders the kustomization, checks every object
# against the Kubernetes OpenAPI schemas in strict mode (unknown fields are
# errors) with `kubernetes-validate`, which ships the schemas in its wheel,
# and cross-checks references (selectors, ports, ConfigMap/Secret keys).
# Exits non-zero on any problem. No cluster and no network needed after the
# first run (the venv is cached).
#
# Usage: deploy/k8s/validate.sh [DIR]        (default: this directory)
# Environment:
#   K8S_VERSIONS   space-separated versions to validate against
#                  (default "1.29.0 1.37.0": oldest we support, newest known)
#   RENDERER       kubectl | kustomize | python (default: first available)
#   VALIDATE_VENV  venv path (default ~/.cache/tessera-k8s-validate-venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(cd "${1:-$here}" && pwd)"
versions="${K8S_VERSIONS:-1.29.0 1.37.0}"
venv="${VALIDATE_VENV:-$HOME/.cache/tessera-k8s-validate-venv}"
kv_version="1.37.0"

log() { printf 'validate: %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/kubernetes-validate" ]] \
    || ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
    log "creating $venv (kubernetes-validate==$kv_version)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$kv_version" PyYAML
fi

out="$(mktemp -d "${TMPDIR:-/tmp}/tessera-k8s.XXXXXX")"
trap 'rm -rf "$out"' EXIT
rendered="$out/rendered.yaml"

renderer="${RENDERER:-}"
if [[ -z "$renderer" ]]; then
    if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
        renderer=kubectl
    elif command -v kustomize >/dev/null; then
        renderer=kustomize
    else
        renderer=python
    fi
fi
case "$renderer" in
    kubectl) kubectl kustomize "$dir" >"$rendered" ;;
    kustomize) kustomize build "$dir" >"$rendered" ;;
    python) "$venv/bin/python" "$here/kustomize_lite.py" render "$dir" >"$rendered" ;;
    *) log "unknown RENDERER=$renderer"; exit 2 ;;
esac
count="$(grep -c '^kind:' "$rendered" || true)"
log "rendered $dir with $renderer: $count objects"
[[ "$count" -gt 0 ]] || { log "nothing rendered"; exit 1; }

status=0
for v in $versions; do
    # --quiet prints only failures; a failure makes the exit code non-zero.
    if "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$rendered"; then
        log "schemas $v (strict): ok"
    else
        log "schemas $v (strict): FAILED"
        status=1
    fi
done
if ! "$venv/bin/python" "$here/kustomize_lite.py" check "$rendered"; then
    status=1
fi

if [[ $status -eq 0 ]]; then
    log "ok: $count objects valid"
else
    log "FAILED"
fi
exit $status
