#!/usr/bin/env bash
# Builds the local stand-in base images the ship and mux Dockerfiles build on when no public
# registry can be reached (tests, `campfleet local --runtime docker`):
#   campfleet-base-debian:<key>  Debian bookworm from debootstrap, imported with `docker import`,
#                                trusting this host's CA bundle (pip/npm/apt inside builds)
#   campfleet-base-ship:<key>    meets the ship base contract (images/ship/Dockerfile)
#   campfleet-base-mux:<key>     meets the mux base contract (images/mux/Dockerfile)
# <key> hashes everything that goes into them (the recipe version below, the package list, the
# mirror, scripts/bases/*, the CA bundle), so a second run finds them and rebuilds nothing. Prints `ship=<image>` and `mux=<image>` last.
#
#   bash scripts/build-bases.sh [--mirror URL]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mirror="${CAMPFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
[ "${1:-}" = "--mirror" ] && mirror="$2"
ca=/etc/ssl/certs/ca-certificates.crt
packages="ca-certificates,python3,python3-venv"
recipe=1  # bump when the debootstrap/import steps below change what the images contain

[ -r "$ca" ] || { echo "build-bases: no CA bundle at $ca" >&2; exit 1; }
docker version >/dev/null 2>&1 || {
  echo "build-bases: no Docker engine answers (run scripts/docker-engine.sh)" >&2
  exit 1
}
key="$(cat "$here"/bases/*.Dockerfile "$ca" <(echo "$recipe $mirror $packages") \
  | sha256sum | cut -c1-12)"
debian="campfleet-base-debian:$key"
ship="campfleet-base-ship:$key"
mux="campfleet-base-mux:$key"
have() { docker image inspect "$1" >/dev/null 2>&1; }

if have "$ship" && have "$mux"; then
  echo "build-bases: cached ($key)"
else
  if ! have "$debian"; then
    command -v debootstrap >/dev/null 2>&1 || {
      echo "build-bases: debootstrap is not installed (scripts/system-deps.sh installs it)" >&2
      exit 1
    }
    [ "$(id -u)" -eq 0 ] || { echo "build-bases: debootstrap needs root" >&2; exit 1; }
    work="$(mktemp -d /var/tmp/campfleet-debootstrap.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    echo "build-bases: debootstrap Debian bookworm from $mirror (about a minute)"
    mkdir -p /var/cache/campfleet-debootstrap  # downloaded .debs, kept for the next key
    if ! debootstrap --variant=minbase --include="$packages" \
      --cache-dir=/var/cache/campfleet-debootstrap bookworm "$work/root" "$mirror" \
      >"$work/debootstrap.log" 2>&1; then
      echo "build-bases: debootstrap failed; last lines:" >&2
      tail -n 15 "$work/debootstrap.log" "$work/root/debootstrap/debootstrap.log" >&2 || true
      exit 1
    fi
    # Trust what this host trusts (an inspecting proxy's CA included), for every tool.
    cp "$ca" "$work/root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    echo "build-bases: docker import $debian"
    tar -C "$work/root" -c . | docker import \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' \
      - "$debian" >/dev/null
    rm -rf "$work"
    trap - EXIT
  fi
  tmp_err="$(mktemp)"
  for which in ship mux; do
    image="campfleet-base-$which:$key"
    echo "build-bases: building $image"
    # The classic builder (no buildx plugin needed); its deprecation notice is not news.
    DOCKER_BUILDKIT=0 docker build --quiet --force-rm --network host --build-arg "DEBIAN_IMAGE=$debian" \
      -t "$image" -f "$here/bases/$which.Dockerfile" "$here/bases" >/dev/null 2>"$tmp_err" || {
      cat "$tmp_err" >&2
      exit 1
    }
  done
  rm -f "$tmp_err"
  # Bases of an earlier key are never used again.
  docker images --format '{{.Repository}}:{{.Tag}}' --filter 'reference=campfleet-base-*' \
    | grep -v ":$key\$" | xargs -r docker rmi >/dev/null 2>&1 || true
fi
echo "ship=$ship"
echo "mux=$mux"
