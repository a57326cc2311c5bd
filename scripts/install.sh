#!/usr/bin/env bash
# Installs this project into a Python environment with pip. It is the one install recipe, shared by
# `make install` and docker/Dockerfile*, so the steps CI runs are the steps the images run.
#
# Usage: scripts/install.sh [--editable] [--extras LIST] PYTHON
#   PYTHON          interpreter of the target environment (normally a venv's bin/python)
#   --extras LIST   comma-separated extras of pyproject.toml, e.g. export,dev,bench (none: the service only)
#   --editable      install the project in development mode (pip install -e)
# Environment:
#   TORCH_INDEX_URL    index that torch alone comes from; unset: PyTorch's CPU index
#                      (https://download.pytorch.org/whl/cpu), because PyPI's Linux torch is the CUDA
#                      build (GBs). Empty (TORCH_INDEX_URL=): pip's configured indexes only. An index
#                      that does not answer is skipped with a warning (offline mirrors keep working).
#   TORCH_INDEX_TIMEOUT  seconds to wait for that index's answer (default 10)
#   INSTALL_DRY_RUN=1  print the pip commands, one a line, instead of running them (the torch index
#                      is assumed to answer unless TORCH_INDEX_PROBE=1)
set -euo pipefail

usage="usage: scripts/install.sh [--editable] [--extras LIST] PYTHON"
editable=0
extras=""
while (($# > 0)); do
    case "$1" in
        --editable) editable=1; shift ;;
        --extras) extras="${2?--extras needs a value}"; shift 2 ;;
        --extras=*) extras="${1#--extras=}"; shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
        *) break ;;
    esac
done
if (($# != 1)); then
    echo "$usage" >&2
    exit 2
fi
python="$1"
if [[ "$python" == */* && "$python" != /* ]]; then
    python="$PWD/$python" # a relative path stays valid after the cd below (no realpath: it leaves the venv)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run() {
    if [[ "${INSTALL_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Checks the extras against pyproject.toml (pip only warns about unknown ones) and prints the torch
# requirement of the requested extras, if any: pyproject.toml is the one place torch is pinned.
# A second line lists the requested extras' [tool.face-service.no-deps] packages.
spec_lines="$(
    "$python" - "$extras" <<'PY'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
optional = project["project"].get("optional-dependencies", {})
no_deps = project.get("tool", {}).get("face-service", {}).get("no-deps", {})
requested = [name for name in sys.argv[1].split(",") if name]
unknown = sorted(set(requested) - set(optional))
if unknown:
    sys.exit(f"install.sh: unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
specs = {spec for name in requested for spec in optional[name] if re.match(r"torch(?![\w.-])", spec)}
if len(specs) > 1:
    sys.exit(f"install.sh: conflicting torch requirements in the extras: {sorted(specs)}")
print(*specs)
print(*(spec for name in requested for spec in no_deps.get(name, [])))
PY
)"
mapfile -t specs <<<"$spec_lines"
torch_spec="${specs[0]:-}"
no_deps_specs="${specs[1]:-}"

run "$python" -m pip install --upgrade pip setuptools wheel

# Whether the torch index answers (its torch/ page), within TORCH_INDEX_TIMEOUT seconds.
torch_index_answers() {
    "$python" - "$1" "${TORCH_INDEX_TIMEOUT:-10}" <<'PY'
import sys
import urllib.request

url, timeout = sys.argv[1].rstrip("/") + "/torch/", float(sys.argv[2])
try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # DNS, refused, timeout, HTTP errors, a malformed URL: all "does not answer"
    print(f"install.sh: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

if [[ -n "$torch_spec" ]]; then
    # torch goes in first, alone, from the CPU index: the project install then finds the pin
    # satisfied instead of resolving torch from PyPI, whose Linux wheel is the CUDA build.
    torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
    index_args=()
    if [[ -n "$torch_index" ]]; then
        if [[ "${INSTALL_DRY_RUN:-0}" == 1 && "${TORCH_INDEX_PROBE:-0}" != 1 ]] \
            || torch_index_answers "$torch_index"; then
            index_args=(--index-url "$torch_index")
        else
            echo "install.sh: warning: torch index $torch_index does not answer; installing $torch_spec" \
                "from pip's configured indexes (set TORCH_INDEX_URL to a reachable CPU index, or" \
                "TORCH_INDEX_URL= to skip this check)" >&2
        fi
    fi
    run "$python" -m pip install "${index_args[@]}" "$torch_spec"
fi

target="."
if [[ -n "$extras" ]]; then
    target=".[$extras]"
fi
if ((editable)); then
    run "$python" -m pip install -e "$target"
else
    run "$python" -m pip install "$target"
fi

if [[ -n "$no_deps_specs" ]]; then
    # shellcheck disable=SC2086 # one word per requirement
    run "$python" -m pip install --no-deps $no_deps_specs
fi

# opencv-python and opencv-python-headless share the cv2/ folder: an environment that still has the
# GUI build (an older install, or a package that pulled it in) gets the headless build alone.
if [[ "${INSTALL_DRY_RUN:-0}" != 1 ]] && "$python" -m pip show --quiet opencv-python >/dev/null 2>&1; then
    headless="$("$python" -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')"
    run "$python" -m pip uninstall --yes opencv-python
    run "$python" -m pip install --force-reinstall --no-deps "opencv-python-headless==$headless"
fi
