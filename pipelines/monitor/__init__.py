"""Drift monitoring: `prediction_stats` (what a baseline holds, how a window is compared), `source`
(captured traffic of a time window), `core` (the check and its report), `plots`, `step` (the
Processing job, SageMaker Model Monitor's bring-your-own-container contract)."""
