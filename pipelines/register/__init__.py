"""The Register step: `registry` (MLflow model versions, aliases, approval), `sagemaker` (model
package groups and packages), `local` (the RegisterModel step as the local runner runs it)."""
