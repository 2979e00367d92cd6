"""Execution state of a local pipeline run, kept in the state folder so a run can resume.

Layout: `<state>/executions/<id>/execution.json` (this state, rewritten atomically after every
change), `<id>/definition.json`, `<id>/steps/<step>/` (work folders and `step.log`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TERMINAL_OK = ("Succeeded", "Cached", "Skipped")


@dataclass
class StepRecord:
    name: str
    type: str
    status: str = "Pending"  # Pending | Executing | Succeeded | Cached | Skipped | Failed
    started: float | None = None
    ended: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    property_files: dict[str, Any] = field(default_factory=dict)
    cache_key: str | None = None
    cache_note: str | None = None  # why it hit or missed the cache
    message: str | None = None  # failure reason, condition outcome, ...
    attempts: int = 0

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return round(self.ended - self.started, 2)


@dataclass
class Execution:
    id: str
    pipeline_name: str
    parameters: dict[str, Any]
    folder: Path
    status: str = "Executing"  # Executing | Succeeded | Failed | Stopped
    created: float = field(default_factory=time.time)
    ended: float | None = None
    failure: str | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)

    @staticmethod
    def new(state_dir: Path, pipeline_name: str, parameters: dict[str, Any]) -> Execution:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        exec_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        folder = executions_dir(state_dir) / exec_id
        folder.mkdir(parents=True, exist_ok=False)
        return Execution(exec_id, pipeline_name, parameters, folder)

    def step_dir(self, name: str) -> Path:
        path = self.folder / "steps" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self) -> None:
        data = asdict(self)
        data["folder"] = str(self.folder)
        tmp = self.folder / "execution.json.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.folder / "execution.json")

    @staticmethod
    def load(state_dir: Path, exec_id: str) -> Execution:
        path = executions_dir(state_dir) / exec_id / "execution.json"
        if not path.exists():
            known = ", ".join(list_ids(state_dir)[-5:]) or "none"
            raise FileNotFoundError(
                f"no execution {exec_id!r} in {path.parent.parent} (recent: {known})"
            )
        data = json.loads(path.read_text())
        steps = {name: StepRecord(**rec) for name, rec in data.pop("steps").items()}
        data["folder"] = Path(data["folder"])
        return Execution(**data, steps=steps)


def executions_dir(state_dir: Path) -> Path:
    return state_dir / "executions"


def list_ids(state_dir: Path) -> list[str]:
    root = executions_dir(state_dir)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "execution.json").exists())
