"""The code's shape, checked as the project asks for it: no function in `batch_assets/` over
80 lines, counted from its `def` (or its first decorator) to its last line, docstring and
nested definitions included."""

from __future__ import annotations

import ast
from pathlib import Path

import batch_assets

LONGEST = 80


def function_lengths(root: Path) -> list[tuple[str, int]]:
    """Every function and method under `root` as `path:line name` and its length in lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                found.append((where, node.end_lineno - first + 1))
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    lengths = function_lengths(Path(batch_assets.__file__).parent)
    assert len(lengths) > 100  # the walk found the package
    too_long = [f"{where}: {n} lines" for where, n in lengths if n > LONGEST]
    assert not too_long, "\n".join(too_long)


def test_the_count_includes_decorators_docstrings_and_nested_functions(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "@decorator\n"
        "def outer():\n"
        '    """doc\n'
        '    more"""\n'
        "    def inner():\n"
        "        return 1\n"
        "    return inner\n"
    )
    assert dict(function_lengths(package)) == {"pkg/m.py:2 outer": 7, "pkg/m.py:5 inner": 2}
