"""The package list in pyproject.toml covers every package folder (it is explicit because
`service/` installs as `metaiqa.service`), and no top-level `service` package is shipped."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[list[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return cfg["packages"], cfg.get("package-dir", {})


def _package_folders(folder: Path, name: str) -> set[str]:
    return {
        ".".join([name, *init.parent.relative_to(folder).parts])
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_folder_is_declared():
    packages, _ = _declared()
    found = _package_folders(ROOT / "metaiqa", "metaiqa") | _package_folders(ROOT / "service", "metaiqa.service")
    assert sorted(found) == sorted(packages)


def test_service_installs_inside_the_metaiqa_namespace():
    packages, package_dir = _declared()
    assert package_dir == {"metaiqa.service": "service"}
    assert not any(p == "service" or p.startswith("service.") for p in packages)


def test_the_app_imports_from_the_namespace():
    from metaiqa.service.app import create_app

    assert create_app.__module__ == "metaiqa.service.app"
