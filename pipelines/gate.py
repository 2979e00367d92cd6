"""The quality gate's rule, as a pure function, and its report.

The pipeline definition expresses the same rule with two ConditionGreaterThanOrEqualTo
(accuracy >= AccuracyThreshold, accuracy >= MinimumChampionAccuracy); this module is what
computes MinimumChampionAccuracy, explains a decision in words and writes the gate report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GATE_REPORT_FILE = "gate_report.json"


def minimum_champion_accuracy(champion_accuracy: float, tolerance: float) -> float:
    """The lowest accuracy a challenger may have: champion's minus the tolerance, never < 0."""
    return max(0.0, float(champion_accuracy) - float(tolerance))


def gate_decision(
    accuracy: float, threshold: float, champion_accuracy: float, tolerance: float
) -> tuple[bool, list[str]]:
    """(passed, reasons). Passes iff accuracy >= threshold and accuracy >= champion - tolerance.

    All values are fractions in 0..1; ``champion_accuracy`` is 0.0 when there is no champion.
    Every check contributes one reason, passed or not, so the report explains the decision.
    """
    for name, value in (
        ("accuracy", accuracy),
        ("threshold", threshold),
        ("champion_accuracy", champion_accuracy),
        ("tolerance", tolerance),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a fraction in 0..1, got {value!r}")
    floor = minimum_champion_accuracy(champion_accuracy, tolerance)
    reasons: list[str] = []
    meets_threshold = accuracy >= threshold
    reasons.append(
        f"accuracy {accuracy:.4f} {'>=' if meets_threshold else '<'} threshold {threshold:.4f}"
    )
    if champion_accuracy <= 0.0:
        meets_champion = True
        reasons.append("no champion to compare with")
    else:
        meets_champion = accuracy >= floor
        verdict = "not worse than" if meets_champion else "worse than"
        reasons.append(
            f"accuracy {accuracy:.4f} is {verdict} champion {champion_accuracy:.4f} "
            f"minus tolerance {tolerance:.4f} (= {floor:.4f})"
        )
    return meets_threshold and meets_champion, reasons


def gate_report(
    accuracy: float, threshold: float, champion_accuracy: float, tolerance: float
) -> dict[str, Any]:
    """The gate report document: inputs, decision and reasons."""
    passed, reasons = gate_decision(accuracy, threshold, champion_accuracy, tolerance)
    return {
        "passed": passed,
        "reasons": reasons,
        "accuracy": float(accuracy),
        "threshold": float(threshold),
        "champion_accuracy": float(champion_accuracy),
        "tolerance": float(tolerance),
        "minimum_champion_accuracy": minimum_champion_accuracy(champion_accuracy, tolerance),
    }


def write_gate_report(folder: Path, report: dict[str, Any]) -> Path:
    """Write ``gate_report.json`` into ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GATE_REPORT_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
