"""protos/ is the source of truth: the committed stubs are what it generates, and every message and
method we declare matches Triton's own (read from tritonclient's descriptors) field by field."""

from __future__ import annotations

import base64
import filecmp
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from plexserve.proto import grpc_service_pb2, model_config_pb2
from plexserve.proto.tfserving import tf_error_codes_pb2, tf_framework_pb2, tf_serving_pb2

ROOT = Path(__file__).resolve().parents[1]

# tritonclient registers the same `inference.*` names in protobuf's default pool, so its
# descriptors are read in a separate process and handed back serialized.
_DUMP_TRITON = """
import base64, tritonclient.grpc.service_pb2 as s, tritonclient.grpc.model_config_pb2 as m
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
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
    for generated, committed in (
        (tmp_path, ROOT / "service" / "proto"),
        (tmp_path / "tfserving", ROOT / "service" / "proto" / "tfserving"),
    ):
        names = sorted(p.name for p in generated.iterdir() if p.suffix in (".py", ".pyi"))
        assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
        match, mismatch, errors = filecmp.cmpfiles(generated, committed, names, shallow=False)
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


def _all_messages(messages: Iterable[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        if not message.GetOptions().map_entry:
            yield message
        yield from _all_messages(message.nested_types)


def _shape(field: FieldDescriptor) -> tuple[object, ...]:
    kind = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        field.is_repeated,
        kind.full_name if kind else None,
        field.json_name,
        field.containing_oneof.name if field.containing_oneof else None,
    )


def test_our_tf_serving_stubs_match_tf_serving_and_tensorflow_field_by_field() -> None:
    """Ours live in their own descriptor pool; TF Serving's and TensorFlow's in the default one,
    where importing tensorflow-serving-api's modules puts them."""
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    theirs = descriptor_pool.Default()
    files = (tf_framework_pb2, tf_error_codes_pb2, tf_serving_pb2)
    checked = 0
    for module in files:
        for message in _all_messages(module.DESCRIPTOR.message_types_by_name.values()):
            their_message = theirs.FindMessageTypeByName(message.full_name)
            their_fields = {f.name: f for f in their_message.fields}
            for field in message.fields:
                assert field.name in their_fields, f"{message.full_name}.{field.name} is not theirs"
                assert _shape(field) == _shape(their_fields[field.name]), (
                    f"{message.full_name}.{field.name}"
                )
                checked += 1
            for enum in message.enum_types:
                their_enum = their_message.enum_types_by_name[enum.name]
                assert {(v.name, v.number) for v in enum.values} == {
                    (v.name, v.number) for v in their_enum.values
                }
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            their_values = {
                (v.name, v.number) for v in theirs.FindEnumTypeByName(enum.full_name).values
            }
            our_values = {(v.name, v.number) for v in enum.values}
            # TensorFlow's DataType also has the *_REF types, which never travel in a request
            assert our_values <= their_values and len(our_values) >= 18, enum.full_name
    for their_file, name in (
        (prediction_service_pb2, "PredictionService"),
        (model_service_pb2, "ModelService"),
    ):
        ours = tf_serving_pb2.DESCRIPTOR.services_by_name[name]
        their_service = their_file.DESCRIPTOR.services_by_name[name]
        assert ours.full_name == their_service.full_name
        assert {
            (m.name, m.input_type.full_name, m.output_type.full_name) for m in ours.methods
        } == {
            (m.name, m.input_type.full_name, m.output_type.full_name) for m in their_service.methods
        }
    assert checked > 50


def test_tf_serving_clients_import_no_tensorflow() -> None:
    """TF Serving's stubs and `plexserve bench --protocol tfserving` stay light: no TensorFlow,
    no tensorflow-serving-api (each would cost a load process seconds and hundreds of MB)."""
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, plexserve.bench.tfserving, plexserve.codecs.tfserving_json; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', "
            "'tensorflow_serving'}))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert imported == "[]"
