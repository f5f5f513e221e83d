"""Vendors third-party protos and compiles the contracts, with protoc from grpcio-tools.

The Buf registry is out of reach, so the protos that the contracts import are
taken from the PyPI packages that ship them: google/api from
googleapis-common-protos (as .proto sources) and buf/validate from protovalidate
(whose wheel carries only the serialized descriptor, kept as a descriptor set).

    python scripts/protogen.py vendor          # refresh third_party/
    python scripts/protogen.py gen             # regenerate gen/ from a clean tree
    python scripts/protogen.py image OUT [DIR] # a Buf image of DIR (default proto/)
"""

from __future__ import annotations

import argparse
import ast
import inspect
import shutil
import sys
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party"
VALIDATE_SET = THIRD_PARTY / "buf" / "validate" / "validate.binpb"
GEN = ROOT / "gen"
GOOGLE_API_FILES = ("annotations.proto", "http.proto", "field_behavior.proto")
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"


def vendor() -> None:
    """Copies google/api sources and writes buf/validate as a descriptor set."""
    import google.api
    import protovalidate._gen.buf.validate.validate_pb as validate_pb

    api_dir = THIRD_PARTY / "google" / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    source_dir = Path(next(iter(google.api.__path__)))
    for name in GOOGLE_API_FILES:
        shutil.copyfile(source_dir / name, api_dir / name)

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
    for directory in (p for p in GEN.rglob("*") if p.is_dir()):
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()


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
