"""Step caching for the local runner, keyed by code, inputs and arguments.

A step's key is the digest of three components: the source it runs (the import closure of its
entry module, `pipelines.imports.fingerprint`), a fingerprint of every input (keys, sizes,
ETags), and its resolved arguments without output locations (those carry the execution id, as
on SageMaker). A miss always comes with a one-line reason naming
the component that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


class StepCache:
    """One JSON file per (pipeline, step) in `<state>/cache/`."""

    def __init__(self, state_dir: Path, pipeline_name: str) -> None:
        self.root = state_dir / "cache" / pipeline_name

    def _path(self, step: str) -> Path:
        return self.root / f"{step}.json"

    def _load(self, step: str) -> dict[str, Any]:
        path = self._path(step)
        if not path.exists():
            return {"entries": {}, "last": None}
        return json.loads(path.read_text())

    @staticmethod
    def key(code: str, inputs: Mapping[str, str], arguments: Any) -> tuple[str, dict[str, Any]]:
        components = {"code": code, "inputs": dict(inputs), "arguments": arguments}
        return _digest(components), components

    def lookup(self, step: str, key: str, components: dict[str, Any]) -> tuple[dict | None, str]:
        data = self._load(step)
        entry = data["entries"].get(key)
        if entry is not None:
            return entry, f"cache hit (from execution {entry['execution_id']})"
        last = data.get("last")
        if last is None:
            return None, "cache miss: no earlier run of this step"
        return None, "cache miss: " + self._why(last["components"], components)

    @staticmethod
    def _why(old: dict[str, Any], new: dict[str, Any]) -> str:
        if old["code"] != new["code"]:
            return "its code changed"
        changed_inputs = sorted(
            k
            for k in set(old["inputs"]) | set(new["inputs"])
            if old["inputs"].get(k) != new["inputs"].get(k)
        )
        if changed_inputs:
            return "input changed: " + ", ".join(changed_inputs)
        a, b = _flatten(old["arguments"]), _flatten(new["arguments"])
        diffs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diffs:
            first = diffs[0]
            more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
            return f"argument {first} changed: {a.get(first)!r} -> {b.get(first)!r}{more}"
        return "cached outputs are gone"

    def store(
        self,
        step: str,
        key: str,
        components: dict[str, Any],
        execution_id: str,
        properties: dict[str, Any],
        property_files: dict[str, Any],
    ) -> None:
        data = self._load(step)
        data["entries"][key] = {
            "execution_id": execution_id,
            "properties": properties,
            "property_files": property_files,
        }
        data["last"] = {"key": key, "components": components}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._path(step).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, self._path(step))

    def forget(self, step: str, key: str) -> None:
        data = self._load(step)
        if data["entries"].pop(key, None) is not None:
            tmp = self._path(step).with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, self._path(step))
