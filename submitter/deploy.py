"""Publishing the scheduled reconciler's code: `submit deploy reconciler`.

The function (`submitter.reconciler_lambda`, terraform/reconciler.tf) runs from a zip in the
stack's bucket. `publish_reconciler` builds it from this repository and uploads it under
`deploy/reconciler-<version>-<sha256 prefix>.zip`; Terraform takes that key as
`reconciler_package_key` (empty: no function yet, so the stack applies before the package exists).
The key names the content, so every new build is a new key and `terraform apply` replaces the
function's code; publishing the same zip twice writes the same key.

What the zip holds. The light package with all its dependencies does not fit: pandas, scipy,
numpy and matplotlib unpack to about 460 MB, over Lambda's 250 MB limit, and the function needs
none of them. It holds the light package's code (`FUNCTION_PACKAGES`: shared/ and submitter/,
copied from the checkout; pure Python) and only the dependencies the handler imports
(`FUNCTION_REQUIREMENTS`, with the pins of pyproject.toml), as wheels for the function's runtime:
CPython 3.12 on manylinux x86_64, whatever machine builds it (about 21 MB packed, 33 MB
unpacked). boto3 is shipped although the runtime has one: the runtime's may be older than the
1.35.2 the package requires. tests/unit/test_deploy.py imports the handler from such a zip with
nothing else on the path; the slow test in tests/integration/test_reconciler_lambda.py runs it.

The build runs pip into a temporary directory and needs PyPI (or pip's cache). Entries are
sorted and carry one fixed time, so the same checkout and the same resolved wheels give the
same zip, and the same key. `check_package` refuses a zip without the handler, with a heavy
package, or too big to deploy, before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.config import BackendConfig
from shared.errors import BadInputError, FatalError

LAMBDA_PYTHON = "3.12"  # terraform/reconciler.tf: runtime python3.12
LAMBDA_PLATFORM = "manylinux2014_x86_64"  # terraform/reconciler.tf: architectures x86_64
HANDLER_FILE = "submitter/reconciler_lambda.py"  # the handler submitter.reconciler_lambda.handler
KEY_PREFIX = "deploy/"  # workers may not write here (terraform/iam.tf): they cannot plant code
FUNCTION_PACKAGES = ("shared", "submitter")  # the light package's code the handler imports (not worker/)
# The dependencies the handler imports (the rest of the light package's are for people's commands).
FUNCTION_REQUIREMENTS = ("boto3", "botocore", "pydantic", "pydantic-settings")
# Top-level packages the zip must hold to import the handler, and some it must never hold.
REQUIRED_TOP_LEVEL = ("shared", "submitter", "boto3", "botocore", "pydantic", "pydantic_core", "pydantic_settings")
FORBIDDEN_TOP_LEVEL = ("tensorflow", "keras", "pandas", "numpy", "scipy", "matplotlib")
LAMBDA_UNZIPPED_MAX_BYTES = 262_144_000  # Lambda's limit on a function's unpacked code (250 MB)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every entry's time: the same files make the same zip
PIP_TIMEOUT_S = 900.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PackageInfo:
    """A checked function package: its size packed and unpacked, and its top-level names."""

    zip_bytes: int
    unzipped_bytes: int
    top_level: frozenset[str]


def repo_root() -> Path:
    """The source checkout this module runs from (an editable install or the repository)."""
    return Path(__file__).resolve().parents[1]


def function_requirements(pyproject: Path) -> list[str]:
    """`FUNCTION_REQUIREMENTS` with their pins from `pyproject`'s dependencies (one place for the pins).

    Raises:
        FatalError: pyproject.toml does not list one of them.
    """
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    by_name = {_normalized(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]): spec for spec in dependencies}
    missing = [name for name in FUNCTION_REQUIREMENTS if _normalized(name) not in by_name]
    if missing:
        raise FatalError(f"{pyproject} does not list the function's dependencies {missing}")
    return [by_name[_normalized(name)] for name in FUNCTION_REQUIREMENTS]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_version(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])


# --- building ---


def build_package(
    source: Path,
    out_dir: Path,
    python_version: str = LAMBDA_PYTHON,
    platform: str = LAMBDA_PLATFORM,
    progress: Progress | None = None,
) -> Path:
    """Build the function's zip from the repository at `source` into `out_dir`, checked.

    `python_version` and `platform` pick the dependencies' wheels: the Lambda runtime's by default
    (a test may build for the interpreter it runs the zip with).

    Raises:
        BadInputError: `source` is not a checkout of this project (`--source`).
        FatalError: pip failed (its last lines), or the zip fails `check_package`.
    """
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file() or not (source / HANDLER_FILE).is_file():
        raise BadInputError(
            f"{source} is not a spotsweep source checkout (no pyproject.toml or {HANDLER_FILE})", "--source"
        )
    with tempfile.TemporaryDirectory(prefix="spotsweep-lambda-") as work:
        target = Path(work) / "package"
        _say(progress, f"installing {', '.join(FUNCTION_REQUIREMENTS)} for CPython {python_version} on {platform}")
        pip_install(target, function_requirements(pyproject), python_version, platform)
        shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts: nothing runs them there
        copy_packages(source, target)
        zip_path = zip_tree(target, out_dir / f"reconciler-{package_version(pyproject)}.zip")
    info = check_package(zip_path)
    _say(progress, f"built {zip_path.name}: {info.zip_bytes / 1e6:.1f} MB, {info.unzipped_bytes / 1e6:.1f} MB unpacked")
    return zip_path


def copy_packages(source: Path, target: Path) -> None:
    """`FUNCTION_PACKAGES` from the checkout into `target`, without bytecode caches: what
    `pip install --no-deps .` would put there, less worker/ and the build's by-products."""
    for name in FUNCTION_PACKAGES:
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def pip_install(target: Path, requirements: Sequence[str], python_version: str, platform: str) -> None:
    """`pip install --target` of `requirements` and their dependencies, as binary wheels for
    CPython `python_version` on `platform` (no bytecode: the runtime compiles what it imports)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check",
               "--no-compile", "--target", str(target), "--platform", platform, "--implementation", "cp",
               "--python-version", python_version, "--only-binary=:all:"]
    try:
        result = subprocess.run([*command, *requirements], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FatalError(f"pip install {' '.join(requirements)} did not finish in {PIP_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise FatalError(f"pip install {' '.join(requirements)} failed ({result.returncode}): {tail}")


def zip_tree(directory: Path, zip_path: Path) -> Path:
    """Zip every file under `directory` (paths relative to it, sorted, one fixed time, no
    bytecode caches) into `zip_path`: the Lambda code layout, the handler's package at the root."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path.relative_to(directory).as_posix(), date_time=ZIP_TIME)
            entry.external_attr = 0o644 << 16  # readable by the runtime's user; nothing is executed
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return zip_path


def check_package(zip_path: Path) -> PackageInfo:
    """What Lambda needs from the zip: the handler at its path, the packages it imports, nothing
    heavy, and under the unpacked size limit.

    Raises:
        FatalError: naming what is wrong.
    """
    with zipfile.ZipFile(zip_path) as archive:
        entries = archive.infolist()
    names = {entry.filename for entry in entries}
    top_level = frozenset(name.split("/", 1)[0] for name in names if "/" in name)
    unzipped = sum(entry.file_size for entry in entries)
    problems = [f"no {HANDLER_FILE}"] if HANDLER_FILE not in names else []
    problems += [f"no {name}/" for name in REQUIRED_TOP_LEVEL if name not in top_level]
    heavy = [name for name in FORBIDDEN_TOP_LEVEL if name in top_level]
    problems += [f"{name}/ is in it (never imported by the function)" for name in heavy]
    if unzipped > LAMBDA_UNZIPPED_MAX_BYTES:
        problems.append(f"{unzipped / 1e6:.0f} MB unpacked, over Lambda's {LAMBDA_UNZIPPED_MAX_BYTES / 1e6:.0f} MB")
    if problems:
        raise FatalError(f"function package {zip_path.name}: " + "; ".join(problems))
    return PackageInfo(zip_path.stat().st_size, unzipped, top_level)


def package_key(zip_path: Path, version: str) -> str:
    """The zip's key in the bucket: the version and a prefix of its SHA-256 (a new build, a new key)."""
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()[:12]
    return f"{KEY_PREFIX}reconciler-{version}-{digest}.zip"


# --- publishing ---


def publish_reconciler(config: BackendConfig, source: Path | None = None, progress: Progress | None = None) -> str:
    """Build the function's zip from `source` (default: this checkout), upload it to the stack's
    bucket and return its key (for `terraform apply -var reconciler_package_key=KEY`).

    Raises:
        BadInputError: the backend is not aws (`backend`), or `source` is not a checkout.
        FatalError: the build failed; any error of the bucket (missing, refused) as `open_backend`'s.
    """
    if config.backend != "aws":
        raise BadInputError(
            "the scheduled reconciler runs on AWS: set SPOTSWEEP_BACKEND=aws (or --backend aws)", "backend"
        )
    from shared.backends.factory import open_backend

    artifacts = open_backend(config).artifacts  # first: a missing stack fails before a long build
    source = (source or repo_root()).resolve()
    with tempfile.TemporaryDirectory(prefix="spotsweep-deploy-") as out:
        zip_path = build_package(source, Path(out), progress=progress)
        key = package_key(zip_path, package_version(source / "pyproject.toml"))
        artifacts.put_file(zip_path, key)
    _say(progress, f"uploaded {artifacts.uri(key)}")
    return key


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


# --- the worker's wheel: `submit deploy worker` ---
#
# Instances install the worker from this repository's own wheel in the stack's bucket, never from
# a package index by name (a name on PyPI is whoever registered it). The bootstrap
# (terraform/templates/user_data.sh.tftpl) reads `WORKER_POINTER_KEY`, a line "<key> <sha256>",
# downloads that key, checks its digest and installs `spotsweep[worker] @ file://...` into a venv.
# The wheel goes up first and the pointer last, so a booting instance sees the old pair or the new.

WORKER_POINTER_KEY = f"{KEY_PREFIX}worker-wheel.txt"  # terraform/templates/user_data.sh.tftpl reads it
WORKER_WHEEL_FILES = ("worker/__main__.py", "worker/cli.py", "shared/__init__.py", "submitter/cli.py")
WORKER_PACKAGE_FILES = ("pyproject.toml", "README.md", "shared", "submitter", "worker")  # what `pip wheel .` reads


@dataclass(frozen=True)
class PublishedWheel:
    """Where `publish_worker` put the wheel, and the digest the bootstrap checks it against."""

    key: str
    sha256: str
    pointer_key: str = WORKER_POINTER_KEY


def worker_wheel_key(version: str) -> str:
    return f"{KEY_PREFIX}spotsweep-{version}-py3-none-any.whl"


def build_worker_wheel(source: Path, out_dir: Path, progress: Progress | None = None) -> Path:
    """`pip wheel --no-deps` of the checkout at `source` into `out_dir`, checked by `check_worker_wheel`.

    Offline when this Python has setuptools (`--no-build-isolation`: our wheel needs nothing else);
    otherwise pip fetches the build backend from PyPI (or its cache) into an isolated build.

    Raises:
        BadInputError: `source` is not a checkout of this project (`--source`).
        FatalError: pip failed (its last lines), or the wheel fails the check.
    """
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file() or not (source / "worker" / "__main__.py").is_file():
        raise BadInputError(f"{source} is not a spotsweep source checkout (no pyproject.toml or worker/)", "--source")
    version = package_version(pyproject)
    with tempfile.TemporaryDirectory(prefix="spotsweep-wheel-") as work:
        copy = _copy_worker_sources(source, Path(work) / "source")  # setuptools writes build/ beside it
        _say(progress, f"building spotsweep {version} (pip wheel --no-deps)")
        _pip_wheel(copy, out_dir)
    wheel = out_dir / worker_wheel_key(version).removeprefix(KEY_PREFIX)
    check_worker_wheel(wheel)
    return wheel


def _copy_worker_sources(source: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKER_PACKAGE_FILES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, dest / name)
    return dest


def _pip_wheel(source: Path, out_dir: Path) -> None:
    from importlib.util import find_spec

    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--quiet", "--wheel-dir", str(out_dir)]
    if find_spec("setuptools") is not None:
        command.append("--no-build-isolation")
    try:
        result = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FatalError(f"pip wheel did not finish in {PIP_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise FatalError(f"pip wheel of {source} failed ({result.returncode}): {tail}")


def check_worker_wheel(wheel: Path) -> None:
    """The wheel is there, holds the three packages, and declares the worker extra.

    Raises:
        FatalError: naming what is missing.
    """
    if not wheel.is_file():
        raise FatalError(f"pip wheel did not write {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next((archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA")), "")
    problems = [f"no {name}" for name in WORKER_WHEEL_FILES if name not in names]
    if "Provides-Extra: worker" not in metadata:
        problems.append("no worker extra in its METADATA")
    if problems:
        raise FatalError(f"worker wheel {wheel.name}: " + "; ".join(problems))


def publish_worker(config: BackendConfig, source: Path | None = None, progress: Progress | None = None) -> PublishedWheel:
    """Build the wheel from `source` (default: this checkout), upload it to
    `deploy/spotsweep-<version>-py3-none-any.whl` and then the pointer `deploy/worker-wheel.txt`
    ("<key> <sha256>") that new instances install from.

    Raises:
        BadInputError: the backend is not aws (`backend`), or `source` is not a checkout.
        FatalError: the build failed; any error of the bucket (missing, refused) as `open_backend`'s.
    """
    if config.backend != "aws":
        raise BadInputError("workers install from the AWS stack's bucket: set SPOTSWEEP_BACKEND=aws (or --backend aws)", "backend")
    from shared.backends.factory import open_backend

    artifacts = open_backend(config).artifacts  # first: a missing stack fails before the build
    source = (source or repo_root()).resolve()
    with tempfile.TemporaryDirectory(prefix="spotsweep-deploy-") as out:
        wheel = build_worker_wheel(source, Path(out), progress)
        published = PublishedWheel(worker_wheel_key(package_version(source / "pyproject.toml")),
                                   hashlib.sha256(wheel.read_bytes()).hexdigest())
        artifacts.put_file(wheel, published.key)
    artifacts.put_bytes(published.pointer_key, f"{published.key} {published.sha256}\n".encode())
    _say(progress, f"uploaded {artifacts.uri(published.key)} and {artifacts.uri(published.pointer_key)}")
    return published
