"""The Deploy step: `step` (entry point), `local` (the local endpoint), `sagemaker` (a real-time
SageMaker endpoint), `messages` (what it says when it does not deploy)."""
