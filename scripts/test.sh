#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs what the tests need (nats-server, Node.js, kubectl and HAProxy
# from Debian's packages, schemathesis, nats-py and nkeys from PyPI, the
# SDK's build tools and the manifests' schemas from npm), then checks
# formatting and lints and runs every test in the workspace and the
# JavaScript SDK's.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The demo's end-to-end tests drive Debian's Chromium (clients/js/test/demo.test.mjs).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# `kubectl kustomize` renders deploy/ (tests/deploy.rs); HAProxy stands in
# for a Kubernetes Service in the rolling-restart test (tests/rollout.rs).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# schemathesis checks the OpenAPI document against the live server (tests/openapi.rs).
if ! command -v st >/dev/null 2>&1; then
  echo "installing: schemathesis"
  python3 -m pip install -q --disable-pip-version-check schemathesis
fi
command -v st >/dev/null 2>&1 || { echo "schemathesis installed, but 'st' is not on PATH" >&2; exit 1; }
# nats-py publishes as a non-Rust backend would (tests/cluster.rs).
if ! python3 -c "import nats, nkeys" >/dev/null 2>&1; then
  echo "installing: nats-py nkeys"
  python3 -m pip install -q --disable-pip-version-check nats-py nkeys
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# The Kubernetes API schemas the manifests are validated against, offline.
(cd deploy/test && npm ci --silent --no-audit --no-fund)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"

# The JavaScript SDK (clients/js), against the server binary just built.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "the SDK's tests need Node.js >= 20 (found $(node --version))" >&2
  exit 1
fi
(
  cd clients/js
  npm ci --silent --no-audit --no-fund
  # The binary serves the client the build makes (/demo): it must be current.
  committed=$(mktemp)
  cp ../../src/http/demo/switchboard.js "$committed"
  npm run build --silent
  if ! cmp -s "$committed" ../../src/http/demo/switchboard.js; then
    echo "src/http/demo/switchboard.js was stale: rebuilt it from clients/js; commit it" >&2
    exit 1
  fi
  SWITCHBOARD_BIN="$PWD/../../target/debug/switchboard" npm test --silent
)
