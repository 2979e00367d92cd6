"""The monitor's figure: each statistic's baseline against the window's, as PNG bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.evaluate.plots import pyplot, to_png
from pipelines.monitor.prediction_stats import PREDICTED_CLASS


def distributions_png(
    baseline: dict[str, Any], numeric: dict[str, np.ndarray], counts: np.ndarray, result: Any
) -> bytes:
    plt = pyplot()
    names = [n for n in baseline["numeric"] if n in numeric]
    drifted = {c["name"] for c in result.checks if c["violation"]}
    psi = {c["name"]: c["psi"] for c in result.checks}
    cols = 3
    rows = -(-(len(names) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        base = np.asarray(baseline["numeric"][name]["sample"])
        now = np.asarray(numeric[name])
        bins = np.histogram_bin_edges(np.concatenate([base, now]), bins=30)
        ax.hist(base, bins=bins, density=True, alpha=0.55, label="baseline")
        ax.hist(now, bins=bins, density=True, alpha=0.55, label="window")
        mark = "DRIFT " if name in drifted else ""
        ax.set_title(f"{mark}{name} (PSI {psi.get(name, float('nan')):.2f})", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes.flat[len(names)]
    classes = baseline["categorical"][PREDICTED_CLASS]["classes"]
    base_counts = np.asarray(baseline["categorical"][PREDICTED_CLASS]["counts"], float)
    x = np.arange(len(classes))
    ax.bar(x - 0.2, base_counts / max(base_counts.sum(), 1), 0.4, label="baseline")
    ax.bar(x + 0.2, counts / max(counts.sum(), 1), 0.4, label="window")
    ax.set_xticks(x, [str(c) for c in classes], fontsize=7, rotation=45)
    mark = "DRIFT " if PREDICTED_CLASS in drifted else ""
    ax.set_title(
        f"{mark}{PREDICTED_CLASS} (PSI {psi.get(PREDICTED_CLASS, float('nan')):.2f})", fontsize=9
    )
    ax.legend(fontsize=7)
    for extra in list(axes.flat)[len(names) + 1 :]:
        extra.axis("off")
    fig.suptitle(f"{result.status}: {result.images} images vs {baseline['count']} baseline")
    fig.tight_layout()
    return to_png(fig)
