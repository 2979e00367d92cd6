"""The Evaluate step: `step` (entry point), `core` (evaluate one model on one split), `report`
(evaluation.json and sample choice), `plots` (figures), `tracking` (MLflow). Metrics are
`training.metrics`, shared with training's own final evaluation."""
