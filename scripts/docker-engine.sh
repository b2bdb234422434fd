#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine: reuse one that already answers, else
# start dockerd in the background (no systemd needed) with its own data root, exec root,
# pidfile and log. Prints one line saying which; exits non-zero with the reason when the engine
# cannot start (the Docker tests then fail with that reason instead of skipping).
#
#   bash scripts/docker-engine.sh          # start or reuse
#   bash scripts/docker-engine.sh --stop   # stop the dockerd this script started (if any)
set -euo pipefail

root=/var/lib/campfleet-docker
run=/run/campfleet-docker
pidfile=/run/campfleet-dockerd.pid
log=/var/log/campfleet-dockerd.log

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    echo "docker-engine: stopped dockerd $(cat "$pidfile")"
  fi
  exit 0
fi

if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "docker-engine: reusing the engine that answers ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi
command -v dockerd >/dev/null 2>&1 || {
  echo "docker-engine: dockerd is not installed (scripts/system-deps.sh installs docker.io)" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || {
  echo "docker-engine: no engine answers and starting dockerd needs root" >&2
  exit 1
}
mkdir -p "$root" "$run" "$(dirname "$log")"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "docker-engine: dockerd $(cat "$pidfile") is starting; waiting for it"
else
  # Builds and campfleet's containers use the host network: nothing is routed through the
  # engine's default bridge.
  setsid dockerd --data-root "$root" --exec-root "$run" --pidfile "$pidfile" \
    --host unix:///var/run/docker.sock --storage-driver overlay2 \
    >>"$log" 2>&1 </dev/null &
  echo "docker-engine: started dockerd (log $log)"
fi
for _ in $(seq 1 60); do
  if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "docker-engine: engine $(docker version --format '{{.Server.Version}}') answers"
    exit 0
  fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 30 s; last lines of $log:" >&2
tail -n 15 "$log" >&2
exit 1
