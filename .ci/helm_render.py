#!/usr/bin/env python3
"""Renders the Helm chart with Helm's own engine and prints every object as YAML.

helm-sdkpy (Helm's library, from PyPI) lints charts but has no `helm template`. So this
runs a real `helm install` (no wait) against a small in-memory Kubernetes API server on
loopback, which answers discovery for the kinds the chart uses and records every object
Helm creates. What Helm sends is exactly what `helm install` would apply: templates
rendered with the given values, parsed, mapped to API resources and created in Helm's
install order. The objects are printed as a multi-document YAML stream for validation.

    helm_render.py CHART [--set-json '{"cluster": {"enabled": true}}'] [--namespace NS]

Exits non-zero with Helm's message when the chart does not render or install.
"""

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import helm_sdkpy
import yaml

KUBE_VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}

# (group, version, plural, kind, namespaced): every kind the chart and the operator use.
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "services", "Service", True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "pods", "Pod", True),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("", "v1", "events", "Event", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("apps", "v1", "statefulsets", "StatefulSet", True),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    ("coordination.k8s.io", "v1", "leases", "Lease", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("dynamo.example.org", "v1alpha1", "dynamoclusters", "DynamoCluster", True),
    # A cluster running prometheus-operator (metrics.serviceMonitor.enabled).
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True),
    # The chart's post-install hook (cluster.enabled); the fake API server completes it.
    ("batch", "v1", "jobs", "Job", True),
]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class KubectlDumper(yaml.SafeDumper):
    """Quotes y/Y/n/N too: kubectl and the validator read them as YAML 1.1 booleans."""


KubectlDumper.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def group_version(group, version):
    return f"{group}/{version}" if group else version


class FakeApiServer:
    """Just enough of the Kubernetes API for `helm install`: discovery, get, list,
    create and update, in memory. Objects Helm creates outside its release storage are
    recorded in order."""

    def __init__(self):
        self.objects = {}  # (gv, plural, namespace, name) -> object
        self.created = []  # objects created by the chart, in order
        self.unexpected = []  # requests this server cannot answer
        self.lock = threading.Lock()

    def discovery(self, path):
        if path == "/version":
            return KUBE_VERSION
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if path == "/apis":
            groups = {}
            for group, version, *_ in RESOURCES:
                if group:
                    groups.setdefault(group, version)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, v in groups.items()]}
        for group, version, *_ in RESOURCES:
            gv = group_version(group, version)
            prefix = f"/api/{gv}" if not group else f"/apis/{gv}"
            if path == prefix:
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                    {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS}
                    for g, v, plural, kind, namespaced in RESOURCES if (g, v) == (group, version)]}
        return None

    def locate(self, path):
        """(gv, plural, kind, namespace, name) of a resource path, or None."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            gv, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2 or (len(rest) == 3 and rest[0] == "namespaces"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            return None
        for group, version, plural, kind, _ in RESOURCES:
            if group_version(group, version) == gv and plural == rest[0]:
                return gv, plural, kind, namespace, rest[1] if len(rest) == 2 else None
        return None

    def handle(self, method, raw_path, body, content_type):
        url = urlparse(raw_path)
        if method == "GET":
            found = self.discovery(url.path)
            if found is not None:
                return 200, found
        where = self.locate(url.path)
        if where is None:
            self.unexpected.append(f"{method} {raw_path}")
            return 404, status(404, "NotFound", f"no route {url.path}")
        gv, plural, kind, namespace, name = where
        query = parse_qs(url.query)
        with self.lock:
            if method == "GET" and name is None and query.get("watch", [""])[0] in ("1", "true"):
                # Helm watches a hook Job until it completes: one event with it done.
                items = [o for (g, p, ns, _), o in self.objects.items()
                         if (g, p) == (gv, plural) and (namespace is None or ns == namespace)]
                return 200, WatchEvents([{"type": "ADDED", "object": o} for o in items])
            if method == "DELETE" and name is not None:
                obj = self.objects.pop((gv, plural, namespace, name), None)
                if obj is None:
                    return 404, status(404, "NotFound", f'{plural} "{name}" not found', name, plural)
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            if method == "GET" and name is None:
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                items = [o for (g, p, ns, _), o in self.objects.items()
                         if (g, p) == (gv, plural) and (namespace is None or ns == namespace)
                         and matches(o, selector)]
                return 200, {"kind": f"{kind}List", "apiVersion": gv,
                             "metadata": {"resourceVersion": "1"}, "items": items}
            if method == "GET":
                obj = self.objects.get((gv, plural, namespace, name))
                if obj is None:
                    return 404, status(404, "NotFound", f'{plural} "{name}" not found', name, plural)
                return 200, obj
            if method in ("POST", "PUT") and "protobuf" in content_type and plural == "secrets":
                # Helm's release record (its storage driver sends protobuf): acknowledged,
                # not kept; the release history is not needed for one install.
                return (201 if method == "POST" else 200), {
                    "kind": "Secret", "apiVersion": "v1", "metadata": {"name": name or "release"}}
            if method in ("POST", "PUT"):
                obj = json.loads(body)
                meta = obj.setdefault("metadata", {})
                key = (gv, plural, namespace, meta.get("name"))
                if method == "POST" and key in self.objects:
                    return 409, status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
                if method == "POST":
                    self.created.append(json.loads(json.dumps(obj)))
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["resourceVersion"] = str(len(self.objects) + 2)
                meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                if namespace:
                    meta["namespace"] = namespace
                if kind == "Job":
                    # Ran and succeeded, as far as Helm's hook wait can tell.
                    obj["status"] = {"succeeded": 1, "conditions": [
                        {"type": "Complete", "status": "True"},
                        {"type": "SuccessCriteriaMet", "status": "True"}]}
                self.objects[key] = obj
                return (201 if method == "POST" else 200), obj
        self.unexpected.append(f"{method} {raw_path}")
        return 405, status(405, "MethodNotAllowed", f"{method} is not supported here")


class WatchEvents(list):
    """A watch response: one JSON event per line, then the end of the stream."""


def matches(obj, selector):
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def status(code, reason, message, name=None, kind=None):
    details = {"name": name, "kind": kind} if name else {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}


def serve(api):
    class Handler(BaseHTTPRequestHandler):
        def do(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type") or ""
            code, payload = api.handle(self.command, self.path, body, content_type)
            if isinstance(payload, WatchEvents):
                data = b"".join(json.dumps(event).encode() + b"\n" for event in payload)
            else:
                data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart")
    parser.add_argument("--set-json", default="{}", help="values, as JSON, over values.yaml")
    parser.add_argument("--namespace", default="dynamo-system")
    parser.add_argument("--release", default="dynamo-operator")
    parser.add_argument("--output", help="write the objects here instead of stdout")
    args = parser.parse_args()

    api = FakeApiServer()
    server = serve(api)
    host, port = server.server_address
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": args.namespace}}],
    }
    with tempfile.TemporaryDirectory() as home:
        # Helm keeps caches and config under these; keep them out of the real home.
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            os.environ[var] = os.path.join(home, var.lower())
        path = os.path.join(home, "kubeconfig")
        with open(path, "w") as f:
            yaml.safe_dump(kubeconfig, f)
        config = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=path)
        try:
            asyncio.run(helm_sdkpy.Install(config).run(
                args.release, os.path.abspath(args.chart), values=json.loads(args.set_json),
                wait=False, timeout=60))
        except helm_sdkpy.HelmError as err:
            print(f"helm_render: helm install failed: {err}", file=sys.stderr)
            for request in api.unexpected:
                print(f"helm_render: unanswered request: {request}", file=sys.stderr)
            return 1
        finally:
            server.shutdown()
    if not api.created:
        print("helm_render: the chart created no objects", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w") as f:
            yaml.dump_all(api.created, f, Dumper=KubectlDumper, sort_keys=False)
    else:
        yaml.dump_all(api.created, sys.stdout, Dumper=KubectlDumper, sort_keys=False)
    print(f"rendered {len(api.created)} objects: "
          + ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in api.created),
          file=sys.stderr if not args.output else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
