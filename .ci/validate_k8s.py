#!/usr/bin/env python3
"""Validates Kubernetes objects in multi-document YAML files, offline.

    validate_k8s.py --crd crds/dynamocluster.yaml --kube-version 1.30 --kube-version 1.37 FILE...

* Built-in kinds: against the Kubernetes OpenAPI schema of each version given, with
  kubernetes-validate in strict mode (an unknown field is an error, as with
  `kubectl apply --validate=strict`).
* DynamoCluster: `spec` against the CRD's own openAPIV3Schema with jsonschema, also
  strict (an unknown field is an error; the API server would silently prune it). The
  CRD's CEL rules are not evaluated here: the operator's unit tests evaluate them.

YAML is read as kubectl reads it (sigs.k8s.io/yaml, YAML 1.1): an unquoted `n` or `y`
is a boolean, so `replication: {n: 3}` shows up as an unknown field `false`.

Prints one line per object; exits 1 if any object is invalid or no object was found.
"""

import argparse
import re
import sys

import jsonschema
import kubernetes_validate
import yaml


class KubectlLoader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 booleans plus y/Y/n/N, which go-yaml v2 (and so kubectl and
    Helm) also read as booleans."""


KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
_bool = yaml.SafeLoader.yaml_constructors["tag:yaml.org,2002:bool"]
KubectlLoader.add_constructor(
    "tag:yaml.org,2002:bool",
    lambda loader, node: node.value in "yY" if node.value in ("y", "Y", "n", "N") else _bool(loader, node))


def strict(schema):
    """The schema with `additionalProperties: false` on every object that lists its
    properties and neither sets additionalProperties nor preserves unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def openapi_to_jsonschema(schema):
    """OpenAPI v3 `nullable: true` as JSON Schema: null is also allowed."""
    if isinstance(schema, dict):
        schema = {k: openapi_to_jsonschema(v) for k, v in schema.items()}
        if schema.pop("nullable", False):
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if isinstance(schema, list):
        return [openapi_to_jsonschema(v) for v in schema]
    return schema


def crd_validators(crd_path):
    """{(apiVersion, kind): validator of spec} for every served version of the CRD."""
    with open(crd_path) as f:
        crd = yaml.load(f, Loader=KubectlLoader)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    validators = {}
    for version in crd["spec"]["versions"]:
        spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        schema = openapi_to_jsonschema(strict(spec_schema))
        validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def describe(doc):
    meta = doc.get("metadata") or {}
    name = meta.get("name", "?")
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{name}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", action="append", default=[], help="CRD file (repeatable)")
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    custom = {}
    for path in args.crd:
        custom.update(crd_validators(path))

    checked = failed = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=KubectlLoader) if d]
        for doc in docs:
            checked += 1
            what = f"{path}: {describe(doc)}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            errors = []
            if key in custom:
                errors = [f"spec{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}"
                          for e in custom[key].iter_errors(doc.get("spec"))]
                checked_against = "the CRD's openAPIV3Schema"
            else:
                for version in args.kube_version:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        where = ".".join(str(p) for p in e.absolute_path)
                        errors.append(f"k8s {version}: {where}: {e.message}")
                    except kubernetes_validate.SchemaNotFoundError as e:
                        errors.append(f"k8s {version}: {e.message}")
                checked_against = "Kubernetes " + ", ".join(args.kube_version)
            if errors:
                failed += 1
                print(f"INVALID {what}")
                for error in errors:
                    print(f"    {error}")
            else:
                print(f"ok      {what} (against {checked_against})")
    print(f"{checked - failed} valid, {failed} invalid")
    if checked == 0:
        print("no objects found", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
