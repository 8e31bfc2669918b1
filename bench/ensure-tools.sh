#!/usr/bin/env bash
# Install the benchmark's load generator (wrk) and reference proxy (nginx) from Debian packages
# when missing, so `make bench` works on a fresh machine.
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "bench: installing ${missing[*]} from Debian packages"

# The benchmark starts its own nginx instances; keep the package from starting a system service
# on :80 (policy-rc.d exit 101 = "not allowed"), unless the machine already has a policy.
guard=/usr/sbin/policy-rc.d
if [ ! -e "$guard" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
    $sudo chmod +x "$guard"
    trap '$sudo rm -f "$guard"' EXIT
fi

$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
