#!/bin/sh
# check.sh LUAJIT... - runs test/valgrind/leaks.lua under valgrind's leak
# checker and fails if any block lost at exit (definitely or indirectly) was
# allocated through isle's C code (a frame in an isle_* function or in
# libisle.so). Losses of LuaJIT or libc alone are reported, not failed: they
# are not isle's to fix. `make test-valgrind` runs it.
dir=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp "${TMPDIR:-/tmp}/isle-valgrind.XXXXXX")
trap 'rm -f "$log"' EXIT
# --keep-debuginfo: frames of a library unloaded before exit still get names.
# --smc-check: LuaJIT writes machine code into anonymous memory.
valgrind -q --trace-children=yes --keep-debuginfo=yes --smc-check=all-non-file \
    --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --num-callers=40 \
    --log-file="$log" "$@" "$dir/leaks.lua"
status=$?
if [ "$status" -ne 0 ]; then
    cat "$log"
    echo "valgrind check: the script failed (exit $status)"
    exit 1
fi
# A loss record runs from its "... lost in loss record" line to the blank
# "==pid==" line after its stack.
awk '
    /are (definitely|indirectly) lost in loss record/ { rec = $0 "\n"; inrec = 1; mine = 0; next }
    inrec && /^==[0-9]+== *$/ { if (mine) { printf "%s", rec; bad++ } else other++; inrec = 0; next }
    inrec { rec = rec $0 "\n"; if ($0 ~ /: isle_[a-z0-9_]+ \(/ || $0 ~ /libisle/) mine = 1 }
    END {
        if (inrec) { if (mine) { printf "%s", rec; bad++ } else other++ }
        if (other) printf "valgrind check: %d loss record(s) without an isle frame (not isle'"'"'s)\n", other
        if (bad) { printf "valgrind check: %d loss record(s) through isle'"'"'s code\n", bad; exit 1 }
        print "valgrind check: no loss through isle'"'"'s code"
    }' "$log"
