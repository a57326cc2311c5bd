#!/usr/bin/env bash
# Installs this project into a Python environment with pip. It is the one install recipe, shared by
# `make install` and docker/Dockerfile*, so the steps CI runs are the steps the images run.
#
# Usage: scripts/install.sh [--editable] [--extras LIST] PYTHON
#   PYTHON          interpreter of the target environment (normally a venv's bin/python)
#   --extras LIST   comma-separated extras of pyproject.toml, e.g. export,dev,bench (none: the service only)
#   --editable      install the project in development mode (pip install -e)
# Environment:
#   TORCH_INDEX_URL    index that torch alone comes from (the Docker build uses PyTorch's CPU index);
#                      unset: pip's configured indexes
#   INSTALL_DRY_RUN=1  print the pip commands, one a line, instead of running them
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

if [[ -n "$torch_spec" ]]; then
    # torch goes in first, alone, from TORCH_INDEX_URL when set: the project install then finds the
    # pin satisfied instead of resolving torch from PyPI, whose Linux wheel is the CUDA build.
    index_args=()
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        index_args=(--index-url "$TORCH_INDEX_URL")
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
