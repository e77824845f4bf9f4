#!/usr/bin/env bash
# Installs Debian packages the tests need, each named by a command it provides:
#   tests/apt-ensure.sh promtool:prometheus buildah:buildah ...
# Idempotent: returns at once when every command is there.
set -euo pipefail

packages=()
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || packages+=("${pair#*:}")
done
[ ${#packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing: run as root: apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
fi
echo "installing ${packages[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
