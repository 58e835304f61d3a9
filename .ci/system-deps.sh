#!/usr/bin/env bash
# Debian packages the test suite needs: a PostgreSQL server (the storage tests run against both SQLite
# and a throwaway PostgreSQL cluster) and Chromium (the review UI's browser test, driven by Playwright).
# Installs only what is missing; does nothing where apt-get is absent or we are not root (those tests
# then skip with a reason).
set -u
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]} (not root or no apt-get): the tests that need them will skip" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "system-deps: apt-get could not install ${need[*]}: the tests that need them will skip" >&2
exit 0
