#!/usr/bin/env bash
# Installs the Debian 12 packages warpd needs to build, run and test.
# Idempotent: installs only what is missing; runs `apt-get update` at most once.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libboost-dev libboost-system-dev
  libpq-dev libssl-dev
  libtomlplusplus-dev
  libspdlog-dev libfmt-dev
  libsystemd-dev
  nlohmann-json3-dev
  libcli11-dev
  libgtest-dev libgmock-dev
  clang-format cppcheck
  postgresql-15 postgresql-client-15
  python3
  procps util-linux
  systemd dpkg-dev file
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
