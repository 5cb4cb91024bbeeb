#!/usr/bin/env bash
# One-step setup on Debian/Ubuntu: system audio tools, then the package with the CPU build of torch.
# torch is pinned to 2.13.0 in the same pip call, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq espeak-ng sox libsox-fmt-all libsndfile1 libportaudio2 \
    pulseaudio pulseaudio-utils libasound2-plugins flite festival festvox-kdlpc16k >/dev/null
python3 -m pip install -q torch==2.13.0 -e ".[test]"
