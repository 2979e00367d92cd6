"""Local services: `definitions` (SeaweedFS, MLflow), `seaweedfs_security` (SeaweedFS's
internal JWT keys and gRPC certificates), `process` (pid files, logs, health, stop, the
services lock) and `control` (`up`, `down`, `status`)."""
