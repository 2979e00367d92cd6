"""Local services: `definitions` (SeaweedFS, MLflow), `process` (pid files, logs, health, stop)
and `control` (`up`, `down`, `status`)."""
