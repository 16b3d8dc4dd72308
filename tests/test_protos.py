"""protos/ is the source of truth: the committed stubs are what it generates, and every message and
method we declare matches Triton's own (read from tritonclient's descriptors) field by field."""

from __future__ import annotations

import base64
import filecmp
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from plexserve.proto import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[1]

# tritonclient registers the same `inference.*` names in protobuf's default pool, so its
# descriptors are read in a separate process and handed back serialized.
_DUMP_TRITON = """
import base64, tritonclient.grpc.service_pb2 as s, tritonclient.grpc.model_config_pb2 as m
from google.protobuf import descriptor_pb2
for module in (s, m):
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    print(base64.b64encode(proto.SerializeToString()).decode())
"""


def test_committed_stubs_are_what_protos_generate(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "service" / "proto"
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, committed, names, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make protos`"


def _ours(module: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def _messages(messages, prefix: str = "") -> dict[str, descriptor_pb2.DescriptorProto]:  # type: ignore[no-untyped-def]
    found = {}
    for message in messages:
        name = f"{prefix}{message.name}"
        found[name] = message
        found.update(_messages(message.nested_type, f"{name}."))
    return found


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple]:  # type: ignore[type-arg]
    return {
        f.name: (
            f.number,
            f.type,
            f.label,
            f.type_name.rsplit(".", 1)[-1],
            f.HasField("oneof_index"),
        )
        for f in message.field
    }


def test_every_message_and_method_matches_triton_field_by_field() -> None:
    dumped = subprocess.run(
        [sys.executable, "-c", _DUMP_TRITON], check=True, capture_output=True, text=True
    ).stdout.split()
    theirs = [descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(d)) for d in dumped]
    their_messages = {name: m for f in theirs for name, m in _messages(f.message_type).items()}
    their_enums = {e.name: e for f in theirs for e in f.enum_type}
    checked = 0
    for ours in (_ours(grpc_service_pb2), _ours(model_config_pb2)):
        assert ours.package == "inference"
        for name, message in _messages(ours.message_type).items():
            assert name in their_messages, f"message {name} is not Triton's"
            theirs_fields = _fields(their_messages[name])
            for field, shape in _fields(message).items():
                assert theirs_fields.get(field) == shape, (
                    f"{name}.{field}: ours {shape}, Triton's {theirs_fields.get(field)}"
                )
                checked += 1
        for enum in ours.enum_type:
            assert {(v.name, v.number) for v in enum.value} <= {
                (v.name, v.number) for v in their_enums[enum.name].value
            }
    their_service = theirs[0].service[0]
    our_service = _ours(grpc_service_pb2).service[0]
    assert our_service.name == their_service.name == "GRPCInferenceService"
    their_methods = {m.name: m for m in their_service.method}
    for method in our_service.method:
        theirs_method = their_methods[method.name]
        assert (
            method.input_type,
            method.output_type,
            method.client_streaming,
            method.server_streaming,
        ) == (
            theirs_method.input_type,
            theirs_method.output_type,
            theirs_method.client_streaming,
            theirs_method.server_streaming,
        )
    assert checked > 80
