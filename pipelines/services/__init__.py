"""Local services: `definitions` (SeaweedFS, MLflow), `seaweedfs_security` (SeaweedFS's
internal JWT keys and gRPC certificates), `netns` (a service in its own network namespace,
one port forwarded), `process` (pid files, logs, health, stop, the
services lock) and `control` (`up`, `down`, `status`)."""
