"""The rule that no fd borrowed from the dir-fd cache is held across an await, checked on the
package's source: while a request waits, others run, and may close the borrowed fd and reuse
its number (test_unit_copyup shows the wrong origin that gave). Async code takes fds of its
own (`syscalls.open_*`, closed with `OwnedFd`) for anything that crosses an await."""

from __future__ import annotations

import ast
from pathlib import Path

import overlayfuse

# Tree methods whose fds belong to the cache (the caller must not close or keep them).
BORROWING = {"dir_fd", "parent_fd", "xattr_target"}


def _borrows(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr in BORROWING


def _names(target: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(target) if isinstance(node, ast.Name)}


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists inside a compound statement (each branch apart)."""
    blocks = [getattr(stmt, field) for field in ("body", "orelse", "finalbody")
              if isinstance(getattr(stmt, field, None), list)]
    return blocks + [handler.body for handler in getattr(stmt, "handlers", ())]


class _Scan:
    """Walks one async function's statements in order, each branch apart, tracking names
    bound to a borrowed fd (`live`) and those an await has passed since (`stale`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []

    def block(self, stmts: list[ast.stmt], live: set[str], stale: set[str]
              ) -> tuple[set[str], set[str]]:
        for stmt in stmts:
            branches = [] if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else _blocks(stmt)
            if branches:
                inner = {id(node) for branch in branches for s in branch
                         for node in ast.walk(s)}
                header = [node for node in ast.walk(stmt) if id(node) not in inner]
                self.simple(stmt, header, live, stale)
                ends = [self.block(branch, set(live), set(stale)) for branch in branches]
                live = set().union(*(end[0] for end in ends))
                stale = set().union(*(end[1] for end in ends))
            else:
                self.simple(stmt, list(ast.walk(stmt)), live, stale)
        return live, stale

    def simple(self, stmt: ast.stmt, nodes: list[ast.AST], live: set[str],
               stale: set[str]) -> None:
        for node in nodes:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                    and node.id in stale:
                self.problems.append(f"{self.name}:{node.lineno}: {node.id} is used after "
                                     "an await")
            if isinstance(node, ast.Await) and any(
                    _borrows(inner) or isinstance(inner, ast.Name) and inner.id in live
                    for inner in ast.walk(node.value)):
                self.problems.append(f"{self.name}:{node.lineno}: a borrowed fd goes into "
                                     "an awaited call")
        if isinstance(stmt, ast.Assign):
            bound = set().union(*(_names(target) for target in stmt.targets))
            stale -= bound
            if _borrows(stmt.value):
                live |= bound
            else:
                live -= bound
        if any(isinstance(node, ast.Await) for node in nodes):
            stale |= live


def borrowed_across_await(source: str) -> list[str]:
    """Where an async function in `source` uses a borrowed fd after an await that comes
    after the borrowing, or hands one to an awaited call."""
    problems = []
    for func in ast.walk(ast.parse(source)):
        if isinstance(func, ast.AsyncFunctionDef):
            scan = _Scan(func.name)
            scan.block(func.body, set(), set())
            problems += scan.problems
    return problems


def test_no_module_holds_a_borrowed_fd_across_an_await() -> None:
    package = Path(overlayfuse.__file__).parent
    problems = {path.name: found for path in sorted(package.glob("*.py"))
                if (found := borrowed_across_await(path.read_text()))}
    assert problems == {}


def test_the_check_sees_the_copy_up_bug_it_guards_against() -> None:
    # The copy-up as it was: the dir fd taken before the worker-thread copy, used after it.
    before = '''
async def _copy_up_file(self, node):
    src_dir = self.tree.parent_fd(node)
    await trio.to_thread.run_sync(_stage_regular, src, dst)
    self.tree.origins.record((src_dir, node.name), st.st_dev, (dst, None))
'''
    handed_on = '''
async def _copy_up_file(self, node):
    await self._stage_regular_file(self.tree.parent_fd(node), node.name)
'''
    after_the_wait = '''
async def link(self, node, parent, name):
    await self.copy_up.ensure_upper(node)
    source_dir = self.tree.parent_fd(node)
    os.link(node.name, temp, src_dir_fd=source_dir)
'''
    assert borrowed_across_await(before) == ["_copy_up_file:5: src_dir is used after an await"]
    assert borrowed_across_await(handed_on) == [
        "_copy_up_file:3: a borrowed fd goes into an awaited call"]
    assert borrowed_across_await(after_the_wait) == []
