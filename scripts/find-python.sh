#!/usr/bin/env sh
# Print the path of a Python >= 3.12 interpreter, or explain what to install and fail.
# Order: $PYTHON; python3.12 / python3.13 / python3 on PATH (only if they really run:
# a pyenv shim for a version that is not selected fails); pyenv-installed 3.12+.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
abs() { "$1" -c 'import sys; print(sys.executable)'; }

if [ -n "${PYTHON:-}" ]; then
    if ok "$PYTHON"; then abs "$PYTHON"; exit 0; fi
    echo "error: PYTHON=$PYTHON is not a working Python >= 3.12" >&2; exit 1
fi
for cand in python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && ok "$cand"; then abs "$cand"; exit 0; fi
done
roots="${PYENV_ROOT:-} $HOME/.pyenv"
if command -v pyenv >/dev/null 2>&1; then roots="$(pyenv root 2>/dev/null) $roots"; fi
for root in $roots; do
    [ -d "$root/versions" ] || continue
    # 3.12.x first (the tested version), then newer ones
    for dir in $(ls -1d "$root"/versions/3.12* 2>/dev/null | sort -rV) $(ls -1d "$root"/versions/3.1[3-9]* 2>/dev/null | sort -V); do
        for exe in "$dir/bin/python3" "$dir/bin/python"; do
            if [ -x "$exe" ] && ok "$exe"; then abs "$exe"; exit 0; fi
        done
    done
done
echo "error: no Python >= 3.12 found (tried \$PYTHON, python3.13, python3.12, python3 and pyenv versions)." >&2
echo "       Install Python 3.12 (e.g. 'pyenv install 3.12' or your OS package) or run 'make PYTHON=/path/to/python3.12 ...'." >&2
exit 1
