"""No SQL built by string formatting: every statement of the service is SQLAlchemy or a constant with parameters.

A lint over the service's code (not the tests or benchmarks): a call to one of
SQL_CALLS whose statement is an f-string, a `%` or `+` of strings, or a
`.format()` fails here, unless ALLOWED names it with the reason it is safe.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ["receiver", "workers", "store", "emulator", "deploy", "config.py", "wsgi.py", "logs.py"]
SQL_CALLS = {"text", "execute", "executemany", "exec_driver_sql", "executescript", "literal_column", "TextClause"}
ALLOWED = {
    ("store/results.py", "_literal"): "inlines the schema's own status names and ranks, never input",
    ("store/db.py", "set_pragmas"): "a PRAGMA takes no parameter: an integer of the code (the page cache's size)",
    ("store/migrations/versions/0007_day_aggregates.py", "downgrade"): "trigger and function names made of the "
                                                                      "migration's own constants",
    ("store/migrations/versions/0010_label_days.py", "upgrade"): "trigger DDL made of the migration's own constants",
    ("store/migrations/versions/0010_label_days.py", "downgrade"): "trigger and function names made of the "
                                                                   "migrations' own constants",
    ("store/migrations/versions/0013_exact_sqlite_latency.py", "rebuild"): "trigger and table names made of the "
                                                                           "migration's own constants",
    ("store/migrations/versions/0015_label_totals.py", "downgrade"): "trigger and function names made of the "
                                                                     "migration's own constants",
}


def formatted(node: ast.expr) -> bool:
    """True for an f-string with placeholders, `"..." % x`, `"..." + x` or `"...".format(...)`."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return True
    if isinstance(node, ast.IfExp):
        return formatted(node.body) or formatted(node.orelse)
    return False


def formatted_sql(path: Path) -> list[tuple[str, int, str]]:
    """(innermost function, line, call) for each SQL call with a formatted statement in a file."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call) and node.args:
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee in SQL_CALLS and formatted(node.args[0]):
                found.append((function, node.lineno, callee))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(), filename=str(path)), "<module>")
    return found


def service_files() -> list[Path]:
    files = []
    for entry in SERVICE:
        path = ROOT / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else [])
    return files


def test_the_lint_sees_formatted_sql(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def bad(conn, name, table):\n"
        "    conn.execute(sa.text(f'SELECT * FROM t WHERE name = {name}'))\n"
        "    conn.exec_driver_sql('DELETE FROM %s' % table)\n"
        "    conn.execute(text('SELECT ' + name))\n"
        "    conn.execute(sa.text('SELECT {}'.format(name)))\n"
        "def good(conn, name):\n"
        "    conn.execute(sa.text('SELECT * FROM t WHERE name = :name'), {'name': name})\n"
        "    conn.execute(sa.text(f'SELECT 1'))\n"
    )
    assert [(f, line) for f, line, _ in formatted_sql(sample)] == [("bad", 2), ("bad", 3), ("bad", 4), ("bad", 5)]


def test_no_sql_is_built_by_string_formatting():
    files = service_files()
    assert len(files) > 10
    problems = []
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for function, line, callee in formatted_sql(path):
            if (relative, function) not in ALLOWED:
                problems.append(f"{relative}:{line} in {function}(): {callee}() of a formatted string")
    assert not problems, "SQL built by string formatting (use bound parameters or SQLAlchemy):\n" + "\n".join(problems)
