#!/usr/bin/env python3
"""A protoc plugin that runs grpcio-tools' Python generators, so that `buf generate` makes the
same Python stubs as `make proto` (buf.gen.yaml; python and grpc_python are built into protoc,
which grpcio-tools embeds instead of shipping as a plugin).

It reads the CodeGeneratorRequest that buf sends, hands its descriptors to grpc_tools.protoc
(`--descriptor_set_in`, `--python_out`, `--grpc_python_out`) and answers the files written.
buf fills in every field's json_name; protoc leaves the default one out of the descriptor that
the generated _pb2.py embeds, so the defaults are cleared first and the output is byte for byte
what scripts/gen_proto.py commits (checked by `make examples`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


def default_json_name(name: str) -> str:
    """protoc's lowerCamelCase of a field name: each underscore upper-cases the next letter."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def clear_default_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if field.json_name == default_json_name(field.name):
                field.ClearField("json_name")
        clear_default_json_names(message.nested_type)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    files = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
    for file in files.file:
        clear_default_json_names(file.message_type)
    with tempfile.TemporaryDirectory(prefix="authsvc-pygen-") as tmp:
        descriptors, out = Path(tmp) / "in.binpb", Path(tmp) / "out"
        descriptors.write_bytes(files.SerializeToString())
        out.mkdir()
        done = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                *request.file_to_generate,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            response.error = done.stderr + done.stdout
            return response
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            response.file.add(
                name=path.relative_to(out).as_posix(), content=path.read_text(encoding="utf-8")
            )
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
