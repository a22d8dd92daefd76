#!/usr/bin/env bash
# Offline infrastructure checks (no AWS account, no terraform binary, no docker engine):
#   1. pytest ci/infra  - python-hcl2 parses terraform/ and asserts its structure; the user
#                         data renders to valid bash (and passes shellcheck)
#   2. checkov          - no failed check on terraform/ (deliberate skips carry inline reasons)
#   3. hadolint         - no error on the Dockerfile
# Each tool runs in its own venv: checkov pins a python-hcl2 that conflicts with ours.
# All three always run; the script exits non-zero if any of them failed.
#
# Usage: bash ci/infra/run.sh
# Env:   PYTHON          interpreter for the venvs (default python3, >= 3.9)
#        INFRA_VENV_DIR  where the venvs live (default .venv-infra in the repo, git-ignored);
#                        reused while ci/infra/requirements-*.txt and the Python are unchanged
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

PYTHON=${PYTHON:-python3}
VENV_DIR=${INFRA_VENV_DIR:-$ROOT/.venv-infra}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

log() { printf '\n==> %s\n' "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  echo "ci/infra/run.sh: need Python >= 3.9 as \$PYTHON (got: $("$PYTHON" --version 2>&1 || echo none))" >&2
  exit 2
fi
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# python -m venv needs ensurepip, which Debian ships separately (python3.X-venv).
create_venv() {
  local dir=$1
  if "$PYTHON" -m venv "$dir" > /dev/null 2>&1; then
    return 0
  fi
  rm -rf "$dir"
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "python -m venv failed: installing python$PY_VERSION-venv"
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$PY_VERSION-venv" > /dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
    "$PYTHON" -m venv "$dir"
  else
    echo "ci/infra/run.sh: '$PYTHON -m venv' failed; install python$PY_VERSION-venv" >&2
    return 1
  fi
}

# ensure_venv NAME REQUIREMENTS: (re)build VENV_DIR/NAME when the requirements or Python changed.
ensure_venv() {
  local dir="$VENV_DIR/$1" req="$HERE/$2" stamp
  stamp="$(sha256sum "$req" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version)' | head -n1)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2> /dev/null || true)" = "$stamp" ]; then
    echo "venv $1: up to date ($dir)"
    return 0
  fi
  echo "venv $1: installing $(grep -v '^#' "$req" | tr '\n' ' ')"
  rm -rf "$dir"
  mkdir -p "$VENV_DIR"
  create_venv "$dir"
  if ! "$dir/bin/python" -m pip install --quiet --no-input -r "$req" > "$dir.install.log" 2>&1; then
    tail -n 40 "$dir.install.log" >&2
    rm -rf "$dir"
    return 1
  fi
  echo "$stamp" > "$dir/.stamp"
}

log "venvs in $VENV_DIR"
ensure_venv hcl requirements-hcl.txt
ensure_venv checkov requirements-checkov.txt
HCL_BIN="$VENV_DIR/hcl/bin"
CHECKOV_BIN="$VENV_DIR/checkov/bin"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=()

# --- 1. structure and user data -------------------------------------------------------------
log "1/3 pytest ci/infra (python-hcl2 structure, user data renders)"
if PATH="$HCL_BIN:$PATH" "$HCL_BIN/python" -m pytest -c ci/infra/pytest.ini --rootdir ci/infra ci/infra -q; then
  echo "structure checks: ok"
else
  FAILED+=("pytest ci/infra")
fi

# --- 2. checkov -----------------------------------------------------------------------------
log "2/3 checkov -d terraform --skip-download"
set +e
LOG_LEVEL=WARNING "$CHECKOV_BIN/checkov" -d terraform --framework terraform secrets \
  --skip-download --compact -o json > "$WORK/checkov.json" 2> "$WORK/checkov.err"
checkov_rc=$?
set -e
if "$HCL_BIN/python" "$HERE/checkov_report.py" "$WORK/checkov.json" && [ "$checkov_rc" -eq 0 ]; then
  echo "checkov: ok"
else
  echo "checkov exit status: $checkov_rc" >&2
  tail -n 20 "$WORK/checkov.err" >&2 || true
  FAILED+=("checkov")
fi

# --- 3. hadolint ----------------------------------------------------------------------------
log "3/3 hadolint Dockerfile"
if "$HCL_BIN/hadolint" --no-color --failure-threshold error Dockerfile; then
  echo "hadolint $("$HCL_BIN/hadolint" --version | awk '{print $NF}'): no errors ($("$HCL_BIN/hadolint" --no-color --failure-threshold none Dockerfile | grep -c . || true) findings below error)"
else
  FAILED+=("hadolint")
fi

echo
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "infra checks FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "infra checks passed (pytest ci/infra, checkov, hadolint)"
