#!/usr/bin/env bash
# Installs what building and testing mmattn needs on Debian 12, only when something is missing:
# the toolchain, Eigen 3.4, GoogleTest and Google Benchmark. Used by the README's two commands
# and by .ci/run. Extras by name, any of them: `fuzz` adds clang and its libFuzzer runtime (the fuzz
# preset), `render` adds rsvg-convert (cmake/render-svgs.sh, CI's check of the SVG pictures).
# Runs apt-get as root, or through sudo when there is one.
set -euo pipefail

pkgs=(cmake g++ make libeigen3-dev libgtest-dev libbenchmark-dev)
for extra in "$@"; do
  case "$extra" in
    fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    render) pkgs+=(librsvg2-bin) ;;
    *) echo "install-deps: unknown extra '$extra' (fuzz, render)" >&2; exit 2 ;;
  esac
done
missing=()
for pkg in "${pkgs[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
done
(( ${#missing[@]} == 0 )) && exit 0

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
