"""The import graph of the packages runs one way (issue 26): no package imports one above it, no circle.

    utility  <-  models, losses, reader, evaluation, data  <-  engine  <-  retrieval  <-  cli  <-  scripts

Imports inside functions count as much as those at the top of a file.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "utility": set(),
    "models": {"utility"},
    "losses": {"utility"},
    "reader": {"utility"},
    "evaluation": {"utility"},
    "data": {"utility"},
    "engine": {"utility", "models", "losses", "reader", "evaluation", "data"},
    "retrieval": {"utility", "models", "losses", "reader", "evaluation", "data", "engine"},
    "cli": {"utility", "models", "losses", "reader", "evaluation", "data", "engine", "retrieval"},
}


def imported_packages(package):
    found = {}
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED and top != package:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_no_package_imports_one_above_it():
    wrong = {package: {other: where for other, where in imported_packages(package).items()
                       if other not in ALLOWED[package]} for package in ALLOWED}
    assert {package: found for package, found in wrong.items() if found} == {}


def test_no_script_adds_to_the_import_path():
    offenders = [str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
                 if ".git" not in path.parts and "sys.path.insert" in path.read_text()
                 and path.name != "test_layers.py"]
    assert offenders == []
