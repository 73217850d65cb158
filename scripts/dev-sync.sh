#!/usr/bin/env bash
# Developer shortcut, not used by make or CI: copy src/ and configs/ over the package that
# `make install` put into .venv (non-editable on purpose, see the Makefile), so a test run
# sees an edit without a full reinstall. Serialised with flock; the new tree is swapped in
# by rename. `make test` always reinstalls properly.
set -euo pipefail
cd "$(dirname "$0")/.."
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
exec 9>"${TMPDIR:-/tmp}/spk-meta-dev-sync.lock"
flock 9
swap() {  # swap <source dir> <dest dir>
    rm -rf "$2.new" "$2.old"
    cp -r "$1" "$2.new"
    find "$2.new" -name __pycache__ -prune -exec rm -rf {} +
    [ -e "$2" ] && mv "$2" "$2.old"
    mv "$2.new" "$2"
    rm -rf "$2.old"
}
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cp -r src/spk_meta "$tmp/spk_meta"; cp -r configs "$tmp/spk_meta/configs"
swap "$tmp/spk_meta" "$site/spk_meta"
swap src/hydra_plugins/spk_meta_searchpath "$site/hydra_plugins/spk_meta_searchpath"
