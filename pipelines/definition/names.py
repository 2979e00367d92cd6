"""Names and container paths the definition uses; the local runner relies on them verbatim."""

from __future__ import annotations

# ---- step names (what `Steps[].Name` holds); those that consume parameters are declared
# beside the parameters in config.py
from pipelines.definition.config import BATCH, GATE, PREPARE, REGISTER, TRAIN

__all__ = ["BATCH", "GATE", "PREPARE", "REGISTER", "TRAIN"]
EVALUATE = "Evaluate"
DEPLOY = "Deploy"
GATE_FAILED = "GateFailed"
BATCH_REQUESTED = "BatchRequested"  # Condition: BatchInputUri given -> Batch

# ---- outputs, channels and property files
DATASET_OUTPUT = "dataset"  # Prepare's ProcessingOutput, and Train's input channel
EVALUATION_OUTPUT = "evaluation"  # Evaluate's ProcessingOutput
EVALUATION_REPORT = "EvaluationReport"  # PropertyFile on Evaluate
EVALUATION_FILE = "evaluation.json"
BASELINE_FILE = "baseline.json"  # beside it: the drift monitor's baseline (pipelines/monitor)
ACCURACY_JSON_PATH = "multiclass_classification_metrics.accuracy.value"
CODE_INPUT = "code"  # ProcessingInput holding the code bundle

# ---- entry points: `python3 -m <module>` from the code bundle (processing steps)
PREPARE_MODULE = "pipelines.prepare.step"
EVALUATE_MODULE = "pipelines.evaluate.step"
DEPLOY_MODULE = "pipelines.deploy.step"
BATCH_MODULE = "pipelines.batch.step"
PROCESSING_MODULES = (PREPARE_MODULE, EVALUATE_MODULE, DEPLOY_MODULE, BATCH_MODULE)
# The drift monitor's schedule job (pipelines/aws/monitor.py), on the same image
MONITOR_MODULE = "pipelines.monitor.step"

IMAGE_REQUIREMENTS = "infra/image/requirements.txt"  # in the code bundle (definition/bundle.py)

# ---- container paths (processing)
PROCESSING_ROOT = "/opt/ml/processing"
CODE_DIR = f"{PROCESSING_ROOT}/input/code"
RAW_DIR = f"{PROCESSING_ROOT}/input/raw"
DATASET_OUT_DIR = f"{PROCESSING_ROOT}/output/dataset"
MODEL_IN_DIR = f"{PROCESSING_ROOT}/model"  # holds Train's model.tar.gz (not extracted)
DATASET_IN_DIR = f"{PROCESSING_ROOT}/dataset"
EVALUATION_OUT_DIR = f"{PROCESSING_ROOT}/evaluation"

# ---- container paths (training)
TRAIN_CODE_DIR = "/opt/ml/input/data/code"  # where SageMaker puts ModelTrainer's "code" channel
CHECKPOINT_DIR = "/opt/ml/checkpoints"

# ---- environment variables the definition sets on the training job
ENV_NPROC_PER_NODE = "LEPTON_NPROC_PER_NODE"  # = ProcessesPerNode (0: one per GPU)
ENV_ENTRY_SCRIPT = "LEPTON_ENTRY_SCRIPT"  # training entry script, relative to the code channel

# request/response content types the registered model declares (docs/contracts.md: Endpoint)
CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-npy", "application/json")
RESPONSE_TYPES = ("application/json",)
