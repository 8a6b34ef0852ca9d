#!/usr/bin/env bash
# Moves sessions off a server before its node is drained (docs/deployment.md):
# exports every session of the caller's tenant to files and imports them into
# another server, keeping their labels and next_seq. Ids without a home are
# kept; an id that names its replica ("longctxd-0.s-<hex>", docs/service.md
# "Routing") is replaced by a new one naming the replica it moves to, and the
# old and new ids are printed ("OLD -> NEW" on stdout).
#
#   scripts/move_sessions.sh export SERVER DIR   # every session -> DIR/<id>.session
#   scripts/move_sessions.sh import SERVER DIR   # every DIR/*.session
#   scripts/move_sessions.sh move FROM TO [DIR]  # export, import, then delete on FROM
#
# SERVER is host:port of one pod (not the gateway: export must reach the pod
# that holds the sessions). Sessions belong to tenants: with authentication,
# run it once per tenant with that tenant's LONGCTX_TOKEN. Other client
# settings come from the environment as for `longctx` (LONGCTX_TLS_CA, ...).
# LONGCTX_CLI names the client binary (default: build/bin/longctx, else
# longctx on the PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cli=${LONGCTX_CLI:-$root/build/bin/longctx}
[[ -x $cli ]] || cli=$(command -v longctx) || { echo "no longctx client found" >&2; exit 2; }

usage() { sed -n '2,19p' "$0" >&2; exit 2; }

# The ids of the caller's sessions on server $1 (one per line).
list_ids() {
  "$cli" --server="$1" list 2> /dev/null | awk '/^[^ ]/ {print $1}'
}

export_all() {
  local server=$1 dir=$2 n=0
  mkdir -p "$dir"
  for id in $(list_ids "$server"); do
    "$cli" --server="$server" export "$id" "$dir/$id.session"
    n=$((n + 1))
  done
  echo "exported $n sessions from $server to $dir" >&2
}

import_all() {
  local server=$1 dir=$2 n=0
  shopt -s nullglob
  for f in "$dir"/*.session; do
    local id new
    id=$(basename "$f" .session)
    if [[ $id =~ ^[a-z0-9-]+\.s-.+ ]]; then
      new=$("$cli" --server="$server" import "$f")
      echo "$id -> $new"
    else
      "$cli" --server="$server" import "$f" --id="$id" > /dev/null
    fi
    n=$((n + 1))
  done
  echo "imported $n sessions into $server from $dir" >&2
}

[[ $# -ge 3 ]] || usage
case $1 in
  export) export_all "$2" "$3" ;;
  import) import_all "$2" "$3" ;;
  move)
    dir=${4:-$(mktemp -d)}
    export_all "$2" "$dir"
    import_all "$3" "$dir"
    for f in "$dir"/*.session; do
      "$cli" --server="$2" delete "$(basename "$f" .session)" > /dev/null
    done
    echo "moved; the exports stay in $dir" >&2
    ;;
  *) usage ;;
esac
