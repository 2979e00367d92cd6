"""Pieces of the pipeline definition: names, parameters, one builder per step, offline SDK use."""
