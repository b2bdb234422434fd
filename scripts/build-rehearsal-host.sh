#!/usr/bin/env bash
# Builds the image every `campfleet rehearse` host boots (scripts/rehearsal/host.Dockerfile)
# on the stand-in Debian bookworm base of scripts/build-bases.sh:
#   campfleet-rehearsal-host:<key>   <key> hashes the base and the Dockerfile, so a second run
#                                    finds the image and rebuilds nothing ("cached").
# Prints `host=<image>` last.
#
#   bash scripts/build-rehearsal-host.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bases="$(bash "$here/build-bases.sh")" || exit 1
debian="$(echo "$bases" | sed -n 's/^ship=campfleet-base-ship:/campfleet-base-debian:/p')"
docker image inspect "$debian" >/dev/null 2>&1 || {
  echo "rehearsal-host: the Debian base $debian is missing; run scripts/build-bases.sh" >&2
  exit 1
}
key="$( (echo "$debian"; cat "$here/rehearsal/host.Dockerfile") | sha256sum | cut -c1-12)"
image="campfleet-rehearsal-host:$key"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "rehearsal-host: cached ($key)"
else
  echo "rehearsal-host: building $image (packages from Debian; a few minutes the first time)"
  err="$(mktemp)"
  DOCKER_BUILDKIT=0 docker build --quiet --force-rm --network host \
    --build-arg "DEBIAN_IMAGE=$debian" --label campfleet.rehearsal.image=host \
    -t "$image" -f "$here/rehearsal/host.Dockerfile" "$here/rehearsal" >/dev/null 2>"$err" || {
    tail -n 15 "$err" >&2
    rm -f "$err"
    exit 1
  }
  rm -f "$err"
  # Hosts of an earlier key are never used again.
  docker images --format '{{.Repository}}:{{.Tag}}' --filter 'reference=campfleet-rehearsal-host' \
    | grep -v ":$key\$" | xargs -r docker rmi >/dev/null 2>&1 || true
fi
echo "host=$image"
