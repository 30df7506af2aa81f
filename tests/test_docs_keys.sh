#!/bin/sh
# The docs name everything a user can set: every config key the loader knows
# (as --help lists it, from the loader's own table) appears in docs/config.md
# under its section, every command-line option in the README or docs/, and
# every ASP_* environment variable the engine reads in the README or docs/.
# A new key, flag or variable without its documentation fails here.
. "${top_srcdir:-.}/tests/common.sh"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
DOCS="$top_srcdir/README.md $top_srcdir/docs/*.md"

"$BIN" --help >"$TMP/help.txt" 2>&1 || { echo "FAIL: --help exited with an error"; cat "$TMP/help.txt"; exit 1; }

# 1. config keys: the section headers of --help ("model: ...") and the keys under them
awk '/^Config keys/ { on = 1; next }
     on && /^[a-z_]+: / { sec = $1; sub(":", "", sec); next }
     on && /^  [a-z_]/ && sec != "" { print sec "." $1 }' "$TMP/help.txt" >"$TMP/keys.txt"
n=$(wc -l <"$TMP/keys.txt")
[ "$n" -ge 40 ] || fail "only $n config keys read from --help (its format changed?)"
missing=0
while read -r kv; do
    sec=${kv%%.*}
    key=${kv#*.}
    leaf=${key##*.}
    # the key's own section of docs/config.md ("### model ..." up to the next "###")
    awk -v s="### $sec" 'index($0, s) == 1 { on = 1; next } /^##/ { on = 0 } on' \
        "$top_srcdir/docs/config.md" >"$TMP/sec.md"
    if ! grep -q "\`$key\`\|\`$leaf\`\|$kv" "$TMP/sec.md"; then
        fail "config key $kv is not in docs/config.md's '### $sec' section"
        missing=$((missing + 1))
    fi
done <"$TMP/keys.txt"
[ $missing = 0 ] && ok "all $n config keys are documented in docs/config.md under their sections"

# 2. command-line options
opts=$(sed -n '/^options:/,/^exit status/p' "$TMP/help.txt" | grep -oE -- '^  --[a-z][a-z-]*' | sort -u)
[ -n "$opts" ] || fail "no options read from --help"
missing=0
for o in $opts; do
    # shellcheck disable=SC2086
    grep -q -- "$o" $DOCS || { fail "option $o is in --help but not in the README or docs/"; missing=$((missing + 1)); }
done
[ $missing = 0 ] && ok "all $(echo $opts | wc -w) options are documented: $(echo $opts | tr '\n' ' ')"

# 3. environment variables the engine reads
vars=$(grep -rhoE 'getenv\("ASP_[A-Z0-9_]+"\)' "$top_srcdir/src" "$top_srcdir/cuda" 2>/dev/null |
       sed 's/getenv("\(.*\)")/\1/' | sort -u)
[ -n "$vars" ] || fail "no ASP_* variables found in the sources"
missing=0
for v in $vars; do
    # shellcheck disable=SC2086
    grep -q "$v" $DOCS || { fail "environment variable $v is read but not in the README or docs/"; missing=$((missing + 1)); }
done
[ $missing = 0 ] && ok "all $(echo $vars | wc -w) ASP_* environment variables are documented"

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
