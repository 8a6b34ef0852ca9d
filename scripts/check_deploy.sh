#!/usr/bin/env bash
# Checks the deployment files under deploy/ against each other and the server:
#   1. every YAML file parses (all documents) and every JSON file parses;
#   2. every metric the Grafana dashboard and the Prometheus alerts query is
#      one that server/metrics.cc exports (histogram series through their
#      _bucket/_sum/_count names);
#   3. every key of the server's YAML config (deploy/kubernetes/longctxd.yaml)
#      and every LONGCTX_<NAME> variable set in deploy/ is a setting of
#      server/config.cc.
# Checks 2 and 3 are skipped, with a message, when the server sources are absent.
#   scripts/check_deploy.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "check_deploy: installing PyYAML"
  # A distribution's Python refuses plain pip installs (PEP 668): then per user.
  python3 -m pip install --quiet pyyaml 2> /dev/null ||
    python3 -m pip install --quiet --user --break-system-packages pyyaml
fi

python3 - "$root" <<'PY'
import json
import pathlib
import re
import sys

import yaml

root = pathlib.Path(sys.argv[1])
deploy = root / "deploy"
failures = []


def fail(msg):
    failures.append(msg)
    print(f"check_deploy: FAIL {msg}")


# --- 1. syntax --------------------------------------------------------------
docs = {}  # path -> list of parsed documents
files = sorted(p for p in deploy.rglob("*") if p.is_file())
for path in files:
    rel = path.relative_to(root)
    try:
        if path.suffix in (".yaml", ".yml"):
            with path.open() as f:
                docs[rel] = list(yaml.safe_load_all(f))
        elif path.suffix == ".json":
            with path.open() as f:
                docs[rel] = [json.load(f)]
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        fail(f"{rel}: does not parse: {e}")
print(f"check_deploy: {len(docs)} YAML/JSON files under deploy/ parsed")

# --- 2. metric names --------------------------------------------------------
dashboard = pathlib.Path("deploy/grafana/longctx-dashboard.json")
alerts = pathlib.Path("deploy/prometheus/alerts.yaml")
metrics_cc = root / "server" / "metrics.cc"


def dashboard_queries(doc):
    for panel in doc.get("panels", []):
        for sub in [panel] + panel.get("panels", []):
            for t in sub.get("targets", []):
                yield t.get("expr", "")
    for var in doc.get("templating", {}).get("list", []):
        q = var.get("query")
        yield q.get("query", "") if isinstance(q, dict) else (q or "")


def alert_queries(doc):
    for group in (doc or {}).get("groups", []):
        for rule in group.get("rules", []):
            yield rule.get("expr", "")


used = {}  # metric name -> files using it
for rel, queries in ((dashboard, dashboard_queries), (alerts, alert_queries)):
    if rel not in docs:
        fail(f"{rel}: missing")
        continue
    n = 0
    for doc in docs[rel]:
        for expr in queries(doc):
            n += 1
            for name in re.findall(r"\blongctx_[a-z0-9_]+\b", expr):
                used.setdefault(name, set()).add(str(rel))
    if n == 0:
        fail(f"{rel}: no queries found")

if not metrics_cc.exists():
    print(f"check_deploy: skipped the metric-name check: {metrics_cc.relative_to(root)} "
          "is not in this checkout")
else:
    exported = set(re.findall(r'"(longctx_[a-z0-9_]+)"', metrics_cc.read_text()))
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in exported and base not in exported:
            fail(f"metric {name} (used in {', '.join(sorted(used[name]))}) "
                 "is not exported by server/metrics.cc")
    print(f"check_deploy: {len(used)} metric names used by the dashboard and alerts, "
          f"{len(exported)} exported by server/metrics.cc")

# --- 3. server settings -----------------------------------------------------
config_cc = root / "server" / "config.cc"
server_yaml = pathlib.Path("deploy/kubernetes/longctxd.yaml")
if not config_cc.exists():
    print(f"check_deploy: skipped the settings check: {config_cc.relative_to(root)} "
          "is not in this checkout")
else:
    settings = set(re.findall(r'\b(?:String|Int|Bytes|Duration|Bool)Field\(\s*"([a-z0-9_]+)"',
                              config_cc.read_text()))
    if not settings:
        fail("server/config.cc: no settings found (has the Field table changed?)")
    # LONGCTX_CONFIG names the file; LONGCTX_MODELS is scripts/fetch_model.sh's.
    env_ok = {f"LONGCTX_{s.upper()}" for s in settings} | {"LONGCTX_CONFIG", "LONGCTX_MODELS"}
    for doc in docs.get(server_yaml, []):
        for key in (doc or {}):
            if key not in settings:
                fail(f"{server_yaml}: '{key}' is not a setting of server/config.cc")
    checked = 0
    for path in files:
        if path.suffix not in (".yaml", ".yml"):
            continue
        for name in re.findall(r"\bLONGCTX_[A-Z0-9_]+\b", path.read_text()):
            checked += 1
            if name not in env_ok:
                fail(f"{path.relative_to(root)}: {name} is not a setting of server/config.cc")
    print(f"check_deploy: {server_yaml} and {checked} LONGCTX_ variables checked against "
          f"{len(settings)} settings of server/config.cc")

if failures:
    print(f"check_deploy: {len(failures)} problem(s)")
    sys.exit(1)
print("check_deploy: all checks passed")
PY
