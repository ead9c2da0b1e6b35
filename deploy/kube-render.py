#!/usr/bin/env python3
"""Plain manifests from deploy/kubernetes/ for `podman kube play`, and the
kubelet's ConfigMap volume layout, for `make kube-play-test` (kubectl and
kustomize are not installed here; podman takes plain manifests only).

  deploy/kube-render.py render DIR [--image IMAGE] [--add-arg ARG]...
                              [--configmap-dir NAME=HOSTDIR]...
                              [--secret-dir NAME=HOSTDIR]...
                              [--replicas N] [--host-network] > pod.yaml
  deploy/kube-render.py project HOSTDIR FILE...

`render` does what `kubectl kustomize DIR` does for the features the
kustomization uses, and refuses any other: `resources` are emitted as they
are; each `configMapGenerator` becomes a ConfigMap (UTF-8 files under
`data`, others base64 under `binaryData`, as kustomize does), which requires
`generatorOptions.disableNameSuffixHash: true` (no hash is computed here).
Test overlays, each the equivalent of a kustomize patch: `--image` sets every
container's image (`kustomize edit set image`); `--add-arg` appends to the
first container's args (a JSON 6902 `add /args/-`); `--configmap-dir`
replaces the pod volume of ConfigMap NAME by a hostPath directory that
`project` fills, because podman copies a ConfigMap into a volume once and
never updates it, while the kubelet swaps a `..data` symlink; `--secret-dir`
does the same for the pod volume of Secret NAME (podman 4.3's `kube play`
crashes on a secret volume with `items`; the caller lays the files out with
`project` and gives them the owner and mode the kubelet would); `--replicas`
sets the Deployment's replicas (kustomize's `replicas:` field); `--host-network` sets the pod's `hostNetwork: true` and drops the
containers' `ports` lists after resolving the probes' named ports to their
numbers (podman 4 turns every containerPort into a host port mapping, which
it refuses on the host network, where Kubernetes ignores them anyway).

`project` writes FILE... into HOSTDIR exactly as the kubelet's AtomicWriter
does for a ConfigMap volume: a new `..<timestamp>` directory holding the
files, a `..data_tmp` symlink to it renamed over `..data` (the one atomic
step a watcher sees), a `NAME -> ..data/NAME` symlink per file, and the old
timestamped directory removed. Run it again with new content to update.

It never talks to a cluster, never invents a resource the kustomization does
not name, and fails on anything it does not understand.
"""

import base64
import datetime
import os
import secrets
import shutil
import sys

import yaml


def fail(message):
    sys.exit(f"kube-render: {message}")


def generated_configmaps(base, kustomization):
    known = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
    unknown = set(kustomization) - known
    if unknown:
        fail(f"kustomization fields not supported here: {sorted(unknown)}")
    options = kustomization.get("generatorOptions") or {}
    generators = kustomization.get("configMapGenerator") or []
    if generators and options.get("disableNameSuffixHash") is not True:
        fail("configMapGenerator without disableNameSuffixHash: true (a hash suffix is not computed here)")
    maps = []
    for generator in generators:
        if set(generator) - {"name", "files"}:
            fail(f"configMapGenerator fields not supported: {sorted(set(generator) - {'name', 'files'})}")
        data, binary = {}, {}
        for entry in generator.get("files") or []:
            key, _, path = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
            full = os.path.join(base, path)
            try:
                content = open(full, "rb").read()
            except OSError as e:
                fail(f"ConfigMap {generator['name']}: {e}")
            try:
                data[key] = content.decode("utf-8")
            except UnicodeDecodeError:
                binary[key] = base64.b64encode(content).decode("ascii")
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}}
        if data:
            configmap["data"] = data
        if binary:
            configmap["binaryData"] = binary
        maps.append(configmap)
    return maps


def render(argv):
    if not argv:
        fail("usage: render DIR [--image IMAGE] [--add-arg ARG]... [--configmap-dir NAME=HOSTDIR]...")
    base, rest = argv[0], argv[1:]
    image, add_args, dirs, secret_dirs, replicas, host_network = None, [], {}, {}, None, False
    while rest:
        flag = rest.pop(0)
        if flag == "--host-network":
            host_network = True
            continue
        if not rest:
            fail(f"{flag} needs a value")
        value = rest.pop(0)
        if flag == "--image":
            image = value
        elif flag == "--add-arg":
            add_args.append(value)
        elif flag == "--replicas":
            replicas = int(value)
        elif flag == "--configmap-dir":
            name, _, path = value.partition("=")
            if not path:
                fail("--configmap-dir NAME=HOSTDIR")
            dirs[name] = os.path.abspath(path)
        elif flag == "--secret-dir":
            name, _, path = value.partition("=")
            if not path:
                fail("--secret-dir NAME=HOSTDIR")
            secret_dirs[name] = os.path.abspath(path)
        else:
            fail(f"unknown flag {flag}")
    kustomization = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
    documents = []
    for resource in kustomization.get("resources") or []:
        for doc in yaml.safe_load_all(open(os.path.join(base, resource))):
            if doc:
                documents.append(doc)
    configmaps = generated_configmaps(base, kustomization)
    for doc in documents:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec")
        if doc.get("kind") not in ("Deployment", "Pod") or spec is None:
            continue
        for container in spec.get("containers", []):
            if image:
                container["image"] = image
        if replicas is not None and doc.get("kind") == "Deployment":
            doc["spec"]["replicas"] = replicas
        if host_network:
            spec["hostNetwork"] = True
            for container in spec.get("containers", []):
                named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    action = (container.get(probe) or {}).get("httpGet") or (container.get(probe) or {}).get("tcpSocket")
                    if action and isinstance(action.get("port"), str):
                        if action["port"] not in named:
                            fail(f"{probe} names port {action['port']}, which the container does not declare")
                        action["port"] = named[action["port"]]
                container.pop("ports", None)
        if add_args:
            spec["containers"][0].setdefault("args", []).extend(add_args)
        for volume in spec.get("volumes", []):
            name = (volume.get("configMap") or {}).get("name")
            if name in dirs:
                del volume["configMap"]
                volume["hostPath"] = {"path": dirs[name], "type": "Directory"}
            secret = (volume.get("secret") or {}).get("secretName")
            if secret in secret_dirs:
                del volume["secret"]
                volume["hostPath"] = {"path": secret_dirs.pop(secret), "type": "Directory"}
    if secret_dirs:
        fail(f"--secret-dir for Secrets no pod volume names: {sorted(secret_dirs)}")
    missing = set(dirs) - {c["metadata"]["name"] for c in configmaps}
    if missing:
        fail(f"--configmap-dir for ConfigMaps the kustomization does not generate: {sorted(missing)}")
    # ConfigMaps first, as kustomize orders them (and podman needs them before the pod).
    yaml.safe_dump_all(configmaps + documents, sys.stdout, sort_keys=False)


def project(argv):
    if len(argv) < 2:
        fail("usage: project HOSTDIR FILE...")
    target, files = argv[0], argv[1:]
    os.makedirs(target, mode=0o755, exist_ok=True)
    data_link = os.path.join(target, "..data")
    old = os.readlink(data_link) if os.path.islink(data_link) else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(5)
    new_dir = os.path.join(target, stamp)
    os.mkdir(new_dir, 0o755)
    names = []
    for path in files:
        name = os.path.basename(path)
        shutil.copyfile(path, os.path.join(new_dir, name))
        os.chmod(os.path.join(new_dir, name), 0o644)  # the ConfigMap volume's defaultMode (0644)
        names.append(name)
    tmp_link = os.path.join(target, "..data_tmp")
    if os.path.lexists(tmp_link):
        os.remove(tmp_link)
    os.symlink(stamp, tmp_link)
    os.rename(tmp_link, data_link)
    for name in names:
        user_path = os.path.join(target, name)
        if not os.path.lexists(user_path):
            os.symlink(os.path.join("..data", name), user_path)
    if old and old != stamp:
        shutil.rmtree(os.path.join(target, old), ignore_errors=True)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("render", "project"):
        fail("usage: kube-render.py render DIR ... | project HOSTDIR FILE...")
    (render if sys.argv[1] == "render" else project)(sys.argv[2:])


if __name__ == "__main__":
    main()
