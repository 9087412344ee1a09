#!/usr/bin/env bash
# Installs what building and testing mmattn needs on Debian 12, only when something is missing:
# the toolchain, Eigen 3.4, GoogleTest and Google Benchmark. Used by the README's two commands
# and by .ci/run. Extras by name, any of them: `fuzz` adds clang and its libFuzzer runtime (the fuzz
# preset), `render` adds rsvg-convert (cmake/render-svgs.sh, CI's check of the SVG pictures),
# `python` adds pybind11, numpy, pytest and PyTorch (CPU) for the Python module and its tests
# (python/; torch is large, so only this word installs it), with OpenBLAS, without which Debian's
# torch and numpy multiply through the reference BLAS, and `mpi` adds Open MPI for the
# context-parallel layer and its multi-rank tests (tests/mpi/).
# Runs apt-get as root, or through sudo when there is one.
set -euo pipefail

pkgs=(cmake g++ make libeigen3-dev libgtest-dev libbenchmark-dev)
for extra in "$@"; do
  case "$extra" in
    fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    render) pkgs+=(librsvg2-bin) ;;
    python) pkgs+=(python3-dev pybind11-dev python3-numpy python3-pytest python3-torch libopenblas0-pthread) ;;
    mpi) pkgs+=(libopenmpi-dev openmpi-bin) ;;
    *) echo "install-deps: unknown extra '$extra' (fuzz, render, python, mpi)" >&2; exit 2 ;;
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
