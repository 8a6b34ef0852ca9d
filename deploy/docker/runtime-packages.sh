#!/usr/bin/env bash
# Prints, one per line, the distribution packages that own the shared libraries
# the given programs load, so that the runtime image installs exactly those and
# nothing of the build toolchain. Fails when a library is missing or owned by no
# package (it would be missing from the runtime image too).
#   deploy/docker/runtime-packages.sh build/bin/longctxd build/bin/longctx
set -euo pipefail
(($#)) || { echo "usage: $0 PROGRAM..." >&2; exit 2; }

libs=()
for prog in "$@"; do
  out=$(ldd "$prog")
  if grep -q "not found" <<<"$out"; then
    echo "runtime-packages: $prog: unresolved libraries:" >&2
    grep "not found" <<<"$out" >&2
    exit 1
  fi
  while read -r lib; do libs+=("$lib"); done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out")
done

owner() {
  # dpkg records a file under one of its names: /lib or /usr/lib (merged /usr),
  # the link ldd printed or the file it points to.
  local lib=$1 real candidate line
  real=$(readlink -f "$lib")
  for candidate in "$lib" "$real" "/usr${lib#/usr}" "${lib#/usr}" "/usr${real#/usr}" "${real#/usr}"; do
    if line=$(dpkg-query -S "$candidate" 2>/dev/null | grep -v '^diversion ' | head -n 1) &&
       [[ -n $line ]]; then
      line=${line%%: *}      # "pkg:arch[, pkg2:arch]: /path" -> "pkg:arch[, pkg2:arch]"
      echo "${line%%,*}"
      return 0
    fi
  done
  return 1
}

for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
  if ! owner "$lib"; then
    echo "runtime-packages: no package owns $lib" >&2
    exit 1
  fi
done | sort -u
