# Sourced by scripts/run, scripts/test and scripts/bench: finds Python >= 3.12, makes .venv,
# installs the project into it. Sets ROOT and VENV.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
    local candidates=()
    [ -n "${AGENTGATE_PYTHON:-}" ] && candidates+=("$AGENTGATE_PYTHON")
    candidates+=(python3.13 python3.12 python3)
    local root
    for root in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]* /usr/local/bin /usr/bin; do
        [ -x "$root/bin/python3" ] && candidates+=("$root/bin/python3")
        [ -x "$root/python3.13" ] && candidates+=("$root/python3.13")
        [ -x "$root/python3.12" ] && candidates+=("$root/python3.12")
    done
    local c
    for c in "${candidates[@]}"; do
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

bootstrap() {
    local extras="${1:-}"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
        local py
        if ! py="$(find_python)"; then
            echo "agentgate needs Python 3.12 or newer (mitmproxy 12 requires it) and none was found." >&2
            echo "Install one (e.g. 'pyenv install 3.12' or your distribution's python3.12 package)," >&2
            echo "or point AGENTGATE_PYTHON at it." >&2
            exit 2
        fi
        echo "Creating $VENV with $py ($("$py" --version 2>&1))" >&2
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp="$VENV/.agentgate-installed$extras"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "Installing agentgate${extras} into $VENV" >&2
        local log="$VENV/install.log"
        if ! "$VENV/bin/python" -m pip install -q -e "$ROOT$extras" >"$log" 2>&1; then
            cat "$log" >&2
            echo "installing agentgate failed (log: $log)" >&2
            exit 2
        fi
        touch "$stamp"
    fi
}
