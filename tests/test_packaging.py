"""Packaging: the wheel and sdist ``python -m build`` makes hold the package, the bundles and nothing else, with the
dependencies setup.cfg states; environment.yml asks for the same packages as ``make install``."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import alz_monai

pytest.importorskip("build", reason="python -m build needs the build package (pip install 'alz-monai[dev]')")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
# What is never recipe: left by runs and caches inside a bundle folder (see .gitignore and MANIFEST.in).
LOCAL_DIRS = {"runs", ".cache", "__pycache__"}
SETUP = configparser.ConfigParser()
SETUP.read(REPO_ROOT / "setup.cfg")


def _lines(section: str, key: str) -> list[str]:
    return [line.strip() for line in SETUP[section][key].strip().splitlines() if line.strip()]


def _bundle_files() -> set[str]:
    return {path.relative_to(BUNDLES).as_posix() for path in BUNDLES.rglob("*")
            if path.is_file() and not LOCAL_DIRS & set(path.relative_to(BUNDLES).parts)}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """sdist, and the wheel built from it (``python -m build``'s default), with this environment's setuptools."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = alz_monai.__version__
    wheel, sdist = out / f"alz_monai-{version}-py3-none-any.whl", out / f"alz_monai-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(path.name for path in out.iterdir())
    return wheel, sdist


def test_wheel_holds_every_module_and_bundle_file_and_nothing_local(dist) -> None:
    wheel, _ = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "alz_monai").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel (add their package to setup.cfg): {modules - names}"
    packaged_bundles = {name.removeprefix("alz_monai/bundles/") for name in names
                        if name.startswith("alz_monai/bundles/")}
    assert packaged_bundles == _bundle_files()
    assert {"ad_resnet3d/configs/train.yaml", "ad_mosa/configs/mosa.yaml"} <= packaged_bundles
    assert not [name for name in names if name.endswith((".pt", ".pth", ".nii.gz", ".onnx"))]
    assert not [name for name in names if not name.startswith(("alz_monai/", "alz_monai-"))], "stray top-level files"


def test_wheel_metadata_states_version_requirements_extras_and_command(dist) -> None:
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as archive:
        info = f"alz_monai-{alz_monai.__version__}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        bundle_metadata = {name: json.loads(archive.read(f"alz_monai/bundles/{name}/configs/metadata.json"))
                           for name in ("ad_resnet3d", "ad_mosa")}
    assert metadata["Name"] == "alz-monai" and metadata["Version"] == alz_monai.__version__
    requirements = [Requirement(text) for text in metadata.get_all("Requires-Dist")]
    unconditional = {str(req) for req in requirements if req.marker is None}
    assert unconditional == {str(Requirement(text)) for text in _lines("options", "install_requires")}
    assert {"onnx", "dev"} <= set(metadata.get_all("Provides-Extra"))
    onnx_extra = {req.name for req in requirements if req.marker and req.marker.evaluate({"extra": "onnx"})}
    assert onnx_extra == {"onnx", "onnxruntime", "onnxscript"}
    assert re.search(r"^alz-monai = alz_monai\.cli:main$", entry_points, re.MULTILINE)
    for name, meta in bundle_metadata.items():
        assert meta["required_packages_version"]["alz-monai"] == alz_monai.__version__, name


def test_sdist_builds_the_wheel_and_holds_sources_tests_and_bundles(dist) -> None:
    _, sdist = dist
    prefix = f"alz_monai-{alz_monai.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {member.name.removeprefix(prefix) for member in archive.getmembers() if member.isfile()}
    expected = {"setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "Makefile", "environment.yml",
                "tests/conftest.py", "tests/test_packaging.py"}
    expected |= {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "alz_monai").rglob("*.py")}
    expected |= {f"bundles/{name}" for name in _bundle_files()}
    assert expected <= names, sorted(expected - names)
    assert not [name for name in names if LOCAL_DIRS & set(name.split("/"))]


def test_environment_yml_asks_for_what_make_install_installs() -> None:
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    conda_python = next(item for item in environment["dependencies"] if isinstance(item, str)
                        and item.startswith("python="))
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    assert "-e ." in pip_section and f"torch=={torch_version}" in pip_section
    stated = {str(Requirement(text)) for text in pip_section if not text.startswith("-e")} - {f"torch=={torch_version}"}

    def expand(texts: list[str]) -> set[str]:
        # a self-reference like alz-monai[onnx] stands for that extra's packages
        requirements = [Requirement(text) for text in texts]
        own = {str(req) for req in requirements if req.name != "alz-monai"}
        return own.union(*(expand(_lines("options.extras_require", extra))
                           for req in requirements if req.name == "alz-monai" for extra in req.extras))

    wanted = {str(Requirement(text)) for text in _lines("options", "install_requires")} | expand(
        _lines("options.extras_require", "dev"))
    torch_requirement = next(Requirement(text) for text in wanted if text.startswith("torch"))
    assert Version(torch_version) in torch_requirement.specifier
    assert stated == wanted - {str(torch_requirement)}
    python = Version(conda_python.removeprefix("python="))
    assert python in Requirement(f"python{SETUP['options']['python_requires']}").specifier
