#!/usr/bin/env bash
# Install the Debian 12 / Ubuntu packages one use of tpmtls needs, only those missing.
#
#   helpers/setup-debian.sh install      build tpmtls and run it on a machine with a TPM (make install)
#   helpers/setup-debian.sh quickstart   + the software TPM and registry the quickstart starts
#   helpers/setup-debian.sh test         + every peer the test suite starts (make test only)
#   helpers/setup-debian.sh --list STACK print the stack's packages, one a line, and exit
#
# It never takes anything from the machine: every install runs with apt-get --no-remove, and
# an optional test package whose install would remove one of yours (Debian's docker.io next
# to Docker CE: "Conflicts: docker-ce, docker-ce-cli") is left out with a line saying so. A
# Docker daemon already there is used as it is. No service starts during the install
# (policy-rc.d), and afterwards only units that came with packages installed by this run, and
# were not enabled before it, are disabled. Quick when everything is there; run as root.
set -euo pipefail

# Building tpmtls: the shim provider compiles against OpenSSL 3's headers; tpm2-pytss (no
# wheel on PyPI) against the TSS2 libraries. tpm-udev: the tss group and /dev/tpmrm0's mode.
# libpq5: psycopg's libpq, for enroll-server --db postgresql://.
install_stack=(build-essential pkg-config libssl-dev libtss2-dev python3-venv python3-dev tpm-udev libpq5)
# tpmtls quickstart: swtpm behind tpm2-abrmd on a private D-Bus, and a docker-registry.
quickstart_stack=(swtpm tpm2-abrmd libtss2-tcti-tabrmd0 dbus docker-registry)
# The suite's peers: EK certificates (swtpm_setup/localca), TPM tools, tpm2-openssl (interop
# and benchmark baseline), skopeo, NGINX (mTLS front), a static busybox (the tiny image the
# daemon tests run), openssl/curl, htpasswd (bcrypt for Basic auth), libfuse3 (the lab's
# /dev/tpmrm0 stand-in is a FUSE file), systemd-analyze (unit checks), debootstrap and
# systemd-nspawn (a fresh Debian root for the install tests, booted to run the units), zsh
# (completion scripts); for enroll-server, a PostgreSQL the tests start themselves (initdb in a
# temp dir), lego (a second ACME client), iproute2 (a network namespace for the public-name test);
# other OCI clients tried through `tpmtls proxy`: containerd (ctr, the CRI plugin; Docker CE's
# containerd.io, which conflicts with it, serves as well and is kept), podman, buildah; strace (the
# push benchmark counts the layer bytes a re-push reads from outside the process); chromium (a real
# browser for the proxies' caller checks: a page rebinding its name to loopback).
test_stack=(swtpm-tools tpm2-tools tpm2-openssl skopeo nginx-light busybox-static openssl curl
            apache2-utils fuse3 systemd systemd-container debootstrap zsh postgresql lego iproute2
            containerd podman buildah strace chromium)
# The suite's Docker daemon, unless one is installed already (docker-ce, a static dockerd …).
test_docker=(docker.io)

usage() { echo "usage: $0 [--list] {install|quickstart|test}" >&2; exit 2; }
list=0
if [ "${1:-}" = "--list" ]; then list=1; shift; fi
[ $# -eq 1 ] || usage
case "$1" in
  install) required=("${install_stack[@]}"); optional=() ;;
  quickstart) required=("${install_stack[@]}" "${quickstart_stack[@]}"); optional=() ;;
  test) required=("${install_stack[@]}" "${quickstart_stack[@]}")
        optional=("${test_stack[@]}")
        command -v dockerd >/dev/null || optional+=("${test_docker[@]}") ;;
  *) usage ;;
esac
if [ "$list" = 1 ]; then
  printf '%s\n' "${required[@]}" "${optional[@]}"
  exit 0
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${required[@]}" "${optional[@]}"; do installed "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing Debian packages: ${missing[*]}; run this as root (or apt-get install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

# What installing one package would remove of this machine's (apt's simulation, nothing done).
removes() { apt-get install -s --no-install-recommends $1 2>/dev/null | awk '/^Remv /{print $2}' | xargs; }
chosen=()
if [ -z "$(removes "${missing[*]}")" ]; then chosen=("${missing[@]}"); missing=(); fi  # the usual case: one look
for p in "${missing[@]}"; do
  gone=$(removes "$p")
  if [ -z "$gone" ]; then
    chosen+=("$p")
  elif printf '%s\n' "${optional[@]}" | grep -qx "$p"; then
    echo "setup: not installing $p: it would remove $gone; tests that need it will say they are skipped" >&2
  else
    echo "setup: cannot install $p: it would remove $gone (tpmtls needs $p; install it by hand if you mean to)" >&2
    exit 1
  fi
done
[ ${#chosen[@]} -eq 0 ] && exit 0
echo "setup: installing ${chosen[*]}"

# docker.io, docker-registry and nginx would start daemons listening on all interfaces
# (registry on :5000, nginx on :80); tpmtls only ever starts its own, on loopback, from
# its fixtures. So no service starts during this install (policy-rc.d, see invoke-rc.d(8)).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
systemd_host=0
[ -d /run/systemd/system ] && command -v systemctl >/dev/null && systemd_host=1
before=$(dpkg-query -W -f='${Package}\n' | sort)
enabled_before=""
[ "$systemd_host" = 1 ] && enabled_before=$(systemctl list-unit-files --state=enabled --no-legend 2>/dev/null | awk '{print $1}')
apt-get install -y -qq --no-install-recommends --no-remove "${chosen[@]}" >/dev/null
new=$(comm -13 <(echo "$before") <(dpkg-query -W -f='${Package}\n' | sort))  # with dependencies

if [ "$systemd_host" = 1 ] && [ -n "$new" ]; then
  units=$(dpkg -L $new 2>/dev/null | grep -E '^/(usr/)?lib/systemd/system/[^/]+\.(service|socket)$' \
          | xargs -r -n1 basename | sort -u | grep -vxF -e "$enabled_before" -e '' || true)
  if [ -n "$units" ]; then
    echo "setup: disabling services tpmtls does not need: $(echo $units)"
    systemctl disable --now $units >/dev/null 2>&1 || true
  fi
fi
