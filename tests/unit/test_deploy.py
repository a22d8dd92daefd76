"""The scheduled reconciler's package (submitter.deploy), offline.

The zip's layout and sufficiency are tested without network: a `--target` directory is prepared
as pip would fill it, from this repository's sources and the installed distributions of the
function's requirements (and theirs), zipped with `zip_tree`, checked with `check_package`, and
the handler is imported from the unpacked zip by a fresh interpreter with no site-packages. The
real pip build for the Lambda platform is the slow test in
tests/integration/test_reconciler_lambda.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from shared.errors import BadInputError, FatalError
from submitter import deploy
from submitter.settings import SubmitterSettings

REPO = Path(__file__).resolve().parents[2]

IMPORT_HANDLER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import submitter.reconciler_lambda as handler_module
third_party = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"__main__", "_virtualenv"})
print(json.dumps({"file": handler_module.__file__, "third_party": third_party}))
"""


def copy_distributions(names: list[str], target: Path) -> set[str]:
    """Copy the installed files of `names` and of everything they require (no extras) into
    `target`, as `pip install --target` lays them out (without the console scripts, which the
    build drops too); the distributions copied."""
    copied: set[str] = set()
    pending = list(names)
    while pending:
        dist = metadata.distribution(pending.pop())
        name = dist.metadata["Name"].lower()
        if name in copied:
            continue
        copied.add(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if ".." in file.parts or "__pycache__" in file.parts or not source.is_file():
                continue  # console scripts (../../bin) and bytecode: not in a --target install
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / file)
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return copied


@pytest.fixture(scope="module")
def prepared_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The function's zip from a target directory prepared offline (see the module docstring)."""
    target = tmp_path_factory.mktemp("target")
    deploy.copy_packages(REPO, target)  # as the real build; pip fills in the rest (below, from this venv)
    names = [Requirement(spec).name for spec in deploy.function_requirements(REPO / "pyproject.toml")]
    copy_distributions(names, target)
    return deploy.zip_tree(target, tmp_path_factory.mktemp("out") / "reconciler.zip")


# --- the requirements ---


def test_function_requirements_carry_pyprojects_pins():
    requirements = deploy.function_requirements(REPO / "pyproject.toml")
    assert [Requirement(r).name for r in requirements] == list(deploy.FUNCTION_REQUIREMENTS)
    assert all(Requirement(r).specifier for r in requirements)  # pinned as the package is
    assert "boto3>=1.35.2" in requirements  # S3 conditional writes: not the runtime's older boto3


def test_a_pyproject_without_one_of_them_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\nversion = "1"\ndependencies = ["pydantic>=2"]\n')
    with pytest.raises(FatalError, match="boto3"):
        deploy.function_requirements(pyproject)


# --- the zip ---


def test_zip_has_the_handler_at_the_root_and_no_heavy_package(prepared_zip):
    info = deploy.check_package(prepared_zip)
    with zipfile.ZipFile(prepared_zip) as archive:
        names = archive.namelist()
    assert deploy.HANDLER_FILE in names and "shared/reconcile.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert set(deploy.REQUIRED_TOP_LEVEL) <= info.top_level
    assert not set(deploy.FORBIDDEN_TOP_LEVEL) & info.top_level
    assert info.unzipped_bytes < deploy.LAMBDA_UNZIPPED_MAX_BYTES / 2


def test_the_handler_imports_from_the_unpacked_zip_alone(prepared_zip, tmp_path):
    """Lambda puts the unpacked zip first on the path: its contents must be enough."""
    task = tmp_path / "task"
    with zipfile.ZipFile(prepared_zip) as archive:
        archive.extractall(task)
    run = subprocess.run([sys.executable, "-S", "-c", IMPORT_HANDLER, str(task)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout)
    assert loaded["file"].startswith(str(task))
    assert not set(loaded["third_party"]) & {"pandas", "numpy", "scipy", "matplotlib", "typer", "rich", "tensorflow"}
    assert {"boto3", "botocore", "pydantic", "pydantic_settings"} <= set(loaded["third_party"])


def test_the_same_files_make_the_same_zip_and_key(prepared_zip, tmp_path):
    task = tmp_path / "task"
    with zipfile.ZipFile(prepared_zip) as archive:
        archive.extractall(task)
    again = deploy.zip_tree(task, tmp_path / "again.zip")
    assert again.read_bytes() == prepared_zip.read_bytes()
    key = deploy.package_key(again, "0.1.0")
    assert key == deploy.package_key(prepared_zip, "0.1.0")
    assert key.startswith("deploy/reconciler-0.1.0-") and key.endswith(".zip") and len(key) == len("deploy/reconciler-0.1.0-.zip") + 12


def test_zip_tree_keeps_relative_paths_and_drops_bytecode_caches(tmp_path):
    tree = tmp_path / "tree"
    (tree / "pkg" / "__pycache__").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    (tree / "pkg" / "__pycache__" / "mod.cpython-312.pyc").write_bytes(b"\0")
    with zipfile.ZipFile(deploy.zip_tree(tree, tmp_path / "t.zip")) as archive:
        entries = archive.infolist()
    assert [e.filename for e in entries] == ["pkg/mod.py"]
    assert entries[0].date_time == deploy.ZIP_TIME


def _zip_of(tmp_path: Path, files: dict[str, bytes]) -> Path:
    tree = tmp_path / "tree"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    return deploy.zip_tree(tree, tmp_path / "bad.zip")


def test_a_zip_without_the_handler_or_with_a_heavy_package_is_refused(tmp_path):
    files = {f"{name}/__init__.py": b"" for name in deploy.REQUIRED_TOP_LEVEL}
    files["numpy/__init__.py"] = b""
    with pytest.raises(FatalError) as refused:
        deploy.check_package(_zip_of(tmp_path, files))
    assert f"no {deploy.HANDLER_FILE}" in str(refused.value) and "numpy/ is in it" in str(refused.value)


def test_a_zip_over_lambdas_unpacked_limit_is_refused(tmp_path, monkeypatch):
    files = {f"{name}/__init__.py": b"" for name in deploy.REQUIRED_TOP_LEVEL}
    files[deploy.HANDLER_FILE] = b"\0" * 4096
    monkeypatch.setattr(deploy, "LAMBDA_UNZIPPED_MAX_BYTES", 1000)  # the check, not 250 MB of zeros
    with pytest.raises(FatalError, match="over Lambda's"):
        deploy.check_package(_zip_of(tmp_path, files))


# --- refusals before any build ---


def test_publishing_on_the_local_backend_is_refused(tmp_path):
    with pytest.raises(BadInputError) as refused:
        deploy.publish_reconciler(SubmitterSettings(backend="local", home=tmp_path / "home"))
    assert refused.value.path == "backend"
    assert not (tmp_path / "home").exists()  # nothing opened, nothing written


def test_building_from_a_directory_that_is_no_checkout_is_refused(tmp_path):
    with pytest.raises(BadInputError) as refused:
        deploy.build_package(tmp_path, tmp_path / "out")
    assert refused.value.path == "--source" and not (tmp_path / "out").exists()


def test_the_cli_says_so_in_one_line_with_exit_code_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SPOTSWEEP_BACKEND": "local", "SPOTSWEEP_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "submitter.cli", "deploy", "reconciler"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: backend: the scheduled reconciler runs on AWS: set SPOTSWEEP_BACKEND=aws (or --backend aws)"
    ]
