#!/usr/bin/env bash
# Installs the Debian tools some tests use: cloud-init (user-data schema check),
# chromium (browser test) and shellcheck. Needs root and apt-get; otherwise it says what is
# missing and the tests that need a tool skip, naming it.
set -euo pipefail

need=()
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: not root or no apt-get; tests that need ${need[*]} will be skipped" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]} from Debian"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
