#!/bin/sh
# Python packages the scripts and the tests use, from PyPI with pip into the
# user's site-packages (pip --user; nothing system-wide), so that no test ever
# reaches the network itself. Installs only what python3 cannot import.
#
#   scripts/python-deps.sh [--test] [--verbose]
#
# Without options: tokenizers and jinja2 (scripts/prepare_data.py) and
# matplotlib (scripts/plot_run.py). --test adds torch and transformers, the
# external reference of tests/test_hf_parity.sh and tests/test_prepare_data.sh
# (about 5 GB; .ci/run asks for them). Quiet unless --verbose. A package pip
# cannot install is named, and the tests that need it skip saying so.
set -eu
test_deps=0 verbose=0
for a in "$@"; do
    case $a in
        --test) test_deps=1 ;;
        --verbose) verbose=1 ;;
        *) echo "python-deps: unknown option $a (--test, --verbose)" >&2; exit 2 ;;
    esac
done
want="tokenizers:tokenizers jinja2:jinja2 matplotlib:matplotlib"
[ $test_deps = 1 ] && want="$want torch:torch transformers:transformers"
missing=""
for w in $want; do
    python3 -c "import ${w%%:*}" >/dev/null 2>&1 || missing="$missing ${w#*:}"
done
[ -n "$missing" ] || { [ $verbose = 0 ] || echo "python-deps: all present"; exit 0; }
if ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "python-deps: installing python3-pip"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip; } >/dev/null 2>&1 ||
        { echo "python-deps: pip is missing and python3-pip could not be installed; the tests that need$missing will skip"; exit 0; }
fi
echo "python-deps: installing$missing (pip --user)"
log=$(mktemp "${TMPDIR:-/tmp}/python-deps.XXXXXX")
# --user is the user's own site, so a distribution's "externally managed" guard does not apply
if PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet --disable-pip-version-check \
        --root-user-action=ignore --no-warn-script-location $missing >"$log" 2>&1; then
    [ $verbose = 0 ] || cat "$log"
else
    tail -5 "$log"
    echo "python-deps: pip could not install$missing; the tests that need them will skip, saying so"
fi
rm -f "$log"
