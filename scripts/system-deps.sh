#!/usr/bin/env bash
# Debian packages the suite needs, installed idempotently (nothing is done when all are present);
# arguments name extra ones a job needs (./suite slow: chromium for the report test).
set -euo pipefail
pkgs=(dataset-fashion-mnist gcc gcc-aarch64-linux-gnu qemu-user-static debootstrap "$@")  # gcc: TVM links host libraries and the stub libcuda
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "error: Debian packages ${missing[*]} are missing and this user cannot install them;" \
       "run 'apt-get install ${missing[*]}' as root" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
