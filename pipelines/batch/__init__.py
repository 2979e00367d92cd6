"""Batch inference: `core` (classify every image under a prefix, resumable), `step` (the
Processing job's entry point), `job` (`lepton batch predict`: the pipeline's Batch step run as
a job of its own, locally or on SageMaker)."""
