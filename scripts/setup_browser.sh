#!/usr/bin/env bash
# Debian's chromium and chromium-driver, which the web demo's browser test drives
# (tests/test_web_demo.py), installed with apt when missing. Where that cannot be done (not root,
# no apt, no registry) it says so and the test skips with that reason; nothing else depends on them.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup_browser: chromium or chromedriver missing, and apt-get cannot install them here (needs root on Debian)" >&2
  exit 0
fi
echo "setup_browser: installing chromium and chromium-driver with apt-get" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "setup_browser: apt-get could not install chromium and chromium-driver" >&2
fi
exit 0
