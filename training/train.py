"""Training step entry point: ``python -m training.train``, under torchrun, or on SageMaker.

Inputs come from flags or the SageMaker training environment (training/env.py): the dataset
folder (``--dataset`` / ``SM_CHANNEL_DATASET``), the model dir (``--model-dir`` /
``SM_MODEL_DIR``), the output dir (``--output-data-dir`` / ``SM_OUTPUT_DATA_DIR``) and the
checkpoint dir (``--checkpoint-dir`` / ``LEPTON_CHECKPOINT_DIR`` / /opt/ml/checkpoints).
The config is a named setup (``--setup``) overridden by ``SM_HPS`` and then by config flags
(every ``TrainConfig`` field as ``--field_name value``, training/serialize.py), which is how
SageMaker's torchrun driver passes hyperparameters; ``--sagemaker_*`` arguments are ignored.

Outputs (global rank 0 only): model dir (model.onnx, model.pt, metadata.json), output dir
``training.json`` (final metrics, MLflow run id), checkpoints, the MLflow run.
Exit codes: 0 done, 143 stopped by SIGTERM after saving a checkpoint, 1 error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Launch torchrun on this host (a SageMaker training job, or the local runner emulating
    one: training/launch.py), or be one of its processes (training/run.py)."""
    from training.env import needs_launcher

    if needs_launcher():
        from training.launch import main as launch

        return launch(argv)
    from training.run import main as run

    return run(argv)


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
