#!/bin/sh
# The tree keeps the shape docs/architecture.md gives it: functions and files
# of bounded length, few files at the root of src/, includes going down the
# floors, no circle between the plan's files, no build product in git
# (scripts/check_shape.py says which rule a breach breaks).
. "${top_srcdir:-.}/tests/common.sh"
command -v python3 >/dev/null 2>&1 || skip_test "no python3 (scripts/setup.sh installs it)"
command -v nm >/dev/null 2>&1 || skip_test "no nm (binutils) to read the plan's objects"
python3 "$top_srcdir/scripts/check_shape.py" --objects "$top_builddir"
