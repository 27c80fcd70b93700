#!/usr/bin/env bash
# Debian packages the tests drive: headless Chromium and GDAL (real clients), PostgreSQL (the
# shared tile store). Tests that need a missing one are skipped with a reason, so this step is
# best-effort off Debian or without root.
set -u
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v gdal_translate >/dev/null || need+=(gdal-bin)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-system-deps: cannot install ${need[*]} (need root and apt-get); dependent tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "install-system-deps: apt-get failed for ${need[*]}; dependent tests will skip" >&2
exit 0
