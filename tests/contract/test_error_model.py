"""The error model is a contract (proto/authsvc/v1/common.proto, "# Errors"): every ErrorReason
value is documented in the comment of an RPC that answers it and is produced by the service,
and the service produces no reason that the enum does not define.

"Produced" is read from the source: every ErrorInfo is built in one place (authsvc/api/status.py,
from a domain Failure), so the reasons are the string constants that reach Failure's `reason`
argument, directly or through a factory whose parameter is passed on (federation's
`refused(reason, ...)`); a factory that nothing calls does not count as reachable.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from authsvc.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "authsvc"
PROTO = ROOT / "proto/authsvc/v1"
PREFIX = "ERROR_REASON_"
# Values kept in the API that no code path answers today, each with why. The test fails when one
# becomes produced (drop it here) or another value stops being produced (fix or list it).
# ErrorReason values that nothing produces on purpose. NOT_IMPLEMENTED is produced now: the
# PasskeyService answers it while passkeys are not configured (flows/webauthn_rp.py).
RESERVED: set[str] = set()
RPC = re.compile(r"^\s*rpc (\w+)\(")
ERRORS_LIST = re.compile(r"Errors:(.*)", re.S)
REASON_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b[A-Z]{4,}\b")


def defined_reasons() -> set[str]:
    """The ErrorReason values, read from the generated descriptors, without their prefix."""
    names = {value.name for value in common_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values}
    assert all(name.startswith(PREFIX) for name in names), names
    return {name.removeprefix(PREFIX) for name in names} - {"UNSPECIFIED"}


def documented_reasons() -> dict[str, set[str]]:
    """RPC name -> the reasons listed after "Errors:" in the comment just above it."""
    documented: dict[str, set[str]] = {}
    for source in sorted(PROTO.glob("*.proto")):
        comment: list[str] = []
        for line in source.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("//"):
                comment.append(stripped.removeprefix("//"))
                continue
            rpc = RPC.match(line)
            if rpc:
                listed = ERRORS_LIST.search(" ".join(comment))
                assert listed, f"{source.name}: rpc {rpc.group(1)} lists no 'Errors:'"
                documented[rpc.group(1)] = set(REASON_NAME.findall(listed.group(1)))
            comment = []
    return documented


@dataclass
class Producers:
    """Reasons found in the source, each with where it is produced."""

    constants: dict[str, list[str]] = field(default_factory=dict)
    untraced: list[str] = field(default_factory=list)


def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "v1" not in path.relative_to(PACKAGE).parts
    }


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args):
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == name), None)


@functools.cache
def produced_reasons() -> Producers:
    modules = _modules()
    # The innermost function around each call, and every name referenced anywhere.
    enclosing: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    referenced: set[str] = set()

    def visit(node: ast.AST, function: ast.FunctionDef | ast.AsyncFunctionDef | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node
        elif isinstance(node, ast.Call) and function is not None:
            enclosing[id(node)] = function
        elif isinstance(node, ast.Name):
            referenced.add(node.id)
        elif isinstance(node, ast.Attribute):
            referenced.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    for tree in modules.values():
        visit(tree, None)
    calls = [
        (path, node)
        for path, tree in modules.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    ]

    # (function name) -> (position, parameter name) of the argument that becomes a reason.
    sinks: dict[str, tuple[int, str]] = {"Failure": (1, "reason")}
    producers = Producers()
    changed = True
    while changed:
        changed = False
        producers = Producers()
        for path, call in calls:
            callee = _called_name(call)
            if callee not in sinks:
                continue
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            argument = _argument(call, *sinks[callee])
            function = enclosing.get(id(call))
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                # A factory that nothing calls (or references) produces nothing.
                if function is None or function.name in referenced:
                    producers.constants.setdefault(argument.value, []).append(where)
                continue
            params = [a.arg for a in function.args.args] if function else []
            if isinstance(argument, ast.Name) and argument.id in params:
                sink = (params.index(argument.id), argument.id)
                if function is not None and sinks.get(function.name) != sink:
                    sinks[function.name] = sink
                    changed = True
                continue
            producers.untraced.append(f"{where}: {ast.unparse(argument) if argument else '?'}")
    return producers


def test_error_info_is_built_in_one_place() -> None:
    # What makes the source reading sound: no other module builds an ErrorInfo.
    builders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _called_name(node) == "ErrorInfo"
        and path != PACKAGE / "api/status.py"
        and not (path == PACKAGE / "cli.py" and not node.args and not node.keywords)
    ]
    assert builders == [], "ErrorInfo built outside authsvc/api/status.py: " + ", ".join(builders)


def test_every_reason_is_documented_on_an_rpc_and_every_listed_name_is_a_reason() -> None:
    defined = defined_reasons()
    documented = documented_reasons()
    assert len(documented) >= 7  # AuthService and AccountService RPCs were found
    unknown = {rpc: names - defined for rpc, names in documented.items() if names - defined}
    assert unknown == {}, f"RPC comments list reasons that ErrorReason does not define: {unknown}"
    listed = set().union(*documented.values())
    assert sorted(defined - listed) == [], "reasons no RPC comment lists"


def test_every_reason_is_produced_and_nothing_else_is() -> None:
    defined = defined_reasons()
    producers = produced_reasons()
    assert producers.untraced == [], "reasons the source reading cannot follow"
    produced = set(producers.constants)
    undefined = {reason: producers.constants[reason] for reason in produced - defined}
    assert undefined == {}, f"reasons produced that ErrorReason does not define: {undefined}"
    assert sorted(defined - produced) == sorted(RESERVED), "ErrorReason values nothing produces"


def test_the_source_reading_follows_factories() -> None:
    # The federation refusals reach Failure through refused(reason, ...): found through it.
    producers = produced_reasons().constants
    assert any("federation/assertions.py" in where for where in producers["ASSERTION_MALFORMED"])
    assert any("flows/grants.py" in where for where in producers["GRANT_EXPIRED"])
