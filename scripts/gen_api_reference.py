#!/usr/bin/env python3
"""Generate docs/api.md, the reference of authsvc's API, from the comments of proto/.

    scripts/gen_api_reference.py            rewrite docs/api.md (make proto)
    scripts/gen_api_reference.py --check    fail with a unified diff if docs/api.md drifted
                                            from proto/ (make proto-check)

The comments are the documentation (buf lint COMMENTS requires one on every element), so the
reference is rendered from them and never written by hand. grpc_tools.protoc (pinned in
requirements-dev.txt) compiles proto/ into descriptors with their source comments; the output
only depends on them, so it is deterministic.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "docs" / "api.md"

# Field numbers of descriptor.proto, the steps of a SourceCodeInfo.Location path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE, SERVICE_METHOD = 2, 2

Label = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in Label.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def descriptors() -> descriptor_pb2.FileDescriptorSet:
    """proto/'s files compiled with their comments (no imports)."""
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    with tempfile.TemporaryDirectory(prefix="authsvc-api-") as tmp:
        out = Path(tmp) / "api.binpb"
        done = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *sources,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"protoc failed:\n{done.stderr}{done.stdout}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class Comments:
    """The leading comment of each element of one file, by its descriptor path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path = {
            tuple(location.path): location.leading_comments
            for location in file.source_code_info.location
            if location.leading_comments
        }

    def block(self, *path: int) -> str:
        """The comment as Markdown paragraphs (the comment's own line breaks kept)."""
        lines = [line.removeprefix(" ") for line in self._by_path.get(path, "").splitlines()]
        return "\n".join(lines).strip()

    def cell(self, *path: int) -> str:
        """The comment on one line, for a table cell."""
        text = " ".join(line.strip() for line in self.block(*path).splitlines() if line.strip())
        return text.replace("|", "\\|")


def short(type_name: str, package: str) -> str:
    """A type's name relative to the package; well-known types keep their full name."""
    name = type_name.lstrip(".")
    return name.removeprefix(package + ".")


def field_type(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    """The field's type; the package's own messages and enums link to their section."""
    if field.type in SCALARS:
        base = SCALARS[field.type]
    elif field.type_name.startswith(f".{package}."):
        base = f"[{short(field.type_name, package)}](#{anchor(field)})"
    else:
        base = f"`{field.type_name.lstrip('.')}`"
    if field.label == Label.LABEL_REPEATED:
        return f"repeated {base}"
    if field.proto3_optional:
        return f"optional {base}"
    return base


def anchor(field: descriptor_pb2.FieldDescriptorProto) -> str:
    """The heading anchor of a message or enum type (GitHub's: lower case, dots dropped)."""
    return field.type_name.lstrip(".").split(".")[-1].lower()


def render_message(
    out: list[str],
    message: descriptor_pb2.DescriptorProto,
    comments: Comments,
    path: tuple[int, ...],
    package: str,
    prefix: str = "",
) -> None:
    name = f"{prefix}{message.name}"
    out += [f"### {name}", ""]
    if text := comments.block(*path):
        out += [text, ""]
    if message.field:
        out += ["| field | number | type | description |", "|---|---|---|---|"]
        for index, field in enumerate(message.field):
            description = comments.cell(*path, MESSAGE_FIELD, index)
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = message.oneof_decl[field.oneof_index].name
                description = f"One of `{oneof}`. {description}"
            kind = field_type(field, package)
            out.append(f"| `{field.name}` | {field.number} | {kind} | {description} |")
        out.append("")
    for index, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            nested_path = (*path, MESSAGE_NESTED, index)
            render_message(out, nested, comments, nested_path, package, f"{name}.")
    for index, enum in enumerate(message.enum_type):
        render_enum(out, enum, comments, (*path, MESSAGE_ENUM, index), f"{name}.")


def render_enum(
    out: list[str],
    enum: descriptor_pb2.EnumDescriptorProto,
    comments: Comments,
    path: tuple[int, ...],
    prefix: str = "",
) -> None:
    out += [f"### {prefix}{enum.name}", ""]
    if text := comments.block(*path):
        out += [text, ""]
    out += ["| value | number | description |", "|---|---|---|"]
    for index, value in enumerate(enum.value):
        description = comments.cell(*path, ENUM_VALUE, index)
        out.append(f"| `{value.name}` | {value.number} | {description} |")
    out.append("")


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    ours = sorted(files.file, key=lambda f: f.name)
    package = ours[0].package
    out = [
        f"# API reference: {package}",
        "",
        "Generated by `scripts/gen_api_reference.py` from the comments of `proto/` (`make proto`);"
        " do not edit: `make test` fails when this file drifts from the protos.",
        "",
    ]
    for file in ours:
        comments = Comments(file)
        out += [f"## {file.name}", ""]
        # The comment above `syntax` introduces the file; its "# Section" lines become headings
        # below the file's own.
        if intro := comments.block(FILE_SYNTAX):
            lines = [f"##{line}" if line.startswith("# ") else line for line in intro.splitlines()]
            out += ["\n".join(lines), ""]
        for index, service in enumerate(file.service):
            out += [f"### service {service.name}", ""]
            if text := comments.block(FILE_SERVICE, index):
                out += [text, ""]
            for number, method in enumerate(service.method):
                request = short(method.input_type, package)
                response = short(method.output_type, package)
                out += [
                    f"#### {service.name}.{method.name}",
                    "",
                    f"`rpc {method.name}({request}) returns ({response})`",
                    "",
                ]
                if text := comments.block(FILE_SERVICE, index, SERVICE_METHOD, number):
                    out += [text, ""]
        for index, message in enumerate(file.message_type):
            render_message(out, message, comments, (FILE_MESSAGE, index), package)
        for index, enum in enumerate(file.enum_type):
            render_enum(out, enum, comments, (FILE_ENUM, index))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render docs/api.md from proto/'s comments.")
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff on drift")
    args = parser.parse_args(argv)
    fresh = render(descriptors())
    if not args.check:
        OUTPUT.write_text(fresh, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
        return 0
    committed = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if committed == fresh:
        print(f"{OUTPUT.relative_to(ROOT)} up to date")
        return 0
    print(
        f"error: {OUTPUT.relative_to(ROOT)} drifted from proto/; run `make proto` and commit it.",
        file=sys.stderr,
    )
    sys.stderr.writelines(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            "a/docs/api.md",
            "b/docs/api.md",
        )
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
