#!/usr/bin/env bash
# Writes the seed corpora into corpus/<target>/seed-* from the real fixtures
# (../shared/fixtures, see their PROVENANCE.md files) and the repository's own
# test data. Seeds are small on purpose: libFuzzer mutates every byte of an
# input, so a 500 KB archive would mostly cost time. Idempotent; needs python3.
#
#   fuzz/seed.sh [FIXTURES_DIR]   (default: ../shared/fixtures beside the checkout)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
fixtures="${1:-${GANTRY_FIXTURES:-$repo/../shared/fixtures}}"
[ -d "$fixtures" ] || { echo "seed.sh: no fixtures at $fixtures (pass the directory)" >&2; exit 1; }
[ -d "$fixtures" ] && fixtures="$(cd "$fixtures" && pwd)"

exec python3 - "$repo" "$fixtures" <<'PY'
import glob, hashlib, hmac, io, json, os, re, struct, sys, zipfile

repo, fixtures = sys.argv[1], sys.argv[2]
corpus = os.path.join(repo, "fuzz", "corpus")
yamles = os.path.join(fixtures, "yamles", "yamles-utils-apim")
apimcli = os.path.join(fixtures, "apim-cli")
SECRET = b"fuzz-secret"  # the webhook_signature target's secret

def read(path):
    with open(path, "rb") as f:
        return f.read()

def seed(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# Webhooks: one seed per forge fixture, with the headers its forge sends.
hooks = os.path.join(repo, "services", "webhook", "tests", "fixtures")
forges = {
    "github-push": ("github", {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e"}),
    "github-push-delete": ("github", {"X-GitHub-Event": "push"}),
    "github-ping": ("github", {"X-GitHub-Event": "ping"}),
    "gitlab-push": ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "13792a34"}),
    "gitea-push": ("gitea", {"X-Gitea-Event": "push", "X-Gitea-Delivery": "f6266f16"}),
    "bitbucket-push": ("bitbucket", {"X-Event-Key": "repo:push", "X-Request-UUID": "fe2a9c1f"}),
    "bitbucket-server-refs-changed": ("bitbucket", {"X-Event-Key": "repo:refs_changed", "X-Request-Id": "d8b3"}),
    "generic-push": ("generic", {"X-Gantry-Event": "push"}),
}
sig_header = {
    "github": ("X-Hub-Signature-256", "sha256={}"),
    "gitea": ("X-Gitea-Signature", "{}"),
    "bitbucket": ("X-Hub-Signature", "sha256={}"),
    "generic": ("X-Gantry-Signature", "sha256={}"),
}
for stem, (provider, headers) in forges.items():
    body = read(os.path.join(hooks, stem + ".json"))
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    seed("webhook_payload", stem, f"{provider}\n{head}\n".encode() + body)
    if provider == "gitlab":
        sig = f"X-Gitlab-Token: {SECRET.decode()}\n"
    else:
        name, fmt = sig_header[provider]
        sig = f"{name}: {fmt.format(hmac.new(SECRET, body, hashlib.sha256).hexdigest())}\n"
    seed("webhook_signature", stem, f"{provider}\n{head}{sig}\n".encode() + body)
    seed("webhook_signature", stem + "-unsigned", f"{provider}\n{head}\n".encode() + body)

# Pipelines: the repository's examples.
for p in sorted(glob.glob(os.path.join(repo, "pipelines", "*.yaml"))):
    seed("pipeline_yaml", os.path.basename(p), read(p))

# Templates: entity files of the YAML entity store project that hold
# placeholders (the gateway's `{{a.b}}` and `{{file ...}}`), the smallest first,
# and the yamles-utils value files (`{{ _env(..) }}`: another dialect, good
# near-misses). One seed also carries the project's values after a NUL.
entity_files = []
for p in glob.glob(os.path.join(yamles, "**", "*.yaml"), recursive=True):
    data = read(p)
    if b"{{" in data:
        entity_files.append((len(data), p, data))
entity_files.sort()
for _, p, data in entity_files[:40]:
    seed("template", os.path.relpath(p, yamles), data)
values = read(os.path.join(yamles, "apim", "values.yaml"))
if entity_files:
    seed("template", "with-values", entity_files[0][2] + b"\0" + values)
seed("template", "helpers", '{{#if a.t}}x: {{ a.b }}{{else if zero}}y{{/if}}\n'
     '{{#unless empty}}z: "{{ env "X" "d" }}"{{/unless}}\n'
     "k: '{{ base64 (env 'HOME' default=\"h\") }}'\n"
     'f: {{ file "x.xsd" "binary" }}\n{{! comment }}{{~ a.list.[0] ~}}\n')

# Values: the project's values.yaml with each stage's values as the overlay.
seed("values", "project-only", values)
for p in sorted(glob.glob(os.path.join(yamles, "cicd", "config", "*", "*", "*.yaml"))):
    seed("values", "overlay-" + os.path.relpath(p, yamles), values + b"\0" + read(p))
seed("values", "placeholders", 'db:\n  url: "{{ env "X" }}"\n  pw: env:TOKEN\n'
     'list: [1, 2.5, true, null]\n\0db:\n  url: other\nlist: []\n')

# apim-cli configs: every example API config alone, the staging example with
# its overlays, and the organization and application examples.
examples = os.path.join(apimcli, "examples")
for p in sorted(glob.glob(os.path.join(examples, "*", "*.json"))):
    rel = os.path.relpath(p, examples)
    data = read(p)
    if rel.startswith("orgsAndApps/"):
        continue
    seed("apim_config", rel, data)
staging = os.path.join(examples, "staging", "minimal-config-api-specification")
for overlay in ("api-env", "prod"):
    seed("apim_config", "staging-" + overlay,
         read(staging + ".json") + b"\0" + read(f"{staging}.{overlay}.json"))
for p in sorted(glob.glob(os.path.join(examples, "orgsAndApps", "*.json"))):
    data = read(p)
    # An API config with its organizations and applications beside it.
    seed("apim_config", os.path.relpath(p, examples), data + b"\0\0" +
         b'{"name":"API Development","description":"org","development":true}' + b"\0" +
         b'{"name":"App","organization":"API Development","state":"approved"}')

# FED / POL / ENV archives, cut down from a real FED: the manifests and
# configs.xml byte for byte, each store reduced to its root element (plus an
# ${env.X} selector) with a matching .sha256, so the checker's whole path runs
# on a few kilobytes. Both stored and deflated, since the zip reader differs.
feds = sorted(glob.glob(os.path.join(apimcli, "fed", "*.fed")))
def small_archive(src, keep, compression):
    out = io.BytesIO()
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w", compression) as w:
        for info in z.infolist():
            name = info.filename
            if not keep(name):
                continue
            data = z.read(name)
            if name.endswith(".xml") and not name.endswith("/configs.xml"):
                root = re.search(rb"<entityStoreData[^>]*>", data)
                data = (root.group(0) if root else b"<entityStoreData>") + \
                    b'\n<entity type="X"><fval name="v"><value>${env.PORT.TRAFFIC}</value></fval></entity>\n</entityStoreData>\n'
            elif name.endswith(".sha256"):
                continue
            # The original timestamps keep the seeds byte-identical run to run.
            def put(entry, content):
                zi = zipfile.ZipInfo(entry, date_time=info.date_time)
                zi.compress_type = compression
                w.writestr(zi, content)
            put(name, data)
            if name.endswith(".xml") and not name.endswith("/configs.xml"):
                put(name[:-4] + ".sha256", hashlib.sha256(data).hexdigest())
    return out.getvalue()
def is_manifest(n): return n.upper().startswith("META-INF/")
def store_of(n): return n.rsplit("/", 1)[-1].split("-", 1)[0]
kinds = {
    "fed": lambda n: True,
    "pol": lambda n: n.upper() == "META-INF/MANIFEST.MF" or n.endswith("/configs.xml")
        or store_of(n) == "PrimaryStore",
    "env": lambda n: n.upper() == "META-INF/MANIFEST.MF" or n.endswith("/configs.xml")
        or store_of(n) == "EnvSettingsStore",
}
archives = {}
if feds:
    newest = feds[-1]
    for kind, keep in kinds.items():
        for label, comp in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
            data = small_archive(newest, keep, comp)
            archives[(kind, label)] = data
            seed("fed_archive", f"{kind}-{label}", data)
    seed("fed_package", "fed", b"F" + archives[("fed", "stored")])
    pol, env = archives[("pol", "stored")], archives[("env", "stored")]
    seed("fed_package", "pol-env", b"P" + struct.pack(">H", len(pol)) + pol + env)

# OCI references: the pipelines' image settings and the shapes the parser takes.
refs = set()
for p in glob.glob(os.path.join(repo, "pipelines", "*.yaml")):
    for m in re.finditer(rb"^\s*(?:base|repository):\s*(\S+)", read(p), re.M):
        refs.add(m.group(1).decode())
refs |= {
    "busybox", "library/ubuntu:22.04", "docker.io/axway/apigw-emt:7.7.20240830",
    "127.0.0.1:5000/apim/gw@sha256:" + "ab" * 32, "[::1]:5000/a/b:tag",
    "oci:/var/lib/layouts/emt:7.7", "oci:./layout", "index.docker.io/x/y:z@sha256:" + "0" * 64,
}
for r in sorted(refs):
    seed("oci_reference", r, r)

# OCI manifests (the first line stands for the Content-Type header).
d = "sha256:" + "a" * 64
manifests = {
    "oci-manifest": ("application/vnd.oci.image.manifest.v1+json", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 1469},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 3370706}],
        "annotations": {"org.opencontainers.image.base.name": "docker.io/axway/apigw-emt:7.7"}}),
    "docker-list": ("application/vnd.docker.distribution.manifest.list.v2+json", {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d, "size": 528,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 528,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": ["x"]}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1,
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}),
    "schema1": ("", {"schemaVersion": 1, "name": "a/b", "tag": "t", "fsLayers": []}),
}
for name, (ct, doc) in manifests.items():
    seed("oci_manifest", name, ct + "\n" + json.dumps(doc, indent=2))
seed("oci_manifest", "platform", "\nlinux/arm64/v8")
seed("oci_manifest", "digest", "\nsha512:" + "0" * 128)

# The gitops editor: the Helm chart's values with the keys a deploy sets.
chart = os.path.join(repo, "deploy", "helm", "gantry")
for p in sorted(glob.glob(os.path.join(chart, "*.yaml")) + glob.glob(os.path.join(chart, "ci", "*.yaml"))):
    rel = os.path.relpath(p, chart)
    for key in ("image.tag", "image.repository", "apitraffic.image"):
        seed("yaml_edit", f"{rel}-{key}", f"{key}\0registry.example.com/apim/gw:test-1a2b3c\0".encode() + read(p))
seed("yaml_edit", "quoting", '"a b".c\0it\'s: "quoted" # yes\0\ufeff---\n"a b":\n  c: \'x\'  # keep\r\n  d: [1]\n...\n')

# SSE: Last-Event-ID line, then the request target.
for i, s in enumerate(["\n/api/v1/events?from=1&follow=false",
                       "42\n/api/v1/events?pipeline=banking&run=01J&follow=true",
                       "-5\n/api/v1/events", "\n/api/v1/events?from=9223372036854775807",
                       " 7 \n/api/v1/events?from=-1&pipeline=&run=%00"]):
    seed("sse_events", str(i), s)

for t in sorted(os.listdir(corpus)):
    print(f"{t}: {len(os.listdir(os.path.join(corpus, t)))} seeds")
PY
