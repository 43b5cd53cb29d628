"""Families, layers, losses, data, eval and the engine outside its backends stay free of distributed
engines and device calls, and the engine names no family (words taken from the registry).

Parallelism is applied from outside (engine/backends/); see docs/design.md, "Layout and boundaries".
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import bigtrain

PACKAGE = Path(bigtrain.__file__).parent
FORBIDDEN_MODULES = ("accelerate", "deepspeed", "torch.distributed")
CUDA_CALL = re.compile(r"\.cuda\s*\(")
# the only package that may import a distributed engine (docs/design.md, "Layout and boundaries")
ENGINE_IMPORTERS = ("engine/backends/",)


def checked_files() -> list[Path]:
    """Every module of bigtrain/ but the backends and the CLI's launcher glue: families, layers,
    losses, data, eval, the run-level config and schedule, the engine outside its backends."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not p.relative_to(PACKAGE).as_posix().startswith(ENGINE_IMPORTERS)]


def _is_forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN_MODULES)


def forbidden_imports(source: str) -> list[str]:
    """Modules from FORBIDDEN_MODULES imported anywhere in `source` (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_forbidden(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from torch import distributed` names the submodule only in the imported names.
            found += [
                name
                for name in (node.module, *(f"{node.module}.{alias.name}" for alias in node.names))
                if _is_forbidden(name)
            ][:1]
    return found


def cuda_calls(source: str) -> list[int]:
    """Line numbers calling `.cuda(`, ignoring comments and strings (docs may mention it)."""
    return [i + 1 for i, line in enumerate(_blank_comments_and_strings(source)) if CUDA_CALL.search(line)]


def _blank_comments_and_strings(source: str) -> list[str]:
    """Source lines with comment and string text replaced by spaces, so line numbers still match."""
    lines = [list(line) for line in source.splitlines()]
    text_tokens = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in text_tokens:
            continue
        (row, col), (end_row, end_col) = tok.start, tok.end
        for r in range(row, end_row + 1):
            line = lines[r - 1]
            stop = end_col if r == end_row else len(line)
            line[col if r == row else 0 : stop] = " " * (stop - (col if r == row else 0))
    return ["".join(line) for line in lines]


def test_checked_files_exist() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in checked_files()}
    assert {"families/__init__.py", "families/gan/recipe.py", "layers/__init__.py", "losses/__init__.py", "data/__init__.py",
            "eval/commands.py", "engine/loop.py", "engine/build.py", "config.py", "schedule.py", "cli.py"} <= names
    assert not any(n.startswith("engine/backends/") for n in names)


def imported_modules(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "eval").glob("*.py")), ids=lambda p: p.name)
def test_eval_imports_nothing_from_the_engine(path: Path) -> None:
    engine = [m for m in imported_modules(path.read_text()) if m == "bigtrain.engine" or m.startswith("bigtrain.engine.")]
    assert not engine, f"{path} imports {engine}"


def family_words() -> set[str]:
    """Names of families, recipes, architectures and recipe sections, from the registry itself
    (so a new family is checked as soon as it is registered), and the classic player names."""
    from bigtrain.families import registry

    return registry().words() | {"G", "D", "G_ema", "pacgan"}


def family_names(source: str, words: set[str] | None = None) -> list[str]:
    """Names and short strings in code (not comments or docstrings) that name a model family or
    its players: the engine must run any recipe without knowing which."""
    words = family_words() if words is None else words
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in words:
            found.append(f"{tok.start[0]}:{tok.string}")
        elif tok.type == tokenize.STRING and tok.string.strip("\'\"") in words:
            found.append(f"{tok.start[0]}:{tok.string}")
    return found


ENGINE_FILES = sorted((PACKAGE / "engine").rglob("*.py"))


def test_the_family_words_come_from_the_registry() -> None:
    words = family_words()
    assert {"gan", "began", "gman", "madgan", "progan", "biggan", "biggan_deep", "cyclegan", "pix2pix", "img2img", "dcgan", "mlp"} <= words
    assert len(ENGINE_FILES) >= 15  # every module under engine/, backends included


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_the_engine_knows_no_model_family(path: Path) -> None:
    words = family_words()
    found = family_names(path.read_text(), words)
    assert not found, f"{path.relative_to(PACKAGE)} names model families or players: {found}"


def test_family_checker_catches_names() -> None:
    assert family_names('x = players["G"]\n') == ['1:"G"']
    assert family_names("trainer.D.net\n") == ["1:D"]
    assert family_names('if cfg.recipe == "progan":\n') == ['1:"progan"']
    assert family_names('raise ConfigError("biggan.ortho_g")\n') == []  # a key, not a family word on its own
    assert not family_names('"""G and D are players"""\nx = 1  # the G step\n')


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_distributed_imports_or_cuda_calls(path: Path) -> None:
    source = path.read_text()
    assert not forbidden_imports(source), f"{path} imports {forbidden_imports(source)}"
    assert not cuda_calls(source), f"{path} calls .cuda( on lines {cuda_calls(source)}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import accelerate",
        "from accelerate import Accelerator",
        "import deepspeed.comm as dist",
        "import torch.distributed as dist",
        "from torch import distributed",
        "from torch import nn, distributed as dist",
        "from torch.distributed import all_reduce",
        "def f():\n    import torch.distributed.elastic\n",
    ],
)
def test_checker_catches_forbidden_imports(snippet: str) -> None:
    assert forbidden_imports(snippet)


def test_checker_allows_ordinary_imports() -> None:
    assert not forbidden_imports("import torch\nfrom torch import nn\nfrom . import distributed\nimport accelerated_thing")


def test_checker_catches_cuda_calls() -> None:
    assert cuda_calls("x = torch.zeros(1)\ny = x.cuda()\n") == [2]
    assert cuda_calls("m.cuda (0)") == [1]
    assert not cuda_calls('"""never call .cuda() here"""\nx = 1  # not .cuda()\ntorch.cuda.is_available()\n')
