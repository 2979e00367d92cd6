"""Evaluation helpers of the evaluate step: metrics (numpy only) and plots (matplotlib Agg).

`pipelines/steps/evaluate.py` is the entry point; these modules take arrays and return numbers,
documents or PNG bytes, and read neither files nor the environment.
"""
