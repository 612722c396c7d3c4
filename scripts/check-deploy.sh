#!/usr/bin/env bash
# Validates deploy/ offline, with the tools scripts/setup.sh installs:
#   - the NATS configs load (`nats-server -t`, the same release as the image,
#     with throwaway certificates for prod's TLS),
#   - every overlay renders (`kubectl kustomize`) and validates against the
#     Kubernetes schemas in strict mode, with no warning; so do prod with the
#     optional components (projector autoscaling; an OTLP backend in place
#     of Jaeger),
#   - the rendered manifests pass checkov (each skip is annotated, with its
#     reason, on the resource it concerns),
#   - the Prometheus config and alert rules check, and the rules' unit tests
#     pass (`promtool`); the Alertmanager config checks (`amtool`),
#   - every project image in the rendered overlays comes from the overlay's
#     `images:` (no placeholder left, an explicit registry, digests in prod),
#   - NATS's GOMEMLIMIT in each overlay is about 75 % of its memory limit,
#   - the GitHub workflows validate against their schema and pass zizmor's
#     security audits (pedantic: any finding fails),
#   - the compose file resolves, where a compose binary exists.
# The PromQL in dashboards and rules is checked against the metrics the
# services really export by projector/tests/e2e/telemetry.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${DEPLOY_TOOLS:-$HOME/.cache/cqrs-bank/deploy-tools}/bin"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

step() { echo "check-deploy: $*"; }

step "nats-server -t"
# Each config beside the base's auth.conf, as the ConfigMap mounts them.
for config in deploy/k8s/base/nats/nats.conf deploy/k8s/overlays/prod/nats.conf; do
  dir="$out/nats-$(basename "$(dirname "$config")")"
  mkdir -p "$dir"
  # The prod config names the mounted TLS Secret's files: stand in
  # throwaway ones (nats-server -t loads them).
  mkdir -p "$dir/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=nats \
    -addext subjectAltName=DNS:nats -keyout "$dir/tls/tls.key" -out "$dir/tls/tls.crt" 2>/dev/null
  cp "$dir/tls/tls.crt" "$dir/tls/ca.crt"
  sed "s#/etc/nats-tls/#$dir/tls/#" "$config" > "$dir/nats.conf"
  cp deploy/k8s/base/nats/auth.conf "$dir/auth.conf"
  WRITE_SERVICE_NATS_PASSWORD=x PROJECTOR_NATS_PASSWORD=x ADMIN_NATS_PASSWORD=x POD_NAME=nats-0 scripts/nats-server -t -c "$dir/nats.conf"
done

step "one NATS release everywhere"
pinned="$(scripts/nats-server --version | sed -E 's/.*v([0-9.]+).*/\1/')"
for file in deploy/k8s/base/nats/statefulset.yaml deploy/compose.yaml; do
  grep -q "image: nats:$pinned-alpine" "$file" ||
    { echo "check-deploy: $file does not run nats:$pinned-alpine, the release scripts/setup.sh pins" >&2; exit 1; }
done

# The base names the project's images by placeholders (a bare name: no
# registry, no tag), and each overlay maps them in its `images:`. Checked on
# each rendered overlay: every workload that runs a placeholder in the base
# runs exactly what the overlay's `images:` entry makes of it, under an
# explicit registry host (a first part with a '.' or ':'; any other name is
# Docker Hub's, a namespace the project does not own), by digest in prod;
# and no placeholder is left anywhere.
"$tools/kubectl" kustomize deploy/k8s/base > "$out/base.yaml"
cat > "$out/images.py" <<'PYTHON'
import sys, yaml
base, kustomization, rendered, overlay = sys.argv[1:]

def images(path):
    found = {}
    for doc in yaml.safe_load_all(open(path)):
        spec = (doc or {}).get("spec") or {}
        if doc and doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = (spec.get("template") or {}).get("spec") or {}
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            found[f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"] = c["image"]
    return found

placeholders = {k: v for k, v in images(base).items() if not any(ch in v for ch in "/:@")}
assert placeholders, "the base names none of the project's images by a placeholder"
entries = {e["name"]: e for e in yaml.safe_load(open(kustomization)).get("images") or []}
running = images(rendered)
problems = []
for where, placeholder in sorted(placeholders.items()):
    entry = entries.get(placeholder)
    if entry is None:
        problems.append(f"{where}: no entry for `{placeholder}` in {kustomization}'s images:")
        continue
    name = entry.get("newName", placeholder)
    host = name.split("/")[0] if "/" in name else ""
    if "." not in host and ":" not in host:
        problems.append(f"{where}: `{name}` has no registry host (a first part with a dot or a colon), so it would come from Docker Hub")
    if "digest" in entry:
        expected = f"{name}@{entry['digest']}"
    elif overlay == "prod":
        problems.append(f"{where}: prod pins `{placeholder}` by digest (`digest:` in its images:)")
        continue
    else:
        expected = f"{name}:{entry.get('newTag', 'latest')}"
    if running.get(where) != expected:
        problems.append(f"{where} runs `{running.get(where)}`, not `{expected}` from images:")
for where, image in sorted(running.items()):
    if image.split("@")[0].split(":")[0] in placeholders.values():
        problems.append(f"{where}: the placeholder `{image}` went through no images: entry")
if problems:
    sys.exit(f"check-deploy: project images in {overlay}:\n  " + "\n  ".join(problems))
PYTHON

# NATS's GOMEMLIMIT is a value, set by hand beside its container's memory
# limit (a fraction of it cannot be expressed): it must stay below the
# limit, about 75 % of it, wherever an overlay changes either.
cat > "$out/gomemlimit.py" <<'PYTHON'
import re, sys, yaml
units = {"": 1, "B": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
def size(value):
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]
statefulsets = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats"]
assert statefulsets, "no nats StatefulSet rendered"
for doc in statefulsets:
    nats = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"][0]
    env = {e["name"]: e.get("value") for e in nats.get("env", [])}
    limit = nats["resources"]["limits"]["memory"]
    assert env.get("GOMEMLIMIT"), "the nats container sets no GOMEMLIMIT"
    ratio = size(env["GOMEMLIMIT"]) / size(limit)
    assert 0.7 <= ratio <= 0.85, f"nats: GOMEMLIMIT {env['GOMEMLIMIT']} is {ratio:.0%} of limits.memory {limit}, not about 75 %: change them together"
PYTHON

for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  rendered="$out/$name.yaml"
  step "kustomize $name"
  "$tools/kubectl" kustomize "$overlay" > "$rendered"

  step "project images $name"
  "$tools/python" "$out/images.py" "$out/base.yaml" "${overlay%/}/kustomization.yaml" "$rendered" "$name"
  "$tools/python" "$out/gomemlimit.py" "$rendered"

  step "kubernetes-validate --strict $name"
  # --quiet prints only warnings and failures: any output fails the check.
  report="$("$tools/kubernetes-validate" --strict --quiet "$rendered" 2>&1)" || { echo "$report"; exit 1; }
  if [[ -n $report ]]; then echo "$report"; exit 1; fi

  step "checkov $name"
  "$tools/checkov" --framework kubernetes --skip-download --quiet --compact -f "$rendered" > "$out/checkov-$name.txt" 2>&1 ||
    { cat "$out/checkov-$name.txt"; exit 1; }
  grep -E "^Passed checks" "$out/checkov-$name.txt" || true
done

# The optional projector autoscaling (a KEDA ScaledObject) on top of prod.
# The Kubernetes schemas do not know KEDA's kinds (a CRD, not installable
# offline), so it is checked against the Deployment it scales instead:
# one trigger per partition's consumer, no more replicas than partitions.
step "kustomize prod + components/projector-autoscaling"
mkdir -p "$out/autoscaling"
# kustomize takes only relative paths to other kustomizations.
repo="$(realpath --relative-to="$out/autoscaling" "$PWD")"
cat > "$out/autoscaling/kustomization.yaml" <<KUSTOMIZATION
resources:
  - $repo/deploy/k8s/overlays/prod
components:
  - $repo/deploy/k8s/components/projector-autoscaling
KUSTOMIZATION
"$tools/kubectl" kustomize "$out/autoscaling" > "$out/autoscaling.yaml"
"$tools/python" "$out/images.py" "$out/base.yaml" deploy/k8s/overlays/prod/kustomization.yaml "$out/autoscaling.yaml" prod
"$tools/python" - "$out/autoscaling.yaml" "$out/autoscaling-core.yaml" <<'PYTHON'
import sys, yaml
documents = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
scaled = [d for d in documents if d["kind"] == "ScaledObject"]
assert len(scaled) == 1, "one ScaledObject"
spec = scaled[0]["spec"]
target = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == spec["scaleTargetRef"]["name"]]
assert target, f"the ScaledObject scales {spec['scaleTargetRef']['name']}, which is not a Deployment here"
env = {e["name"]: e.get("value") for e in target[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
shared = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("cqrs-config")]
partitions, consumer = int(shared[0]["data"]["PROJECTOR_PARTITIONS"]), env["PROJECTOR_CONSUMER"]
wanted = sorted(f"{consumer}-{k}-of-{partitions}" for k in range(partitions))
found = sorted(t["metadata"]["consumer"] for t in spec["triggers"])
assert found == wanted, f"the triggers watch {found}, the projector's consumers are {wanted}"
assert spec["maxReplicaCount"] <= partitions, "more projector replicas than partitions would sit idle"
yaml.safe_dump_all([d for d in documents if d["kind"] != "ScaledObject"], open(sys.argv[2], "w"))
PYTHON
report="$("$tools/kubernetes-validate" --strict --quiet "$out/autoscaling-core.yaml" 2>&1)" || { echo "$report"; exit 1; }
if [[ -n $report ]]; then echo "$report"; exit 1; fi
"$tools/checkov" --framework kubernetes --skip-download --quiet --compact -f "$out/autoscaling.yaml" > "$out/checkov-autoscaling.txt" 2>&1 ||
  { cat "$out/checkov-autoscaling.txt"; exit 1; }

# prod's other trace path: components/otlp-backend in place of
# components/jaeger-v2 (deploy/README.md, "Observability"), as a user would
# swap them, on a copy of deploy/k8s (the overlay's relative paths hold
# there). Checked like an overlay, and the collector then forwards to the
# endpoint the `otlp-backend` ConfigMap sets, with nothing named jaeger left.
step "kustomize prod with components/otlp-backend"
cp -r deploy/k8s "$out/k8s"
sed -i 's#- ../../components/jaeger-v2$#- ../../components/otlp-backend#' "$out/k8s/overlays/prod/kustomization.yaml"
grep -q -- '- ../../components/otlp-backend$' "$out/k8s/overlays/prod/kustomization.yaml" ||
  { echo "check-deploy: prod's kustomization no longer lists ../../components/jaeger-v2 to swap" >&2; exit 1; }
"$tools/kubectl" kustomize "$out/k8s/overlays/prod" > "$out/otlp-backend.yaml"
"$tools/python" "$out/images.py" "$out/base.yaml" "$out/k8s/overlays/prod/kustomization.yaml" "$out/otlp-backend.yaml" prod
"$tools/python" - "$out/otlp-backend.yaml" <<'PYTHON'
import sys, yaml
documents = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
workloads = [d for d in documents if d["kind"] in ("Deployment", "Service", "PersistentVolumeClaim", "ConfigMap")]
jaeger = [f"{d['kind']}/{d['metadata']['name']}" for d in workloads if d["metadata"]["name"].startswith("jaeger")]
assert not jaeger, f"otlp-backend in place of jaeger-v2 still renders {jaeger}"
collector = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "otel-collector"][0]
env = {e["name"]: e for e in collector["spec"]["template"]["spec"]["containers"][0].get("env", [])}
ref = env["OTLP_BACKEND_ENDPOINT"]["valueFrom"]["configMapKeyRef"]
backend = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref["name"]]
assert backend and ref["key"] in backend[0]["data"], f"the collector's endpoint comes from {ref}, which is not rendered"
config = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("otel-collector-config")]
exporters = yaml.safe_load(config[0]["data"]["config.yaml"])["service"]["pipelines"]["traces"]["exporters"]
assert exporters == ["otlp/backend"], f"the collector exports traces to {exporters}"
PYTHON
report="$("$tools/kubernetes-validate" --strict --quiet "$out/otlp-backend.yaml" 2>&1)" || { echo "$report"; exit 1; }
if [[ -n $report ]]; then echo "$report"; exit 1; fi
"$tools/checkov" --framework kubernetes --skip-download --quiet --compact -f "$out/otlp-backend.yaml" > "$out/checkov-otlp-backend.txt" 2>&1 ||
  { cat "$out/checkov-otlp-backend.txt"; exit 1; }

rules=deploy/k8s/base/observability/prometheus/rules
step "promtool check config"
# The config names its rule files by their path in the container; check it
# with the rules where that path points.
sed "s#/etc/prometheus/rules/#$PWD/$rules/#" deploy/k8s/base/observability/prometheus/prometheus.yml > "$out/prometheus.yml"
promtool check config "$out/prometheus.yml"
step "promtool check rules"
# The NATS alerts live apart from the services' rules (the ConfigMap mounts
# them together; observability/prometheus/kustomization.yaml says why).
nats_rules=deploy/k8s/base/observability/prometheus/nats
promtool check rules "$rules"/*.rules.yaml "$nats_rules"/*.rules.yaml
step "promtool test rules"
(cd "$rules" && promtool test rules ./*.test.yaml)
(cd "$nats_rules" && promtool test rules ./*.test.yaml)
step "amtool check-config"
amtool check-config deploy/k8s/base/observability/alertmanager/alertmanager.yml

step "workflows: schema + zizmor"
"$tools/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
"$tools/zizmor" --offline --persona=pedantic --no-progress .github/workflows/*.yml

if docker compose version >/dev/null 2>&1; then
  step "docker compose config"
  docker compose -f deploy/compose.yaml config --quiet
else
  step "no compose binary here: deploy/compose.yaml is only parsed as YAML"
  "$tools/python" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' deploy/compose.yaml
fi
step "ok"
