"""Vendors third-party protos and compiles the contracts, with protoc from grpcio-tools.

The Buf registry is out of reach, so the protos that the contracts import are
taken from the PyPI packages that ship them: google/api from
googleapis-common-protos (as .proto sources) and buf/validate from protovalidate
(whose wheel carries only the serialized descriptor, kept as a descriptor set).

    python scripts/protogen.py vendor          # refresh third_party/
    python scripts/protogen.py gen             # regenerate gen/ (and gen/shop/comments.json)
                                               # and the console's TypeScript in web/src/gen
    python scripts/protogen.py image OUT [DIR] # a Buf image of DIR (default proto/)
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party"
VALIDATE_SET = THIRD_PARTY / "buf" / "validate" / "validate.binpb"
GEN = ROOT / "gen"
COMMENTS = GEN / "shop" / "comments.json"
WEB_GEN = ROOT / "web" / "src" / "gen"
PROTOC_GEN_ES = ROOT / "web" / "node_modules" / ".bin" / "protoc-gen-es"
GOOGLE_API_FILES = ("annotations.proto", "http.proto", "field_behavior.proto")
# The error details the services send (BadRequest, ErrorInfo, RetryInfo): the console
# decodes them, so its TypeScript needs their messages (Python has them in google.rpc).
GOOGLE_RPC_FILES = ("error_details.proto",)
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"


def vendor() -> None:
    """Copies google/api and google/rpc sources and writes buf/validate as a descriptor set."""
    import google.api
    import google.rpc
    import protovalidate._gen.buf.validate.validate_pb as validate_pb

    api_dir = THIRD_PARTY / "google" / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    source_dir = Path(next(iter(google.api.__path__)))
    for name in GOOGLE_API_FILES:
        shutil.copyfile(source_dir / name, api_dir / name)
    rpc_dir = THIRD_PARTY / "google" / "rpc"
    rpc_dir.mkdir(parents=True, exist_ok=True)
    rpc_source = Path(next(iter(google.rpc.__path__)))
    for name in GOOGLE_RPC_FILES:
        shutil.copyfile(rpc_source / name, rpc_dir / name)

    # protovalidate builds its module from one bytes literal: `file_desc(b'...', [...])`.
    source = inspect.getsource(validate_pb)
    call = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "file_desc"
    )
    serialized = ast.literal_eval(call.args[0])
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    VALIDATE_SET.parent.mkdir(parents=True, exist_ok=True)
    VALIDATE_SET.write_bytes(
        descriptor_pb2.FileDescriptorSet(file=[file_proto]).SerializeToString(deterministic=True)
    )


def contract_files(proto_root: Path) -> list[str]:
    return sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))


def run_protoc(proto_root: Path, args: list[str]) -> None:
    argv = [
        "protoc",
        f"-I{proto_root}",
        f"-I{THIRD_PARTY}",
        f"-I{WELL_KNOWN}",
        f"--descriptor_set_in={VALIDATE_SET}",
        *args,
    ]
    if protoc.main(argv) != 0:
        sys.exit(f"protoc failed: {' '.join(argv)}")


def gen() -> None:
    """Regenerates gen/: messages, typing stubs, grpcio stubs (typed) and Connect stubs."""
    for child in ("shop", "buf"):
        shutil.rmtree(GEN / child, ignore_errors=True)
    GEN.mkdir(exist_ok=True)
    bin_dir = Path(sys.executable).parent
    outputs = [f"--python_out={GEN}", f"--pyi_out={GEN}"]
    run_protoc(
        PROTO,
        [
            *outputs,
            f"--grpc_python_out={GEN}",
            # Typed stubs for the grpcio modules (mypy-protobuf), so calls are checked.
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_grpc_out={GEN}",
            f"--plugin=protoc-gen-connectrpc={bin_dir / 'protoc-gen-connectrpc'}",
            f"--connectrpc_out={GEN}",
            "--connectrpc_opt=protobuf=google",
            *contract_files(PROTO),
        ],
    )
    # The Google-protobuf module of buf/validate, which the contracts import at run time.
    run_protoc(PROTO, [*outputs, "buf/validate/validate.proto"])
    write_comments(COMMENTS)
    for directory in (p for p in GEN.rglob("*") if p.is_dir()):
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    gen_typescript()


def gen_typescript() -> None:
    """Regenerates web/src/gen with protoc-gen-es (installed by `npm ci` in web/): the
    messages and service descriptors that connect-web clients call, with the imported
    google/api and buf/validate files so every import resolves, and the google/rpc error
    details that the console decodes from errors."""
    if not PROTOC_GEN_ES.exists():
        sys.exit(f"{PROTOC_GEN_ES.relative_to(ROOT)} is missing: run 'npm ci' in web/")
    shutil.rmtree(WEB_GEN, ignore_errors=True)
    WEB_GEN.mkdir(parents=True)
    imported = [
        *(f"google/api/{name}" for name in GOOGLE_API_FILES),
        *(f"google/rpc/{name}" for name in GOOGLE_RPC_FILES),
        "buf/validate/validate.proto",
    ]
    run_protoc(
        PROTO,
        [
            f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
            f"--es_out={WEB_GEN}",
            "--es_opt=target=ts,import_extension=none",
            *contract_files(PROTO),
            *imported,
        ],
    )


# Field numbers in descriptor.proto, the steps of a SourceCodeInfo location path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2
LocationPath = tuple[int, ...]


def _enum_names(
    path: LocationPath, name: str, enum: descriptor_pb2.EnumDescriptorProto
) -> Iterator[tuple[LocationPath, str]]:
    yield path, name
    for i, value in enumerate(enum.value):
        yield (*path, ENUM_VALUE, i), f"{name}.{value.name}"


def _message_names(
    path: LocationPath, name: str, message: descriptor_pb2.DescriptorProto
) -> Iterator[tuple[LocationPath, str]]:
    yield path, name
    for i, field in enumerate(message.field):
        yield (*path, MESSAGE_FIELD, i), f"{name}.{field.name}"
    for i, nested in enumerate(message.nested_type):
        yield from _message_names((*path, MESSAGE_NESTED, i), f"{name}.{nested.name}", nested)
    for i, enum in enumerate(message.enum_type):
        yield from _enum_names((*path, MESSAGE_ENUM, i), f"{name}.{enum.name}", enum)


def _file_names(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[LocationPath, str]]:
    """Every commentable element's location path, with its key in comments.json."""
    for i, message in enumerate(file.message_type):
        yield from _message_names((FILE_MESSAGE, i), f"{file.package}.{message.name}", message)
    for i, enum in enumerate(file.enum_type):
        yield from _enum_names((FILE_ENUM, i), f"{file.package}.{enum.name}", enum)
    for i, service in enumerate(file.service):
        name = f"{file.package}.{service.name}"
        yield (FILE_SERVICE, i), name
        for j, method in enumerate(service.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"{name}.{method.name}"


def _comment(text: str) -> str:
    """`// Returns one user.` is kept as ` Returns one user.`: drop that space, keep lines."""
    lines = [line.removeprefix(" ").rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def comments(proto_root: Path) -> dict[str, str]:
    """The leading comment of every service, method, message, field, enum and enum value,
    by full name (fields and enum values as `<message or enum>.<name>`).

    The descriptors embedded in the generated modules carry no comments (protoc strips
    source info), so the gateway's OpenAPI document reads them from this map."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "contracts.binpb"
        run_protoc(proto_root, ["--include_source_info", f"-o{out}", *contract_files(proto_root)])
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    found: dict[str, str] = {}
    for file in files:
        names = dict(_file_names(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            text = _comment(location.leading_comments)
            if name is not None and text:
                found[name] = text
    return found


def write_comments(out: Path) -> None:
    """Sorted keys and a final newline, so `make check-gen` sees the same bytes every time."""
    text = json.dumps(comments(PROTO), indent=2, sort_keys=True, ensure_ascii=False)
    out.write_text(text + "\n", encoding="utf-8")


def image(out: Path, proto_root: Path) -> None:
    """Writes a Buf image (descriptor set with imports and source info) for lint/breaking."""
    run_protoc(
        proto_root,
        ["--include_imports", "--include_source_info", f"-o{out}", *contract_files(proto_root)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("vendor")
    sub.add_parser("gen")
    image_parser = sub.add_parser("image")
    image_parser.add_argument("out", type=Path)
    image_parser.add_argument("proto_root", type=Path, nargs="?", default=PROTO)
    args = parser.parse_args()
    if args.command == "vendor":
        vendor()
    elif args.command == "gen":
        gen()
    else:
        image(args.out.resolve(), args.proto_root.resolve())


if __name__ == "__main__":
    main()
