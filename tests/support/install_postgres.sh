#!/bin/sh
# PostgreSQL from Debian for the shared job store's tests (tests/jobs/test_jobs_postgres.py, which start a
# private server of their own in a temporary directory). Run by `make test`. It installs only where it can
# (root with apt-get); elsewhere it says so and those tests skip with the reason.
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_postgres: not installing PostgreSQL: needs root and apt-get; the PostgreSQL job tests will skip" >&2
  exit 0
fi
apt-cache show postgresql >/dev/null 2>&1 || apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null || {
  echo "install_postgres: apt-get could not install postgresql; the PostgreSQL job tests will skip" >&2
  exit 0
}
