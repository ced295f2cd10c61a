#!/bin/sh
# soname.sh LIB CC [ARGS...]: the SONAME of the shared libLIB.so that the
# compiler CC would link (what the dynamic loader would look for), for the
# libraries lib/lazy loads on first use.  Prints nothing if there is none.
lib=$1
shift
so=$("$@" -print-file-name="lib$lib.so") || exit 1
[ -e "$so" ] || exit 1
readelf -d "$so" 2>/dev/null |
    sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p'
