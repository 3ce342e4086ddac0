"""The package boundaries, read from the source with `ast` (nothing is imported or run): the model knows
nothing of data, training or serving; the server never loads training code; repo imports sit at the
top of a module, where a reader (and an import-time failure) finds them; the retired modules stay gone."""

import ast
import os
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The repo's own top-level packages and modules: an import naming one of these is an intra-repo import.
PACKAGES = {"configs", "model", "parallel", "tokenization", "data", "training", "serving", "checkpoints", "open_weights",
            "bench"}
SCRIPTS = {"train", "serve"}  # top-level scripts; importing one runs its imports too
REPO = PACKAGES | SCRIPTS
NOT_SOURCE = {"tests", "docs", "build", "runs", "__pycache__"}


def source_files() -> list[Path]:
    """Every non-test Python file of the repo (not the virtual environment, caches or build output)."""
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [s for s in subfolders if not (s.startswith(".") or s in NOT_SOURCE or s.endswith(".egg-info"))]
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    return sorted(files)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The dotted module names an import statement names (`from a import b` names `a` and `a.b`,
    which is a module when a/b.py exists); relative imports resolved against `path`'s package."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names if alias.name != "*"]


def repo_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a repo module anywhere in the file."""
    found = []
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [(node.lineno, name) for name in imported(node, path) if name.split(".")[0] in REPO]
    return found


def file_of(module: str) -> Path | None:
    """The source file that defines `module`, or None when it names something that is not a module."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def files_loaded_by(module: str) -> list[Path]:
    """Importing a.b.c runs a/__init__.py, a/b/__init__.py and a/b/c.py."""
    parts = module.split(".")
    return [f for f in (file_of(".".join(parts[: i + 1])) for i in range(len(parts))) if f is not None]


def import_closure(start: Path) -> dict[Path, list[Path]]:
    """Every repo file `start` loads, directly or through other repo files, with one import chain to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        path = todo.pop()
        for _, module in repo_imports(path):
            for loaded in files_loaded_by(module):
                if loaded not in chains:
                    chains[loaded] = chains[path] + [loaded]
                    todo.append(loaded)
    return chains


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_repo_packages_this_file_guards_are_the_ones_on_disk():
    """A new top-level package or script must be named here, or the checks below would not see it."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {p.stem for p in ROOT.glob("*.py")}
    assert on_disk - {"tests"} == REPO
    assert len(source_files()) > 50 and all(p.name != "conftest.py" for p in source_files())


def test_the_model_imports_nothing_from_data_training_serving_tokenization_or_checkpoints():
    forbidden = {"data", "training", "serving", "tokenization", "checkpoints"}
    model_files = sorted((ROOT / "model").glob("**/*.py"))
    assert model_files
    offences = [f"{relative(path)}:{line} imports {module}"
                for path in model_files for line, module in repo_imports(path) if module.split(".")[0] in forbidden]
    assert not offences, "\n".join(offences)


def test_serving_never_loads_training_code_directly_or_through_other_modules():
    chains = import_closure(ROOT / "serve.py")
    assert ROOT / "serving" / "server.py" in chains  # the closure does follow the server's imports
    offences = [" -> ".join(relative(p) for p in chain) for path, chain in chains.items()
                if path.relative_to(ROOT).parts[0] in ("training", "train.py")]
    assert not offences, "serve.py loads training code:\n" + "\n".join(offences)


def function_local_repo_imports(path: Path) -> list[str]:
    found = []
    for function in ast.walk(tree(path)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    if any(m.split(".")[0] in REPO for m in imported(node, path)):
                        found.append((node.lineno, f"{relative(path)}:{node.lineno} in {function.name}(): {ast.unparse(node)}"))
    return [offence for _, offence in sorted(set(found))]  # a nested function's imports are its parent's too


def test_repo_modules_are_imported_at_the_top_of_a_module_never_inside_a_function():
    offences = [offence for path in source_files() for offence in function_local_repo_imports(path)]
    assert not offences, "function-local imports of repo modules:\n" + "\n".join(offences)


def test_the_tests_import_repo_modules_at_the_top_too():
    tests = sorted((ROOT / "tests").glob("*.py"))
    offences = [offence for path in tests for offence in function_local_repo_imports(path)]
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("retired", ["model/generate.py", "model/int8.py", "model/output_major.py"])
def test_retired_decode_modules_stay_gone(retired):
    """One decode path (the serving engine) over one weight interface (model/weights.py, float and
    int8) and one named layer layout: a second generate loop, int8 module or output-major layout
    coming back under its old name would mean two paths again."""
    assert not (ROOT / retired).exists()
