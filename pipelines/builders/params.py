"""The pipeline's run-time parameters, built from a config's defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pipelines.builders import names as n
from pipelines.config import APPROVAL_STATUSES, PipelineConfig


@dataclass(frozen=True)
class Params:
    """One SDK parameter object per pipeline parameter (typed Any: the SDK is imported lazily)."""

    input_data_uri: Any
    processing_instance_type: Any
    processing_instance_count: Any
    training_instance_type: Any
    training_instance_count: Any
    processes_per_node: Any
    epochs: Any
    per_device_batch_size: Any
    learning_rate: Any
    accuracy_threshold: Any
    minimum_champion_accuracy: Any
    model_approval_status: Any
    model_package_group_name: Any

    def all(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]


def make_parameters(cfg: PipelineConfig) -> Params:
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )

    d = cfg.parameter_defaults()
    return Params(
        input_data_uri=ParameterString(n.INPUT_DATA_URI, d[n.INPUT_DATA_URI]),
        processing_instance_type=ParameterString(
            n.PROCESSING_INSTANCE_TYPE, d[n.PROCESSING_INSTANCE_TYPE]
        ),
        processing_instance_count=ParameterInteger(
            n.PROCESSING_INSTANCE_COUNT, d[n.PROCESSING_INSTANCE_COUNT]
        ),
        training_instance_type=ParameterString(
            n.TRAINING_INSTANCE_TYPE, d[n.TRAINING_INSTANCE_TYPE]
        ),
        training_instance_count=ParameterInteger(
            n.TRAINING_INSTANCE_COUNT, d[n.TRAINING_INSTANCE_COUNT]
        ),
        processes_per_node=ParameterInteger(n.PROCESSES_PER_NODE, d[n.PROCESSES_PER_NODE]),
        epochs=ParameterInteger(n.EPOCHS, d[n.EPOCHS]),
        per_device_batch_size=ParameterInteger(n.PER_DEVICE_BATCH_SIZE, d[n.PER_DEVICE_BATCH_SIZE]),
        learning_rate=ParameterFloat(n.LEARNING_RATE, d[n.LEARNING_RATE]),
        accuracy_threshold=ParameterFloat(n.ACCURACY_THRESHOLD, d[n.ACCURACY_THRESHOLD]),
        minimum_champion_accuracy=ParameterFloat(
            n.MINIMUM_CHAMPION_ACCURACY, d[n.MINIMUM_CHAMPION_ACCURACY]
        ),
        model_approval_status=ParameterString(
            n.MODEL_APPROVAL_STATUS, d[n.MODEL_APPROVAL_STATUS], list(APPROVAL_STATUSES)
        ),
        model_package_group_name=ParameterString(
            n.MODEL_PACKAGE_GROUP_NAME, d[n.MODEL_PACKAGE_GROUP_NAME]
        ),
    )
