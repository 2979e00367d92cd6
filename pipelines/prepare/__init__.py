"""Raw images -> a validated, deduplicated, stably split, sharded dataset (docs/contracts.md).

Modules: ``config`` (PrepareConfig and its one argument definition), ``sources`` (listing and
reading folders, ``s3://`` prefixes and JSON Lines manifests), ``decode`` (the worker side),
``split``, ``report``, ``output`` (writing a dataset folder or prefix, manifest last),
``prepare`` (the orchestration) and ``importers`` (bundled datasets and local folders to raw).
"""
