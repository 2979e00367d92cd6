"""Execute a SageMaker pipeline definition (JSON) natively on this machine.

Steps run one at a time in dependency order. Processing and Training steps run as local
processes (`jobs.py`); Condition and Fail steps are evaluated here; RegisterModel registers the
model in the MLflow registry. State is saved after every step change, so `resume` re-runs only
what did not finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.imports import fingerprint
from pipelines.register.local import register_step
from pipelines.runner import jobs, transfer
from pipelines.runner.cache import StepCache
from pipelines.runner.expressions import Context, evaluate_condition, references, resolve
from pipelines.runner.state import TERMINAL_OK, Execution, StepRecord
from pipelines.settings import Settings
from pipelines.storage import s3_client

Printer = Callable[[str], None]
CACHEABLE = {"Processing", "Training"}
SPOT_RESTARTS = 3  # interruptions a managed-spot training job survives locally


class PipelineFailed(RuntimeError):
    """The execution ended in Failed; the message is the failing step's reason."""


@dataclass(frozen=True)
class StepSpec:
    name: str
    type: str
    body: dict[str, Any]  # the step as it stands in the definition
    depends_on: frozenset[str]
    branch: tuple[str, bool] | None  # (condition step, branch taken when outcome is this)


def flatten_steps(definition: Mapping[str, Any]) -> dict[str, StepSpec]:
    """Every step, including those nested in Condition branches, with its dependencies."""
    specs: dict[str, StepSpec] = {}

    def visit(step: dict[str, Any], branch: tuple[str, bool] | None) -> None:
        args = step.get("Arguments", {})
        if step["Type"] == "Condition":  # its branches are steps of their own, not inputs
            args = {k: v for k, v in args.items() if k not in ("IfSteps", "ElseSteps")}
        deps = set(step.get("DependsOn", [])) | references(args)
        deps |= references(step.get("PropertyFiles", []))
        if branch is not None:
            deps.add(branch[0])
        nested = []
        if step["Type"] == "Condition":
            branches = step.get("Arguments", {})
            nested = [(s, (step["Name"], True)) for s in branches.get("IfSteps", [])]
            nested += [(s, (step["Name"], False)) for s in branches.get("ElseSteps", [])]
        deps.discard(step["Name"])
        specs[step["Name"]] = StepSpec(step["Name"], step["Type"], step, frozenset(deps), branch)
        for child, child_branch in nested:
            visit(child, child_branch)

    for step in definition["Steps"]:
        visit(step, None)
    return specs


def topological_order(specs: Mapping[str, StepSpec]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"dependency cycle: {' -> '.join((*trail, name))}")
        if name not in specs:
            raise ValueError(f"step {trail[-1]!r} depends on unknown step {name!r}")
        state[name] = 1
        for dep in sorted(specs[name].depends_on):
            visit(dep, (*trail, name))
        state[name] = 2
        order.append(name)

    for name in specs:  # definition order breaks ties
        visit(name, ())
    return order


def parameter_values(definition: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    casts: dict[str, Callable[[Any], Any]] = {
        "Integer": int,
        "Float": float,
        "String": str,
        "Boolean": lambda v: v if isinstance(v, bool) else str(v).lower() == "true",
    }
    declared = {p["Name"]: p for p in definition.get("Parameters", [])}
    unknown = set(overrides) - set(declared)
    if unknown:
        raise ValueError(
            f"unknown pipeline parameter(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(declared))}"
        )
    values = {}
    for name, spec in declared.items():
        raw = overrides.get(name, spec.get("DefaultValue"))
        if raw is None:
            raise ValueError(f"pipeline parameter {name} has no default and no value was given")
        values[name] = casts.get(spec.get("Type", "String"), str)(raw)
    return values


def uses_tracking(spec: StepSpec) -> bool:
    """Whether a step may talk to MLflow: a job only when its definition gives it
    MLFLOW_TRACKING_URI (pipelines/definition/common.processor), every other kind but a
    Condition or Fail (Register writes the registry)."""
    if spec.type in CACHEABLE:
        return "MLFLOW_TRACKING_URI" in spec.body.get("Arguments", {}).get("Environment", {})
    return spec.type not in ("Condition", "Fail")


class LocalRunner:
    def __init__(
        self,
        settings: Settings,
        definition: Mapping[str, Any],
        execution: Execution,
        python: Path,
        out: Printer = print,
        use_cache: bool = True,
        tracking_ready: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        # waits for the MLflow server (started in the background); called before each step
        # that tracks (uses_tracking), so the steps before it need not wait for it
        self.tracking_ready = tracking_ready
        self.python = python  # the step environment (the container image's Python)
        self.definition = definition
        self.execution = execution
        self.out = out
        self.use_cache = use_cache
        self.specs = flatten_steps(definition)
        self.order = topological_order(self.specs)
        self.cache = StepCache(settings.state_dir, execution.pipeline_name)
        self.s3 = s3_client(settings)
        self.t0 = time.monotonic()
        for name in self.order:
            execution.steps.setdefault(name, StepRecord(name, self.specs[name].type))

    # -- output -------------------------------------------------------------------------------
    def echo(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.t0:7.1f}s] {message}")

    def context(self) -> Context:
        steps = self.execution.steps
        return Context(
            parameters=self.execution.parameters,
            execution={
                "PipelineExecutionId": self.execution.id,
                "PipelineExecutionArn": f"local:pipeline/{self.execution.pipeline_name}"
                f"/execution/{self.execution.id}",
                "PipelineName": self.execution.pipeline_name,
                "StartDateTime": self.execution.created,
            },
            step_properties={n: r.properties for n, r in steps.items() if r.properties},
            property_files={n: r.property_files for n, r in steps.items() if r.property_files},
        )

    def job_env(self) -> jobs.JobEnv:
        """One step's: its inputs listed once, for its cache key and every instance."""
        env = jobs.job_environment(self.settings, self.execution.id)
        listings = transfer.Listings(self.s3)
        return jobs.JobEnv(
            env=env, s3=self.s3, echo=self.echo, python=self.python, listings=listings
        )

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Execution:
        ex = self.execution
        ex.status, ex.failure, ex.ended = "Executing", None, None
        ex.save()
        try:
            for name in self.order:
                record = ex.steps[name]
                if record.status in TERMINAL_OK:
                    if record.status != "Skipped":
                        self.echo(f"{name}: already {record.status.lower()} (resume)")
                    continue
                skip_reason = self.skip_reason(self.specs[name])
                if skip_reason:
                    record.status, record.message = "Skipped", skip_reason
                    ex.save()
                    continue
                self.run_step(self.specs[name], record)
                if record.status == "Failed":
                    raise PipelineFailed(f"{name}: {record.message}")
            ex.status = "Succeeded"
        except PipelineFailed as exc:
            ex.status, ex.failure = "Failed", str(exc)
        except KeyboardInterrupt:
            ex.status, ex.failure = "Stopped", "interrupted"
            for rec in ex.steps.values():
                if rec.status == "Executing":
                    rec.status, rec.message = "Failed", "interrupted"
            raise
        finally:
            ex.ended = time.time()
            ex.save()
        return ex

    def skip_reason(self, spec: StepSpec) -> str | None:
        steps = self.execution.steps
        if spec.branch is not None:
            cond_name, wanted = spec.branch
            outcome = steps[cond_name].properties.get("Outcome")
            if outcome is not wanted:
                return f"condition {cond_name} was {outcome}"
        for dep in spec.depends_on:
            if steps[dep].status == "Skipped":
                return f"depends on skipped step {dep}"
        return None

    def run_step(self, spec: StepSpec, record: StepRecord) -> None:
        ex = self.execution
        record.status, record.started, record.ended, record.message = (
            "Executing",
            time.time(),
            None,
            None,
        )
        record.attempts += 1
        ex.save()
        self.echo(f"{spec.name} ({spec.type}): started")
        try:
            if self.tracking_ready is not None and uses_tracking(spec):
                self.tracking_ready()
            # A Condition resolves its own conditions; its branches are steps not yet run.
            args = (
                {}
                if spec.type == "Condition"
                else resolve(spec.body.get("Arguments", {}), self.context())
            )
            if spec.type in CACHEABLE:
                self.run_cacheable(spec, record, args)
            elif spec.type == "Condition":
                self.run_condition(spec, record)
            elif spec.type == "Fail":
                record.message = str(args.get("ErrorMessage", "FailStep reached"))
                record.status, record.ended = "Failed", time.time()
                ex.save()
                self.echo(f"{spec.name}: {record.message}")
                return
            elif spec.type == "RegisterModel":
                record.properties = register_step(
                    self.settings, args, self.context(), self.execution, self.s3, self.echo
                )
            elif spec.type == "CreateModel":
                record.properties = {**args, "ModelName": f"{spec.name}-{ex.id}"}
            else:
                raise NotImplementedError(f"step type {spec.type} is not supported locally")
        except Exception as exc:  # a failed step fails the execution with its reason
            record.status, record.ended, record.message = "Failed", time.time(), str(exc)
            ex.save()
            self.echo(f"{spec.name}: FAILED: {exc}")
            return
        if record.status == "Executing":
            record.status = "Succeeded"
        record.ended = time.time()
        ex.save()
        self.echo(f"{spec.name}: {record.status.lower()} in {record.seconds:.1f}s")

    def run_cacheable(self, spec: StepSpec, record: StepRecord, args: dict[str, Any]) -> None:
        cache_on = self.use_cache and spec.body.get("CacheConfig", {}).get("Enabled", False)
        key = components = None
        job = self.job_env()
        if cache_on:
            key, components = self.cache_key(spec, args, job.listings)
            entry, note = self.cache.lookup(spec.name, key, components)
            if entry is not None and self.outputs_exist(entry["properties"], spec.type):
                record.properties, record.property_files = (
                    entry["properties"],
                    entry["property_files"],
                )
                record.status, record.cache_key, record.cache_note = "Cached", key, note
                self.echo(f"{spec.name}: {note}")
                return
            if entry is not None:
                self.cache.forget(spec.name, key)
                note = "cache miss: cached outputs are gone"
            record.cache_note = note
            self.echo(f"{spec.name}: {note}")
        work = self.execution.step_dir(spec.name)
        if spec.type == "Processing":
            record.properties = jobs.run_processing(spec.name, args, work, job)
            record.property_files = self.read_property_files(spec, args, work)
        else:
            record.properties = self.run_training(spec, args, work, job)
        if cache_on and key is not None and components is not None:
            record.cache_key = key
            self.cache.store(
                spec.name,
                key,
                components,
                self.execution.id,
                record.properties,
                record.property_files,
            )

    def run_training(
        self, spec: StepSpec, args: dict[str, Any], work: Path, job: jobs.JobEnv
    ) -> dict[str, Any]:
        """A training job; with managed spot, an interrupted job restarts (as SageMaker restarts
        it) and resumes from the checkpoints that reached S3. Other failures are the job's own:
        SageMaker's retry policies retry only service, throttling and capacity errors, which a
        local run does not have, so nothing else is retried here."""
        restarts = SPOT_RESTARTS if args.get("EnableManagedSpotTraining") else 0
        attempt = 0
        while True:
            try:
                return jobs.run_training(spec.name, args, work, job)
            except jobs.JobFailed as exc:
                attempt += 1
                if not exc.interrupted or attempt > restarts:
                    raise
                self.echo(f"{spec.name}: interrupted (spot); restarting from its checkpoints")

    def cache_key(
        self, spec: StepSpec, args: dict[str, Any], listings: transfer.Listings | None = None
    ) -> tuple[str, dict[str, Any]]:
        if spec.type == "Processing":
            entry = jobs.processing_entry(args)[0]
            inputs = {
                i["InputName"]: transfer.fingerprint(self.s3, i["S3Input"]["S3Uri"], listings)
                for i in args.get("ProcessingInputs", [])
                if "S3Input" in i
                and not i["S3Input"]["LocalPath"].rstrip("/").endswith("/input/code")
            }
            # The code bundle's URI names a hash of all project code; the step's own code is
            # fingerprinted above, so an unrelated change must not invalidate this step.
            stable = {k: v for k, v in args.items() if k != "ProcessingOutputConfig"}
            stable["ProcessingInputs"] = [
                i
                for i in args.get("ProcessingInputs", [])
                if not i.get("S3Input", {}).get("LocalPath", "").rstrip("/").endswith("/input/code")
            ]
        else:
            entry = jobs.training_entry(args)
            inputs = {
                c["ChannelName"]: transfer.fingerprint(
                    self.s3, c["DataSource"]["S3DataSource"]["S3Uri"], listings
                )
                for c in args.get("InputDataConfig", [])
                if c["ChannelName"] not in jobs.SDK_CHANNELS
            }
            stable = {
                k: v
                for k, v in args.items()
                if k not in ("OutputDataConfig", "CheckpointConfig", "InputDataConfig")
            }
        return self.cache.key(fingerprint(entry), inputs, stable)

    def outputs_exist(self, properties: dict[str, Any], step_type: str) -> bool:
        if step_type == "Training":
            return transfer.exists(self.s3, properties["ModelArtifacts"]["S3ModelArtifacts"])
        outs = properties.get("ProcessingOutputConfig", {}).get("Outputs", [])
        return all(transfer.exists(self.s3, o["S3Output"]["S3Uri"]) for o in outs)

    def read_property_files(
        self, spec: StepSpec, args: dict[str, Any], work: Any
    ) -> dict[str, Any]:
        files = {}
        for pf in spec.body.get("PropertyFiles", []):
            folder = jobs.output_folder(args, work, pf["OutputName"])
            path = folder / pf["FilePath"]
            if not path.exists():
                raise FileNotFoundError(f"property file {pf['PropertyFileName']}: {path} missing")
            files[pf["PropertyFileName"]] = json.loads(path.read_text())
        return files

    def run_condition(self, spec: StepSpec, record: StepRecord) -> None:
        ctx = self.context()
        results = [evaluate_condition(c, ctx) for c in spec.body["Arguments"]["Conditions"]]
        outcome = all(ok for ok, _ in results)
        reasons = [reason for _, reason in results]
        record.properties = {"Outcome": outcome, "Reasons": reasons}
        record.message = ("passed: " if outcome else "failed: ") + "; ".join(reasons)
        report = {
            "step": spec.name,
            "passed": outcome,
            "reasons": reasons,
            "execution_id": self.execution.id,
        }
        (self.execution.step_dir(spec.name) / "gate_report.json").write_text(
            json.dumps(report, indent=2)
        )
        self.echo(f"{spec.name}: {record.message}")
