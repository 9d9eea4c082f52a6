"""Cut KServe's CRD schemas down to what k8s/kserve uses, as strict JSON Schemas.

    python deploy/schemas/kserve_subset.py KSERVE_GIT_DIR REV

Reads ``config/crd/full/serving.kserve.io_*.yaml`` at REV with ``git show`` (a bare clone works)
and rewrites the ``kserve-*.subset.json`` files next to this script. tests/deploy reads only the
JSON; run this again to move to another KServe release (deploy/schemas/README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
Schema = dict[str, Any]
FieldPath = tuple[str, ...]

# predictor.<framework> shorthands (KServe's built-in runtimes) and multi-node workers: maskserve is
# reached through predictor.model or predictor.containers only.
FRAMEWORKS = {
    *("huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton", "xgboost"),
}

# ObjectMeta is `type: object` in every CRD (the API server validates it). The fields the manifests
# set, typed; other metadata stays allowed.
METADATA: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@dataclass(frozen=True)
class Cut:
    crd: str  # file name under config/crd/full/
    version: str
    kinds: list[str]
    output: str
    # Paths of property names: the only properties kept there / the properties dropped there.
    keep: dict[FieldPath, set[str]] = field(default_factory=dict)
    drop: dict[FieldPath, set[str]] = field(default_factory=dict)
    # CRDs whose schema for `version` must equal this one (so that `kinds` can share the file).
    same_as: list[str] = field(default_factory=list)


CUTS = [
    Cut(
        crd="serving.kserve.io_clusterservingruntimes.yaml",
        version="v1alpha1",
        kinds=["ClusterServingRuntime", "ServingRuntime"],
        output="kserve-servingruntime-v1alpha1.subset.json",
        keep={(): {"apiVersion", "kind", "metadata", "spec"}},
        drop={("spec",): {"workerSpec"}},
        same_as=["serving.kserve.io_servingruntimes.yaml"],
    ),
    Cut(
        crd="serving.kserve.io_inferenceservices.yaml",
        version="v1beta1",
        kinds=["InferenceService"],
        output="kserve-inferenceservice-v1beta1.subset.json",
        keep={(): {"apiVersion", "kind", "metadata", "spec"}, ("spec",): {"predictor"}},
        drop={("spec", "predictor"): FRAMEWORKS | {"workerSpec"}},
    ),
]


def subschemas(node: Schema) -> list[Schema]:
    """The schemas directly inside ``node`` (the CRDs use no $ref, oneOf or not)."""
    found = list(node.get("properties", {}).values())
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found.append(node[key])
    for key in ("anyOf", "allOf"):
        found.extend(node.get(key, []))
    return found


def strictify(node: Schema) -> None:
    """Close every object that lists its properties: a misspelt field then fails validation.

    Maps (labels, annotations, resources.limits, nodeSelector) have ``additionalProperties`` and no
    ``properties``, and ``x-kubernetes-preserve-unknown-fields`` objects are open on purpose; both stay
    open. openapi2jsonschema's ``--strict`` does the same.
    """
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for child in subschemas(node):
        strictify(child)


def at(schema: Schema, path: FieldPath) -> Schema:
    for name in path:
        schema = schema["properties"][name]
    return schema


def crd_schema(git_dir: Path, rev: str, crd: str, version: str) -> Schema:
    text = subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{rev}:config/crd/full/{crd}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (served,) = [v for v in yaml.safe_load(text)["spec"]["versions"] if v["name"] == version]
    schema: Schema = served["schema"]["openAPIV3Schema"]
    return schema


def build(cut: Cut, git_dir: Path, rev: str, commit: str) -> Schema:
    schema = crd_schema(git_dir, rev, cut.crd, cut.version)
    for other in cut.same_as:
        assert crd_schema(git_dir, rev, other, cut.version) == schema, f"{other} differs from {cut.crd}"
    for path, names in cut.keep.items():
        node = at(schema, path)
        node["properties"] = {k: v for k, v in node["properties"].items() if k in names}
        assert node["properties"].keys() == names, f"{path}: {names - node['properties'].keys()} not in the CRD"
    for path, names in cut.drop.items():
        node = at(schema, path)
        assert names <= node["properties"].keys(), f"{path}: {names - node['properties'].keys()} not in the CRD"
        node["properties"] = {k: v for k, v in node["properties"].items() if k not in names}
    strictify(schema)
    group = cut.crd.split("_")[0]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{cut.version}"}
    schema["properties"]["kind"] = {"enum": cut.kinds}
    schema["properties"]["metadata"] = METADATA
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    cut_text = "; ".join(
        [f"kept only {'.'.join(p) or '(top)'}.{{{', '.join(sorted(n))}}}" for p, n in cut.keep.items()]
        + [f"dropped {'.'.join(p)}.{{{', '.join(sorted(n))}}}" for p, n in cut.drop.items()]
    )
    header: Schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": cut.output,
        "title": f"{' / '.join(cut.kinds)} ({group}/{cut.version}), subset",
        "description": (
            f"spec.versions[{cut.version}].schema.openAPIV3Schema of kserve/kserve config/crd/full/{cut.crd} "
            f"at {commit} ({rev}), Apache-2.0 (LICENSE.kserve). Converted by deploy/schemas/kserve_subset.py: "
            f"{cut_text}; additionalProperties: false on every object that lists properties (maps and "
            "preserve-unknown-fields objects stay open); apiVersion, kind and metadata typed. "
            "Do not edit by hand: a field outside the subset is rejected until it is kept there."
        ),
    }
    return {**schema, **header}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir", type=Path, help="a kserve/kserve clone (its .git directory, or a bare repo)")
    parser.add_argument("rev", help="tag or commit, e.g. v0.20.0")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "--git-dir", str(args.git_dir), "rev-parse", f"{args.rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for cut in CUTS:
        out = HERE / cut.output
        out.write_text(json.dumps(build(cut, args.git_dir, args.rev, commit), indent=1, sort_keys=True) + "\n")
        print(f"{out.relative_to(HERE.parents[1])}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
