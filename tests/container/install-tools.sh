#!/usr/bin/env bash
# Installs what the container tests need, from Debian's packages: buildah (builds the image),
# podman + runc (run it), debootstrap (the local stand-in for python:3.11-slim).
# Idempotent: returns at once when everything is there.
set -euo pipefail

tools=(buildah podman runc debootstrap)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages=(buildah podman runc debootstrap)
if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${missing[*]}: run as root: apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
fi
echo "installing ${packages[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
