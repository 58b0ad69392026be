#!/usr/bin/env bash
# Install the Debian 12 packages tpmtls needs, only those missing (quick when all are there).
# Run as root. `apt-get update` runs only when something has to be installed.
set -euo pipefail

packages=(
  # build: tpm2-pytss compiles against libtss2; the OpenSSL shim provider against libssl
  build-essential pkg-config libtss2-dev libssl-dev python3-venv python3-dev
  # software TPM, resource manager on a private D-Bus, TPM tools
  swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus tpm2-tools
  # libfuse3 (and fusermount3) for the lab's /dev/tpmrm0 stand-in, a FUSE file (tests only)
  fuse3
  # interop reference and benchmark baseline (tests only)
  tpm2-openssl
  # registry, registry client, Docker daemon, NGINX for the mTLS front
  docker-registry skopeo docker.io nginx-light
  # a static busybox: the tiny image the daemon tests run containers from
  busybox-static
  # test peers (htpasswd: bcrypt entries for the registry's Basic auth)
  openssl curl apache2-utils
  # enroll-server: libpq for psycopg (--db postgresql://); a PostgreSQL the tests and benchmark start
  # themselves (initdb in a temp dir); lego, a second standard ACME client the tests drive; iproute2
  # for the network namespace the server's public-name test runs in
  libpq5 postgresql lego iproute2
  # other OCI clients tried through `tpmtls proxy` (skopeo is above): containerd (ctr and the
  # CRI plugin), podman, buildah
  containerd podman buildah
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${packages[@]}"; do
  # Docker CE's containerd.io ships ctr and containerd too and conflicts with Debian's
  # containerd: apt would remove it (and break Docker CE) to install ours. Keep it.
  if [ "$p" = containerd ] && installed containerd.io; then continue; fi
  installed "$p" || missing+=("$p")
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

# docker.io, docker-registry and nginx would start daemons listening on all interfaces
# (registry on :5000, nginx on :80); tpmtls only ever starts its own, on loopback, from
# its fixtures. So no service starts during this install (policy-rc.d, see
# invoke-rc.d(8)), and on a systemd host the units of the packages installed here are
# disabled. Packages that were already installed are left exactly as they were.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
before=$(dpkg-query -W -f='${Package}\n' | sort)
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
new=$(comm -13 <(echo "$before") <(dpkg-query -W -f='${Package}\n' | sort))  # with dependencies

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  units=$(dpkg -L $new 2>/dev/null | grep -E '^/(usr/)?lib/systemd/system/[^/]+\.(service|socket)$' \
          | xargs -r -n1 basename | sort -u)
  if [ -n "$units" ]; then
    echo "setup: disabling services tpmtls does not need: $(echo $units)"
    systemctl disable --now $units >/dev/null 2>&1 || true
  fi
fi
