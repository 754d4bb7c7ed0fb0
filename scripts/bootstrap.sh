#!/usr/bin/env bash
# Prepare a fresh machine for streamrec: system packages (redis-server, Java 17, Maven, chromium) and the
# project's virtual environment in .venv. Idempotent and quick when everything is in place.
# Kafka's jars are resolved from Maven Central by `streamrec stack up` on first use and cached.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || { log "installing redis-server (Debian package)"; apt_install redis-server; }
command -v java >/dev/null || { log "installing Java 17"; apt_install openjdk-17-jre-headless; }
command -v mvn >/dev/null || { log "installing Maven"; apt_install maven; }
command -v openssl >/dev/null || { log "installing openssl (STREAMREC_STACK_TLS makes its CA with it)"; apt_install openssl; }
# The browser test (tests/integration/test_page_browser.py) drives Debian's chromium through its chromedriver;
# selenium is pointed at these two binaries and never downloads a browser or a driver.
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || {
  log "installing chromium and chromium-driver (the page's browser test)"; apt_install chromium chromium-driver; }

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "Python >= 3.11 is required"; exit 1; }

# uv installs the environment several times faster than pip; fall back to pip if it cannot be had.
UV=$(command -v uv || true)
if [ -z "$UV" ] && "$PYTHON" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1; then
  UV=$(command -v uv || "$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts") + "/uv")')
fi

EXTRAS=${STREAMREC_EXTRAS:-dev,train}
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/-}"
if [ -f "$stamp" ]; then
  exit 0
fi
log "creating .venv with extras [$EXTRAS]"
if [ -n "$UV" ] && [ -x "$UV" ]; then
  [ -x .venv/bin/python ] || "$UV" venv -q --python "$PYTHON" .venv
  "$UV" pip install -q -p .venv/bin/python -e ".[$EXTRAS]"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
fi
rm -f .venv/.installed-*
touch "$stamp"
log "ready: .venv/bin/streamrec"
