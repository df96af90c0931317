#!/usr/bin/env bash
# ensure-deb.sh PACKAGE PATH [PACKAGE PATH ...]: install each Debian package whose PATH (a
# command on PATH or a file glob) is missing. Never fails: a target that needs the package
# says so itself when it is still missing.
set -uo pipefail
missing=()
while [ $# -ge 2 ]; do
  package=$1 probe=$2
  shift 2
  if command -v "$probe" >/dev/null 2>&1 || compgen -G "$probe" >/dev/null; then
    continue
  fi
  missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install ${missing[*]} yourself" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
echo "installing ${missing[*]}"
{ $sudo apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
  || echo "${missing[*]} could not be installed" >&2
exit 0
