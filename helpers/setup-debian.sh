#!/usr/bin/env bash
# Install the Debian 12 packages tpmtls needs, only those missing (quick when all are there).
# Run as root. `apt-get update` runs only when something has to be installed.
set -euo pipefail

packages=(
  # build: tpm2-pytss compiles against libtss2; the OpenSSL shim provider against libssl
  build-essential pkg-config libtss2-dev libssl-dev python3-venv python3-dev
  # software TPM, resource manager on a private D-Bus, TPM tools
  swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus tpm2-tools
  # interop reference and benchmark baseline (tests only)
  tpm2-openssl
  # registry, registry client, Docker daemon, NGINX for the mTLS front
  docker-registry skopeo docker.io nginx-light
  # test peers
  openssl curl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing Debian packages: ${missing[*]}; run 'make setup' as root (or apt-get install them)" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
