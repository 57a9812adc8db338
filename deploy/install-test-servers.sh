#!/usr/bin/env bash
# Installs what meterflow's integration tests start on loopback, skipping anything already there:
#   - ClickHouse server (Debian package; the tests start their own instance under a temp dir),
#   - tansu, a Kafka-protocol broker (built once into ~/.cargo/bin; sqlite storage keeps offsets exact),
#   - the build dependencies of librdkafka (OpenSSL, zlib headers, pkg-config),
#   - chdb-core, an embedded current ClickHouse used to check every DDL statement and documented query,
#   - headless Chromium and its driver (Debian packages) and selenium, for the dashboard's browser test.
#   - botocore and jsonschema, to validate the marketplace request files `meterflow export` writes.
# Needs root (or sudo) for apt-get only when a package is missing.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing_packages=()
# openssl: the test ClickHouse serves HTTPS with a certificate made by `openssl req`.
for pkg in libssl-dev zlib1g-dev pkg-config openssl chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing_packages+=("$pkg")
done
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/bin/clickhouse-server ] && [ ! -x /usr/sbin/clickhouse-server ]; then
  missing_packages+=(clickhouse-server clickhouse-client)
fi
if [ ${#missing_packages[@]} -gt 0 ]; then
  echo "installing ${missing_packages[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing_packages[@]}"
fi

# The default `tansu` build keeps nothing; the sqlite engine is what the offset and restart tests need.
TANSU_VERSION=0.6.0
if ! { [ -x "$HOME/.cargo/bin/tansu" ] && "$HOME/.cargo/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }; then
  echo "building tansu $TANSU_VERSION (takes 15-20 minutes on 2 cores, once)" >&2
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

if ! python3 -c 'import chdb' >/dev/null 2>&1; then
  echo "installing chdb-core" >&2
  python3 -m pip install --quiet chdb-core 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages chdb-core
fi

# selenium drives Chromium; botocore (its AWS Marketplace Metering model and parameter validator)
# and jsonschema check the marketplace request files `meterflow export` writes; cryptography
# lets the marketplace stand-in verify Google service account JWTs; kubernetes-validate checks
# deploy/k8s/ offline against Kubernetes' own schemas.
for package in selenium botocore jsonschema cryptography kubernetes-validate; do
  module=${package//-/_}
  if ! python3 -c "import $module" >/dev/null 2>&1; then
    echo "installing $package" >&2
    python3 -m pip install --quiet "$package" 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages "$package"
  fi
done
