"""The pipeline definition built offline and inspected: build, steps, parameters."""
