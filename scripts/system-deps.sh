#!/usr/bin/env bash
# Installs the Debian tools some tests use: cloud-init (user-data schema check),
# chromium (browser test), shellcheck, prometheus + prometheus-alertmanager (the alerting
# test of docs/monitoring.md), nginx, pebble and certutil (`campfleet local --tls`: the TLS
# terminator, Let's Encrypt's test CA, a browser profile trusting it), and the Docker engine
# with debootstrap and docker-registry (the Docker tests: stand-in bases, a local registry
# for ECR). Needs apt-get and root (or passwordless sudo); otherwise it says what is missing
# and the tests that need a tool skip, naming it. Then it makes sure a Docker engine answers
# (scripts/docker-engine.sh); when none can start, the Docker tests fail with the reason.
set -euo pipefail

engine() {
  bash "$(dirname "$0")/docker-engine.sh" ||
    echo "system-deps: no Docker engine; the Docker tests will fail with the reason above" >&2
}

need=()
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
# The rehearsal's local AWS (campfleet/rehearsal/aws.py and its parts): loop devices, nsenter, routes and
# DOCKER-USER rules, and openssl (its test checks identity signatures as AWS documents).
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -eq 0 ]; then
  engine
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
if ! command -v apt-get >/dev/null 2>&1 || { [ ${#sudo[@]} -gt 0 ] && ! sudo -n true 2>/dev/null; }; then
  echo "system-deps: no apt-get or no root; tests that need ${need[*]} will be skipped" >&2
  engine
  exit 0
fi
echo "system-deps: installing ${need[*]} from Debian"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# One at a time: a package this distribution cannot install (Ubuntu's chromium is a snap stub)
# must not stop the others; the tests that need it skip and name it.
for pkg in "${need[@]}"; do
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
    || echo "system-deps: could not install $pkg; tests that need it will be skipped" \
      "(the Docker tests fail, naming it)" >&2
done
engine
