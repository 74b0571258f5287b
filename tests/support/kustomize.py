"""A small reader of the kustomize features deploy/k8s uses, to render it without a binary.

No kustomize binary comes from PyPI, npm or Debian for this Python, so tests/test_deploy.py
renders with this: ``resources`` (files and directories), ``components`` (kind Component),
``labels`` (``pairs`` on metadata only, kustomize's default ``includeSelectors: false``),
``images`` (``newName``/``newTag`` on pod template containers) and ``namespace``. Any other
field fails loudly instead of being ignored, so the reader cannot silently render
something else than ``kubectl apply -k`` would. When ``kubectl`` (with its built-in
kustomize) is installed, the tests compare both renderings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
KNOWN = {"apiVersion", "kind", "resources", "components", "labels", "images", "namespace"}


class Unsupported(Exception):
    """The kustomization uses a feature this reader does not implement."""


def kustomization(directory: Path) -> Doc:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    unknown = set(data) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)} (teach tests/support/kustomize.py)")
    return data


def render(directory: Path, *, expect: str = "Kustomization") -> list[Doc]:
    """The objects ``kubectl kustomize directory`` would print, in resource order."""
    data = kustomization(directory)
    if data.get("kind", "Kustomization") != expect:
        raise Unsupported(f"{directory} is a {data.get('kind')}, expected {expect}")
    docs: list[Doc] = []
    for entry in data.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in data.get("components", []):
        docs = _apply_component((directory / entry).resolve(), docs)
    return _transform(data, docs)


def _apply_component(directory: Path, docs: list[Doc]) -> list[Doc]:
    component = kustomization(directory)
    if component.get("kind") != "Component":
        raise Unsupported(f"{directory} is listed as a component but is not one")
    added = render(directory, expect="Component")
    return _transform(component, docs) + added


def _transform(data: Doc, docs: list[Doc]) -> list[Doc]:
    docs = copy.deepcopy(docs)
    for doc in docs:
        metadata = doc.setdefault("metadata", {})
        for label in data.get("labels", []):
            if set(label) - {"pairs"}:
                raise Unsupported(f"labels options {sorted(set(label) - {'pairs'})}")
            metadata.setdefault("labels", {}).update(label["pairs"])
        if "namespace" in data:
            metadata["namespace"] = data["namespace"]
        for container in _containers(doc):
            for image in data.get("images", []):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    tag = image.get("newTag")
                    container["image"] = f"{new}:{tag}" if tag else new
    return docs


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]
