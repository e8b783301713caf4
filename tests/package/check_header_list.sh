#!/usr/bin/env bash
# check_header_list.sh <include/turboquant> "a.hpp|cpu/b.hpp|..."
# Fails when a public .hpp is not in the explicit list of tests/package/CMakeLists.txt, so the
# self-containment check never silently skips one. (The build itself names every file.)
set -euo pipefail
dir=$1
listed="|$2|"
missing=0
while IFS= read -r header; do
  case "$listed" in
    *"|$header|"*) ;;
    *) echo "public header not listed in tests/package/CMakeLists.txt: $header"; missing=1 ;;
  esac
done < <(cd "$dir" && find . -name '*.hpp' | sed 's|^\./||' | sort)
[ "$missing" -eq 0 ] && echo "every public .hpp header is listed"
exit "$missing"
