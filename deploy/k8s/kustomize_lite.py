#!/usr/bin/env python3
"""Offline helpers for deploy/k8s/validate.sh (PyYAML only).

  kustomize_lite.py render DIR      print DIR/kustomization.yaml rendered
  kustomize_lite.py check FILE      cross-reference checks on rendered YAML

`render` is a fallback for machines without `kubectl kustomize` or
`kustomize`: it supports what this directory uses -- `resources` (files),
`namespace`, `labels` (pairs, includeSelectors, includeTemplates),
`commonLabels` and `images` -- and fails on any other key, so it never
silently renders something different from real kustomize.

`check` catches what a JSON schema cannot: selectors that match no pod
template, config/secret references to missing keys, StatefulSets whose
serviceName is not a headless Service, probes and Services that name an
undeclared container port.
"""

import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels",
             "commonLabels", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def fail(msg):
    print(f"kustomize_lite: error: {msg}", file=sys.stderr)
    sys.exit(1)


def pod_templates(obj):
    """(metadata.labels, pod spec) of a workload's template."""
    spec = obj.get("spec") or {}
    t = spec.get("template") or {}
    return (t.get("metadata") or {}).get("labels") or {}, t.get("spec") or {}


def render(directory):
    d = Path(directory)
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        fail(f"unsupported kustomization keys {sorted(unknown)}; use real kustomize")
    docs = []
    for res in k.get("resources", []):
        p = d / res
        if not p.is_file():
            fail(f"resource {res} is not a file (directories/URLs need real kustomize)")
        docs += [x for x in yaml.safe_load_all(p.read_text()) if x]

    ns = k.get("namespace")
    label_sets = [(k["commonLabels"], True, True)] if k.get("commonLabels") else []
    for entry in k.get("labels", []):
        label_sets.append((entry.get("pairs", {}), entry.get("includeSelectors", False),
                           entry.get("includeTemplates", False)
                           or entry.get("includeSelectors", False)))
    images = {i["name"]: i for i in k.get("images", [])}

    for obj in docs:
        meta = obj.setdefault("metadata", {})
        if ns:
            if obj.get("kind") == "Namespace":
                meta["name"] = ns
            elif obj.get("kind") not in CLUSTER_SCOPED:
                meta["namespace"] = ns
        for pairs, selectors, templates in label_sets:
            meta.setdefault("labels", {}).update(pairs)
            spec = obj.get("spec") or {}
            if selectors:
                sel = spec.get("selector")
                if obj.get("kind") == "Service" and sel is not None:
                    sel.update(pairs)
                elif isinstance(sel, dict) and "matchLabels" in sel:
                    sel["matchLabels"].update(pairs)
            if templates and isinstance(spec.get("template"), dict):
                spec["template"].setdefault("metadata", {}).setdefault(
                    "labels", {}).update(pairs)
        _, pod = pod_templates(obj)
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            name, _, tag = c.get("image", "").partition(":")
            if name in images:
                img = images[name]
                c["image"] = img.get("newName", name) + (
                    "@" + img["digest"] if "digest" in img
                    else ":" + img.get("newTag", tag or "latest"))
    # kustomize's output order: Namespace first, then by kind and name.
    order = ["Namespace", "ConfigMap", "Secret", "Service"]
    docs.sort(key=lambda o: (order.index(o["kind"]) if o["kind"] in order else len(order),
                             o["kind"], o["metadata"].get("name", "")))
    return docs


def check(path):
    docs = [x for x in yaml.safe_load_all(Path(path).read_text()) if x]
    errors = []
    by_kind = {}
    for o in docs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configmaps = {n: set((o.get("data") or {}) | (o.get("binaryData") or {}))
                  for n, o in by_kind.get("ConfigMap", {}).items()}
    secrets = {n: set((o.get("data") or {}) | (o.get("stringData") or {}))
               for n, o in by_kind.get("Secret", {}).items()}
    templates = []  # (kind/name, labels, pod spec)
    for kind in WORKLOADS:
        for name, o in by_kind.get(kind, {}).items():
            labels, pod = pod_templates(o)
            templates.append((f"{kind}/{name}", labels, pod))
            sel = (o["spec"].get("selector") or {}).get("matchLabels")
            if sel is not None and any(labels.get(k) != v for k, v in sel.items()):
                errors.append(f"{kind}/{name}: selector {sel} does not match its template")

    def matches(sel):
        return [t for t in templates if all(t[1].get(k) == v for k, v in sel.items())]

    def ports_of(pods):
        return {p.get("name") for _, _, pod in pods for c in pod.get("containers", [])
                for p in c.get("ports", [])}

    for name, o in by_kind.get("Service", {}).items():
        sel = o["spec"].get("selector") or {}
        pods = matches(sel)
        if sel and not pods:
            errors.append(f"Service/{name}: selector {sel} matches no pod template")
        for p in o["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and pods and tp not in ports_of(pods):
                errors.append(f"Service/{name}: targetPort {tp} is no container port")
    for name, o in by_kind.get("PodDisruptionBudget", {}).items():
        sel = (o["spec"].get("selector") or {}).get("matchLabels") or {}
        if not matches(sel):
            errors.append(f"PodDisruptionBudget/{name}: selector matches no pod template")
    for name, o in by_kind.get("StatefulSet", {}).items():
        svc = by_kind.get("Service", {}).get(o["spec"].get("serviceName"))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            errors.append(f"StatefulSet/{name}: serviceName is not a headless Service")
    for where, _, pod in templates:
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        for v in vols.values():
            cm = (v.get("configMap") or {}).get("name")
            if cm and cm not in configmaps:
                errors.append(f"{where}: volume {v['name']} uses missing ConfigMap {cm}")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            declared = {p.get("name") for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in declared:
                    errors.append(f"{where}: {probe} uses undeclared port {port}")
            for e in c.get("env", []):
                src = e.get("valueFrom") or {}
                for key, table, what in (("configMapKeyRef", configmaps, "ConfigMap"),
                                         ("secretKeyRef", secrets, "Secret")):
                    ref = src.get(key)
                    if ref and not ref.get("optional"):
                        if ref["name"] not in table:
                            errors.append(f"{where}: env {e['name']}: missing {what} {ref['name']}")
                        elif ref["key"] not in table[ref["name"]]:
                            errors.append(f"{where}: env {e['name']}: {what} {ref['name']} "
                                          f"has no key {ref['key']}")
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols and m["name"] not in {
                        t["metadata"]["name"] for t in
                        (by_kind.get("StatefulSet", {}).get(where.split("/", 1)[1], {})
                         .get("spec", {}).get("volumeClaimTemplates", []))}:
                    errors.append(f"{where}: volumeMount {m['name']} has no volume")
    for e in errors:
        print(f"check: {e}", file=sys.stderr)
    print(f"check: {len(docs)} objects, {len(errors)} reference errors")
    return 1 if errors else 0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("render", "check"):
        fail("usage: kustomize_lite.py render DIR | check FILE")
    if sys.argv[1] == "render":
        yaml.safe_dump_all(render(sys.argv[2]), sys.stdout, sort_keys=False)
        return 0
    return check(sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
