"""No function in the package is over 100 lines (the project's reading standard): a long one
is split by what it does."""

import ast
from pathlib import Path

import gatezoo

LIMIT = 100


def test_no_function_is_over_100_lines():
    root = Path(gatezoo.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert not long, "functions over 100 lines: " + "; ".join(long)
