#!/usr/bin/env bash
# The test command (README): formatting, lints, every Rust test, then the
# end-to-end suite that drives a real `tessera dev` cluster with the aws cli
# and boto3. Installs what it needs (a Python venv with pinned clients).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export CARGO_TERM_COLOR=never
VENV="${TESSERA_VENV:-$HOME/.cache/tessera-venv}"

step() { printf '\n==> %s\n' "$*"; }

step "python venv with the aws cli v1, boto3 and pytest ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

# --- real S3 clients (issue 3): rclone, s3cmd and the aws cli v2 from Debian
# (/usr/bin/aws; the venv's $VENV/bin/aws is the aws cli v1 from PyPI).
step "Debian packages: rclone, s3cmd, awscli (aws cli v2), chromium (console test)"
CLIENT_PKGS=(rclone s3cmd awscli chromium)
missing=()
for p in "${CLIENT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# --- end real S3 clients

step "Kubernetes manifests: offline schema validation"
bash deploy/k8s/validate.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --all-targets --quiet

step "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "fuzz: every cargo-fuzz target for 20 s from its seed corpus (fuzz/run.sh; own target dir)"
bash fuzz/run.sh 20

step "end-to-end: tessera dev + aws cli + boto3"
export TESSERA_BIN="$CARGO_TARGET_DIR/debug/tessera"
# The console test saves a screenshot here (tests/e2e/test_console.py).
export TESSERA_ARTIFACTS="${TESSERA_ARTIFACTS:-$ROOT/tests/e2e/artifacts}"
"$VENV/bin/python" -m pytest -v -s tests/e2e
echo "console screenshot: $TESSERA_ARTIFACTS/console.png"

step "compose: 3 meta, 6 storage in 3 zones, 2 gateways in Docker; kill 2 storage, partition the meta leader (deploy/compose/test.sh)"
# The image is made from the debug binary built above (no registry); the
# test removes its containers, volumes, network and image, also on failure.
AWS="$VENV/bin/aws" bash deploy/compose/test.sh

step "chaos: short profile (fixed seeds; kill/stop/partition/corrupt/full-disk against tessera dev; chaos/README.md)"
"$VENV/bin/python" -m pytest -q chaos/test_checker.py
"$VENV/bin/python" chaos/run.py --profile short
