#!/usr/bin/env bash
# `make install` / `make uninstall`: tpmtls for the whole machine (docs/install.md).
#
#   $PREFIX   /opt/tpmtls                    a virtualenv with tpmtls built from this checkout
#   $BINDIR   /usr/local/bin                 tpmtls, tpmtls-push, tpmtls-pull, docker-credential-tpmtls
#                                            (links into $PREFIX/bin: Docker's credsStore and the units find them there)
#   $UNITDIR  /usr/local/lib/systemd/system  the systemd units, enabled by no one (docs/services.md)
#   user tpmtls (group tpmtls, member of tss) the proxy units run as
#
# `units DIR` writes only the units, as installed, into DIR (no root needed).
# Run as root. Re-running upgrades in place. Nothing that is not ours is replaced: a command
# of the same name that is not a link into $PREFIX stops the install with one line.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/tpmtls}
BINDIR=${BINDIR:-/usr/local/bin}
UNITDIR=${UNITDIR:-/usr/local/lib/systemd/system}
PYTHON=${PYTHON:-/usr/bin/python3}
USER_NAME=tpmtls
COMMANDS=(tpmtls tpmtls-push tpmtls-pull docker-credential-tpmtls)
# every unit in helpers/ (docs/services.md, "Conventions for new units")
UNITS=()
for u in helpers/tpmtls-*; do
  case "$u" in *.service|*.socket|*.timer) UNITS+=("$(basename "$u")") ;; esac
done

fail() { echo "install: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || fail "run as root (it writes $PREFIX, $BINDIR and $UNITDIR)"; }
umask 022  # the service user must read the venv whatever root's umask is
# systemd is the running init (sd_booted(3)), and answers (not a chroot with a stale /run)
systemd_running() {
  [ -d /run/systemd/system ] && command -v systemctl >/dev/null || return 1
  local state
  state=$(systemctl is-system-running 2>/dev/null || true)
  [ -n "$state" ] && [ "$state" != offline ]
}

ours() {  # is $1 absent, or a link into $PREFIX?
  [ ! -e "$1" ] && [ ! -L "$1" ] && return 0
  [ -L "$1" ] && [[ "$(readlink "$1")" == "$PREFIX"/* ]]
}

write_units() {  # the units as installed: commands from $BINDIR
  mkdir -p "$1"
  for u in "${UNITS[@]}"; do
    sed "s#/usr/local/bin/#$BINDIR/#g" "helpers/$u" > "$1/$u.tmp"
    chmod 644 "$1/$u.tmp" && mv "$1/$u.tmp" "$1/$u"
  done
}

install_all() {
  need_root
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || fail "$PYTHON is not Python >= 3.10: set INSTALL_PYTHON=/path/to/python3"
  for c in "${COMMANDS[@]}"; do
    ours "$BINDIR/$c" || fail "$BINDIR/$c exists and is not a link into $PREFIX: remove it, or choose BINDIR=…"
  done
  getent group tss >/dev/null || fail "no tss group (Debian's tpm-udev makes it): run helpers/setup-debian.sh install"

  if [ ! -x "$PREFIX/bin/python" ]; then
    echo "install: creating $PREFIX with $PYTHON"
    "$PYTHON" -m venv "$PREFIX"
  fi
  local wheels
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' RETURN
  echo "install: building tpmtls from $(pwd)"
  "$PREFIX/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$wheels" .
  # dependencies as needed, then this build even when the version number did not change
  "$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$wheels"/tpmtls-*.whl
  "$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheels"/tpmtls-*.whl

  mkdir -p "$BINDIR"
  for c in "${COMMANDS[@]}"; do ln -sfn "$PREFIX/bin/$c" "$BINDIR/$c"; done

  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --groups tss --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "tpmtls services" "$USER_NAME"
  elif ! id -nG "$USER_NAME" | grep -qw tss; then
    usermod -a -G tss "$USER_NAME"
  fi

  write_units "$UNITDIR"
  if systemd_running; then systemctl daemon-reload; fi
  echo "install: $("$BINDIR/tpmtls" --version) in $PREFIX; commands in $BINDIR; units in $UNITDIR (none enabled)"
  echo "install: next: tpmtls doctor; docs/services.md to run the proxies"
}

uninstall_all() {
  need_root
  if systemd_running; then
    active=$(systemctl list-units --no-legend --plain 'tpmtls-*' 2>/dev/null | awk '{print $1}' | xargs)
    [ -z "$active" ] || fail "stop and disable these first: systemctl disable --now $active"
  fi
  for c in "${COMMANDS[@]}"; do
    if [ -L "$BINDIR/$c" ] && ours "$BINDIR/$c"; then rm -f "$BINDIR/$c"; fi
  done
  for u in "${UNITS[@]}"; do rm -f "$UNITDIR/$u"; done
  if systemd_running; then systemctl daemon-reload; fi
  if [ -f "$PREFIX/pyvenv.cfg" ] && [ -x "$PREFIX/bin/tpmtls" ]; then rm -rf "$PREFIX"; fi
  echo "uninstall: removed $PREFIX, the commands in $BINDIR and the units in $UNITDIR"
  echo "uninstall: kept /etc/tpmtls (keys, certificates) and the user $USER_NAME (userdel $USER_NAME removes it)"
}

case "${1:-}" in
  install) install_all ;;
  uninstall) uninstall_all ;;
  units) [ $# -eq 2 ] || fail "usage: $0 units DIR"; write_units "$2" ;;  # for checks: the units alone
  *) echo "usage: $0 {install|uninstall|units DIR}" >&2; exit 2 ;;
esac
