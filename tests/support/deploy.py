"""The deployment files as tests read them: compose.yaml parsed, the Kustomize base rendered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.harness import REPO

__all__ = ["COMPOSE", "KUSTOMIZE_DIR", "compose", "render_kustomization"]

COMPOSE = REPO / "compose.yaml"
KUSTOMIZE_DIR = REPO / "deploy" / "kubernetes"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<: *service` merges
    assert isinstance(data, dict)
    return data


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What `kustomize build` gives for the features this base uses (resources, labels, namespace)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "labels", "namespace"}
    unknown = set(kustomization) - supported
    assert not unknown, f"the test's renderer does not implement {sorted(unknown)}: extend it"
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objects.extend(doc for doc in yaml.safe_load_all((directory / resource).read_text()) if doc)
    for entry in kustomization.get("labels", []):
        assert not entry.get("includeSelectors"), "the test's renderer does not implement includeSelectors"
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
            template = obj.get("spec", {}).get("template")
            if entry.get("includeTemplates") and template is not None:
                template.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects
