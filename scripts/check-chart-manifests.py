#!/usr/bin/env python3
"""Checks manifests rendered by `helm template` (scripts/check-chart).

    python3 scripts/check-chart-manifests.py rendered.yaml

- every document is valid YAML and a mapping with apiVersion, kind and
  metadata.name (a DNS label of at most 63 characters for Services);
  no two objects share kind and name;
- every Pod template passes Pod Security "restricted": runAsNonRoot,
  seccompProfile RuntimeDefault, allowPrivilegeEscalation false,
  capabilities drop ALL (add at most NET_BIND_SERVICE), no host namespaces,
  ports or hostPath, only the volume types "restricted" admits; and Gantry's
  own rules: readOnlyRootFilesystem, automountServiceAccountToken set, probe
  timeouts longer than /readyz's own checks (2 s database + 2 s bus);
- Services, Ingress backends, HPA targets, PDB and NetworkPolicy selectors
  point at objects that are rendered.
"""

import re
import sys

import yaml

READYZ_WORST_SECONDS = 4
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

errors = []


def err(obj, msg):
    errors.append(f"{obj}: {msg}")


def pod_spec(doc):
    kind = doc["kind"]
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec, (doc.get("metadata") or {}).get("labels") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tmpl = spec.get("template") or {}
    return tmpl.get("spec") or {}, (tmpl.get("metadata") or {}).get("labels") or {}


def check_pod(name, spec, hook):
    psc = spec.get("securityContext") or {}
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        err(name, "host namespaces are not allowed (restricted)")
    if "automountServiceAccountToken" not in spec:
        err(name, "automountServiceAccountToken must be set explicitly")
    for vol in spec.get("volumes") or []:
        types = set(vol) - {"name"}
        if not types <= RESTRICTED_VOLUMES:
            err(name, f"volume {vol.get('name')} of type {sorted(types)} is not allowed (restricted)")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not containers:
        err(name, "no containers")
    for c in containers:
        cname = f"{name} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            err(cname, "runAsNonRoot must be true (restricted)")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            err(cname, "runAsUser 0 (restricted)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            err(cname, "seccompProfile must be RuntimeDefault (restricted)")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(cname, "allowPrivilegeEscalation must be false (restricted)")
        if sc.get("privileged"):
            err(cname, "privileged (restricted)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            err(cname, "capabilities must drop ALL (restricted)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            err(cname, f"capabilities add {caps.get('add')} (restricted)")
        if sc.get("readOnlyRootFilesystem") is not True:
            err(cname, "readOnlyRootFilesystem must be true")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                err(cname, "hostPort (restricted)")
        if not c.get("image"):
            err(cname, "no image")
        if not (c.get("resources") or {}).get("requests"):
            err(cname, "no resource requests")
        if hook:
            continue
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            pr = c.get(probe)
            if pr is None:
                err(cname, f"no {probe}")
            elif pr.get("timeoutSeconds", 1) <= READYZ_WORST_SECONDS and probe == "readinessProbe":
                err(cname, f"readinessProbe timeoutSeconds must exceed /readyz's {READYZ_WORST_SECONDS} s")


def main(path):
    with open(path) as f:
        text = f.read()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        print(f"{path}: not valid YAML: {e}", file=sys.stderr)
        return 1
    seen = {}
    rendered = set()
    labels_of = {}  # (kind, name) -> pod labels
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            errors.append(f"document {i}: not a mapping")
            continue
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not (doc.get("apiVersion") and kind and name):
            errors.append(f"document {i}: apiVersion, kind and metadata.name are required")
            continue
        ref = f"{kind}/{name}"
        # Roles of the same name live in several namespaces.
        namespace = meta.get("namespace", "")
        if (kind, name, namespace) in rendered:
            err(ref, "rendered twice")
        rendered.add((kind, name, namespace))
        seen[(kind, name)] = doc
        if len(name) > 63 or not DNS_LABEL.match(name):
            err(ref, "name is not a DNS label of at most 63 characters")
        if kind in WORKLOAD_KINDS:
            spec, labels = pod_spec(doc)
            labels_of[(kind, name)] = labels
            hook = "helm.sh/hook" in (meta.get("annotations") or {})
            check_pod(ref, spec, hook or kind in ("CronJob", "Job"))

    def selects_pods(selector):
        return any(labels and all(labels.get(k) == v for k, v in selector.items())
                   for (k, _), labels in labels_of.items() if k != "Pod")

    for (kind, name), doc in seen.items():
        ref = f"{kind}/{name}"
        spec = doc.get("spec") or {}
        if kind == "Service":
            if not selects_pods(spec.get("selector") or {}):
                err(ref, "selects no rendered pods")
        elif kind == "Ingress":
            for rule in spec.get("rules") or []:
                for p in (rule.get("http") or {}).get("paths") or []:
                    svc = p["backend"]["service"]["name"]
                    if ("Service", svc) not in seen:
                        err(ref, f"backend Service {svc} is not rendered")
        elif kind == "HorizontalPodAutoscaler":
            target = spec["scaleTargetRef"]
            if (target["kind"], target["name"]) not in seen:
                err(ref, f"target {target['kind']}/{target['name']} is not rendered")
            elif "replicas" in (seen[(target["kind"], target["name"])].get("spec") or {}):
                err(ref, "its Deployment sets replicas (it would fight the HPA)")
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = ((spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels")) or {}
            if not selects_pods(sel):
                err(ref, "selects no rendered pods")

    kinds = {}
    for kind, _ in seen:
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    if errors:
        for e in errors:
            print(f"    {e}", file=sys.stderr)
        return 1
    print(f"    {len(docs)} documents valid: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
