#!/usr/bin/env bash
# Creates .venv from a Python 3.12+ interpreter and installs fleetloop with its pinned
# dependencies. Skips everything when the installed set already matches pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.fleetloop-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"

find_python() {
  local candidates=()
  [[ -n "${FLEETLOOP_PYTHON:-}" ]] && candidates+=("$FLEETLOOP_PYTHON")
  candidates+=(python3.12 python3.13 python3)
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  # pyenv keeps interpreters that its shims refuse to run unless selected; prefer the oldest 3.12+,
  # the version lerobot and torch are built and tested for.
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root)"
    for v in $(pyenv versions --bare 2>/dev/null | grep -E "^3\.(1[2-9])(\.[0-9]+)?$" | sort -V); do
      if [[ -x "$root/versions/$v/bin/python3" ]]; then
        echo "$root/versions/$v/bin/python3"; return 0
      fi
    done
  fi
  return 1
}

# Debian packages the end-to-end tests drive: chromium for the phone page (tests/e2e/test_phone_page.py; a browser
# that a tool downloads, as playwright install does, cannot be fetched here), Xvfb and xdotool for the keyboard
# operator (tests/e2e/test_keyboard_operator.py types into a virtual X display). One `command -v` each when present.
# ensure_debian <command> <package> <what needs it>
ensure_debian() {
  local command_name="$1" package="$2" purpose="$3"
  if command -v "$command_name" >/dev/null 2>&1; then
    return 0
  fi
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      echo "WARNING: $package is not installed and this user cannot run apt-get (not root, no passwordless sudo)." >&2
      echo "  $purpose needs it: as root run 'apt-get update && apt-get install -y $package'." >&2
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "WARNING: $package is not installed and there is no apt-get: install $package for $purpose." >&2
    return 0
  fi
  echo "Installing Debian's $package (for $purpose)..."
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" \
        </dev/null >/dev/null; }; then
    echo "WARNING: 'apt-get install $package' failed: $purpose will fail until $package is installed." >&2
  fi
}
if ! command -v chromium-browser >/dev/null 2>&1 && [[ -z "${FLEETLOOP_NO_CHROMIUM:-}" ]]; then
  ensure_debian chromium chromium "the phone page test"
fi
ensure_debian Xvfb xvfb "the keyboard operator test"
ensure_debian xdotool xdotool "the keyboard operator test"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  if ! PY="$(find_python)"; then
    echo "fleetloop needs Python 3.12 or newer (lerobot 0.6.1 and zarr 3.4 require it) and found none." >&2
    echo "Install one, e.g. 'pyenv install 3.12' or your distribution's python3.12 with venv," >&2
    echo "or point FLEETLOOP_PYTHON at an interpreter." >&2
    exit 1
  fi
  echo "Creating $VENV with $PY ($("$PY" --version))"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

echo "Installing fleetloop and its dependencies into $VENV (first time takes a few minutes)..."
"$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".[dev]"
# openpi's own client, which bench (o) drives the openpi endpoint with. Its metadata asks numpy < 2, which the numpy
# pin rules out; the modules used (websocket_client_policy, msgpack_numpy) run on numpy 2: installed without its deps.
"$VENV/bin/python" -m pip install --quiet --progress-bar off --no-deps "openpi-client==0.1.2"
echo "$WANT" > "$STAMP"
echo "Installed."
