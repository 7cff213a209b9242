#!/usr/bin/env bash
# The real Prometheus server the metrics test scrapes with (Debian's `prometheus` package).
# Run by `make test` before the suite, and by the test itself when it is run alone; a no-op
# when the binary is there already.
set -euo pipefail
command -v prometheus >/dev/null 2>&1 && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "prometheus: not installed, and installing it needs root (apt-get install prometheus)" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# The package list may be missing or stale on a fresh machine.
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service where systemd runs; the test starts its own server.
command -v prometheus >/dev/null
