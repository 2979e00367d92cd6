"""The pipeline definition: the config and its parameters, one builder per step, offline SDK use.

`config` (PipelineConfig, whose `parameter()` fields declare the pipeline parameters),
`parameters` (everything derived from them), `names` (step names, container paths), `common`
and the builders (`processing`, `training`, `quality`), `bundle` (the code bundle), `offline`
(the SDK without AWS calls) and `build` (`build_definition`).
"""
