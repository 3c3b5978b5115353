"""The layering rule of CONTRIBUTING.md, enforced: a module imports only from its own layer or below.

Every import statement in every module of ``vidclip/`` is read from the source (including imports inside functions),
so a lazy import that reaches upwards fails here too. ``vidclip/__init__.py`` is the public facade and may re-export
from any layer.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import vidclip

ROOT = Path(vidclip.__file__).parent

# Lowest first. A module's layer is the first entry that is a prefix of its dotted name (below "vidclip.").
LAYERS: list[tuple[str, ...]] = [
    ("errors", "registry", "features", "constants", "tokenizer", "distributed", "io", "resources", "identity"),
    ("config",),
    ("data",),
    ("ops",),
    ("heads",),
    ("models",),
    ("losses", "metrics", "postprocess", "objective"),
    ("engine",),
    ("cli",),
]
# Extra rules on top of the order above.
FORBIDDEN = {"data": ("models", "heads", "ops"), "config": ("heads", "models", "data")}


def layer_of(module: str) -> int:
    parts = module.split(".")[1:]
    if not parts:
        return len(LAYERS)  # the package facade
    for level, names in enumerate(LAYERS):
        if parts[0] in names:
            return level
    raise AssertionError(f"module {module} is in no layer of tests/test_layering.py: add it to LAYERS and to "
                         "CONTRIBUTING.md")


def all_modules() -> list[str]:
    names = ["vidclip"]
    for info in pkgutil.walk_packages([str(ROOT)], prefix="vidclip."):
        names.append(info.name)
    return sorted(names)


def module_file(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    package_init = ROOT / rel / "__init__.py"
    return package_init if package_init.is_file() else (ROOT / rel).with_suffix(".py")


def imported_modules(module: str) -> set[str]:
    """Absolute names of every vidclip module imported anywhere in ``module``'s source."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vidclip"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vidclip"):
                found.add(target)
    return found


MODULES = all_modules()


def test_every_module_imports():
    for module in MODULES:
        if not module.endswith("__main__"):  # running it would start the CLI
            importlib.import_module(module)


@pytest.mark.parametrize("module", [m for m in MODULES if m != "vidclip"])
def test_imports_only_from_own_layer_or_below(module):
    own = layer_of(module)
    top = module.split(".")[1]
    for target in sorted(imported_modules(module)):
        if target == "vidclip":
            raise AssertionError(f"{module} imports the package facade 'vidclip'; import the defining module")
        assert layer_of(target) <= own, (f"{module} (layer {LAYERS[own]}) imports {target} "
                                         f"(layer {LAYERS[layer_of(target)]}), a layer above its own")
        forbidden = FORBIDDEN.get(top, ())
        assert target.split(".")[1] not in forbidden, f"{module} must not import {target} (CONTRIBUTING.md)"


def test_no_argparse_or_print_outside_cli():
    offenders = []
    for module in MODULES:
        if module.startswith("vidclip.cli"):
            continue
        path = module_file(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    offenders.append(f"{path}: imports argparse")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path}:{node.lineno}: print()")
    assert not offenders, "argparse/print belong in vidclip/cli/ only:\n" + "\n".join(offenders)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a models module that imports the engine is reported."""
    assert layer_of("vidclip.engine.train") > layer_of("vidclip.models.factory")
    assert layer_of("vidclip.ops.similarity") < layer_of("vidclip.heads.base")
    assert imported_modules("vidclip.objective") >= {"vidclip.losses", "vidclip.features"}
