"""The package layout's one rule: dependencies point one way.

    stylegan2 <- psp.errors / psp.config / psp.io <- psp.models <- psp.training, psp.inference
    psp.inference <- psp.tuning <- psp.evaluation;  psp.inference <- psp.editing;  all <- psp.cli

Every import (module-level or inside a function) of every module is checked against the table,
and Lightning stays inside psp.training.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = {"psp.errors", "psp.config", "psp.io"}
# package -> the psp packages it may import (besides itself); stylegan2 is importable by all of psp.
ALLOWED = {
    "psp.errors": set(),
    "psp.config": {"psp.errors"},
    "psp.io": {"psp.errors"},
    "psp.models": BASE,
    "psp.training": BASE | {"psp.models"},
    "psp.inference": BASE | {"psp.models"},
    "psp.tuning": BASE | {"psp.models", "psp.inference"},
    "psp.evaluation": BASE | {"psp.models", "psp.inference", "psp.tuning"},
    "psp.editing": BASE | {"psp.models", "psp.inference"},
    "psp.model": {"psp.models"},   # documented import path: ``from psp.model import PSP``
    "psp.nets": {"psp.models"},    # documented import path: ``from psp.nets.arcface import load_arcface``
}
PSP_PACKAGES = set(ALLOWED) | {"psp.cli"}


def _modules(package: str):
    folder = ROOT.joinpath(*package.split("."))
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [p for p in [folder.with_suffix(".py")] if p.exists()]
    for path in files:
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imports(path: Path, module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.split(".")[:-node.level]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def _owner(name: str) -> str | None:
    """The table entry a module name belongs to (``psp.models.nets.fuse`` -> ``psp.models``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in PSP_PACKAGES:
            return ".".join(parts[:n])
    return None


def test_every_psp_module_is_in_the_table():
    top = {p.stem if p.is_file() else p.name for p in (ROOT / "psp").iterdir()
           if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__init__.py"}
    assert {f"psp.{name}" for name in top} <= PSP_PACKAGES, "add the new package to ALLOWED with its layer"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    wrong = []
    for path, module in _modules(package):
        for name in _imports(path, module):
            owner = _owner(name)
            if owner is not None and owner != package and owner not in ALLOWED[package]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_stylegan2_never_imports_psp():
    wrong = [f"{module} imports {name}" for path, module in _modules("stylegan2")
             for name in _imports(path, module) if name == "psp" or name.startswith("psp.")]
    assert not wrong, wrong


def test_lightning_stays_in_training():
    users = {module for package in sorted(PSP_PACKAGES | {"stylegan2"}) if package != "psp.training"
             for path, module in _modules(package)
             if any(n.split(".")[0] in ("pytorch_lightning", "lightning") for n in _imports(path, module))}
    assert not users, f"Lightning imported outside psp.training: {sorted(users)}"


def test_only_the_command_line_sets_the_huge_pages_variable():
    import subprocess
    import sys

    library = ("import os, psp.models, psp.inference.engine, psp.evaluation.evaluate, psp.training.run; "
               "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    cli = "import os, psp.cli.infer; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    outputs = [subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() for code in (library, cli)]
    assert outputs == ["None", "1"]
