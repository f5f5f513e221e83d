"""Builds the client libraries for external apps from the generated code: a Python wheel
(`shop-mesh-client`: messages, grpcio stubs, Connect clients sync and async, typed) from
gen/ and an npm package (`@shop-mesh/client`: messages and service descriptors for
@connectrpc/connect, ESM with .d.ts) compiled from web/src/gen. Nothing is generated
again: both are packed from what `make gen` wrote.

    python scripts/sdk.py build [--dev] [--only python|npm] [--out DIR]
    python scripts/sdk.py version [--dev]  # the version the contracts give
    python scripts/sdk.py bump [--patch] [--amend]
    python scripts/sdk.py check            # what CI checks (tests/sdk run it too)

What ships: the public contracts only. The `*Internal` services are for the mesh's own
services (the gateway never serves them), so their files are left out.

Versions: one for both packages, taken from the ledger sdk/versions.json, which maps
each version to the hash of the contracts it was built from (the public .proto files
and the vendored third_party/ protos they import). A build looks the hash of the
contracts up there and refuses contracts that are not recorded (`bump` records them
as the next version), so the same contracts always give the same version. Entries are
only ever appended (tests/sdk check the ledger against the last commits) and every
version and every hash appears once, so two different contracts never share a version.
The major version is the contracts' package version (shop.*.v1 -> 1.x.y); a change
within v1 is compatible (buf breaking guards that) and takes the next minor; `--patch`
is for changes of comments alone. `--dev` builds unrecorded contracts as
`<next>.dev0+c<hash>` (npm: `<next>-dev.c<hash>`), for tests and local use: PyPI
refuses local versions, and both sort it before the release it precedes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party"
GEN = ROOT / "gen"
WEB = ROOT / "web"
WEB_GEN = WEB / "src" / "gen"
SDK = ROOT / "sdk"
LEDGER = SDK / "versions.json"
OUT = SDK / "out"
TSC = WEB / "node_modules" / "typescript" / "bin" / "tsc"

PYTHON_DIST = "shop-mesh-client"
# Where buf/validate's module goes inside the wheel (see stage_python).
VENDOR = "shop._vendor"
# Fixed file times in the archives: the same inputs give the same bytes.
SOURCE_DATE_EPOCH = "1767225600"  # 2026-01-01

# Files generated from proto/shop/<x>/v1/<name>_internal.proto.
INTERNAL = re.compile(r"_internal(?:_|\.)")
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
PACKAGE_VERSION = re.compile(r"^package\s+[\w.]+\.v(\d+)\s*;", re.MULTILINE)
BUF_IMPORT = re.compile(r"^(\s*)from buf\.validate import", re.MULTILINE)
ANY_BUF_IMPORT = re.compile(r"^\s*(?:from|import)\s+buf(?:\.|\s)", re.MULTILINE)
# `from "../../common/v1/money_pb"` in protoc-gen-es output (import_extension=none).
RELATIVE_IMPORT = re.compile(r"""(\bfrom\s+["'])(\.{1,2}/[^"']+?)(["'])""")


class SdkError(Exception):
    """A problem the person running the build has to fix; its text says how."""


@dataclass(frozen=True)
class Release:
    version: str  # MAJOR.MINOR.PATCH
    contracts: str  # "sha256:<hex>" of contract_files()


@dataclass(frozen=True)
class Version:
    python: str  # PEP 440
    npm: str  # SemVer
    contracts: str
    recorded: bool


# --- the contracts and the ledger -------------------------------------------------------


def contract_files(root: Path = ROOT) -> list[Path]:
    """What the packages are built from: the public .proto files and every vendored file
    they may import (google/api, google/rpc, buf/validate)."""
    public = [p for p in (root / "proto").rglob("*.proto") if not INTERNAL.search(p.name)]
    vendored = [p for p in (root / "third_party").rglob("*") if p.is_file()]
    return sorted(public + vendored, key=lambda p: p.relative_to(root).as_posix())


def contracts_hash(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in contract_files(root):
        data = path.read_bytes()
        if path.suffix == ".proto":
            data = data.replace(b"\r\n", b"\n")  # the same on a checkout with CRLF
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return "sha256:" + digest.hexdigest()


def contracts_major(root: Path = ROOT) -> int:
    """The highest package version of the public contracts (shop.product.v1 -> 1)."""
    majors = [
        int(m)
        for p in (root / "proto").rglob("*.proto")
        if not INTERNAL.search(p.name)
        for m in PACKAGE_VERSION.findall(p.read_text("utf-8"))
    ]
    if not majors:
        raise SdkError("no `package ... .vN;` line in proto/")
    return max(majors)


def parse_ledger(text: str) -> list[Release]:
    return [Release(**entry) for entry in json.loads(text)["versions"]]


def load_ledger() -> list[Release]:
    return parse_ledger(LEDGER.read_text("utf-8")) if LEDGER.exists() else []


def save_ledger(releases: Sequence[Release]) -> None:
    document = {
        "//": "Append-only: each SDK version and the contracts hash it was built from. "
        "Written by `python scripts/sdk.py bump`; see scripts/sdk.py.",
        "versions": [asdict(r) for r in releases],
    }
    LEDGER.write_text(json.dumps(document, indent=2) + "\n", "utf-8")


def _semver(version: str) -> tuple[int, int, int]:
    match = SEMVER.match(version)
    if not match:
        raise SdkError(f"{version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def next_version(releases: Sequence[Release], major: int, *, patch: bool = False) -> str:
    if not releases:
        return f"{major}.0.0"
    last_major, last_minor, last_patch = _semver(releases[-1].version)
    if major > last_major:
        return f"{major}.0.0"
    if major < last_major:
        raise SdkError(f"the contracts are v{major} but the ledger is at {releases[-1].version}")
    return f"{major}.{last_minor}.{last_patch + 1}" if patch else f"{major}.{last_minor + 1}.0"


def ledger_problems(
    releases: Sequence[Release], earlier: Iterable[Sequence[Release]] = ()
) -> list[str]:
    """Why the ledger is wrong (empty: it isn't): versions valid and increasing, each
    version and each hash once, and every earlier ledger a prefix of this one."""
    problems: list[str] = []
    seen: set[str] = set()
    previous: tuple[int, int, int] | None = None
    for release in releases:
        try:
            version = _semver(release.version)
        except SdkError as error:
            problems.append(str(error))
            continue
        if previous is not None and version <= previous:
            problems.append(f"{release.version} does not come after the version before it")
        previous = version
        if release.contracts in seen:
            problems.append(f"{release.version}: these contracts already have a version")
        seen.add(release.contracts)
    for old in earlier:
        if list(releases[: len(old)]) != list(old):
            problems.append(
                "a version that was already committed was changed or removed "
                "(the ledger is append-only: record new contracts with `bump`)"
            )
    return problems


def committed_ledgers(revisions: Sequence[str] = ("HEAD", "HEAD~1")) -> list[list[Release]]:
    """The ledger as the last commits have it (read with `git show`; none outside git)."""
    found: list[list[Release]] = []
    if shutil.which("git") is None:
        return found
    for revision in revisions:
        result = subprocess.run(
            ["git", "show", f"{revision}:{LEDGER.relative_to(ROOT).as_posix()}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            found.append(parse_ledger(result.stdout))
    return found


def resolve_version(*, dev: bool = False) -> Version:
    """The version of the contracts as they are now."""
    contracts = contracts_hash()
    releases = load_ledger()
    for release in releases:
        if release.contracts == contracts:
            return Version(release.version, release.version, contracts, recorded=True)
    base = next_version(releases, contracts_major())
    if not dev:
        raise SdkError(
            f"the contracts ({contracts[:19]}…) have no version in "
            f"{LEDGER.relative_to(ROOT) if LEDGER.is_relative_to(ROOT) else LEDGER}: "
            "record them with `python scripts/sdk.py bump` "
            "(or build an unreleased one with --dev)"
        )
    tag = "c" + contracts.removeprefix("sha256:")[:12]
    return Version(f"{base}.dev0+{tag}", f"{base}-dev.{tag}", contracts, recorded=False)


def bump(*, patch: bool = False, amend: bool = False) -> str:
    """Records the current contracts under the next version (`amend`: re-points the last
    entry instead, allowed only while that entry is in no commit: CI checks)."""
    contracts = contracts_hash()
    releases = load_ledger()
    for release in releases:
        if release.contracts == contracts:
            return release.version
    if amend and releases:
        releases[-1] = Release(releases[-1].version, contracts)
    else:
        releases.append(Release(next_version(releases, contracts_major(), patch=patch), contracts))
    save_ledger(releases)
    return releases[-1].version


def check() -> list[str]:
    problems = ledger_problems(load_ledger(), committed_ledgers())
    try:
        version = resolve_version()
    except SdkError as error:
        return [*problems, str(error)]
    if _semver(version.python)[0] != contracts_major():
        problems.append(f"{version.python}: its major is not the contracts' v{contracts_major()}")
    return problems


# --- building ---------------------------------------------------------------------------


def _run(argv: Sequence[str], *, cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> str:
    """Runs a build tool; its output is shown only if it fails. Returns its stdout."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SdkError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def stage_python(stage: Path) -> None:
    """gen/shop's public modules as the wheel's `shop` package, and buf/validate's module
    (which they import at run time: the validation rules are options in their descriptors)
    as `shop._vendor.buf.validate`.

    `shop` is a namespace package here (no __init__.py): other distributions may add
    their own `shop.*` packages beside it. Every subpackage has its py.typed. buf/validate
    does not go to a top-level `buf`: that name belongs to others on PyPI (`buf` itself,
    protovalidate before 1.0 shipped `buf.validate`), and two owners of one file break each
    other on install and uninstall. The descriptor pool still holds it as
    buf/validate/validate.proto, so the same file loaded from elsewhere is accepted."""
    source, target = GEN / "shop", stage / "shop"
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if (
            path.suffix not in (".py", ".pyi")
            or "__pycache__" in relative.parts
            or relative == Path("__init__.py")
            or INTERNAL.search(path.name)
        ):
            continue
        text = BUF_IMPORT.sub(rf"\1from {VENDOR}.buf.validate import", path.read_text("utf-8"))
        if "_internal_pb2" in text:
            raise SdkError(f"gen/shop/{relative} imports an internal contract: it can't ship")
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_text(text, "utf-8")
    for package in (p for p in target.iterdir() if p.is_dir()):
        (package / "py.typed").touch()

    vendored = target / "_vendor"
    validate = vendored / "buf" / "validate"
    validate.mkdir(parents=True)
    for directory in (vendored, vendored / "buf", validate):
        (directory / "__init__.py").touch()
    (vendored / "py.typed").touch()
    for name in ("validate_pb2.py", "validate_pb2.pyi"):
        text = (GEN / "buf" / "validate" / name).read_text("utf-8")
        # The messages' __module__ names where they live now.
        text = text.replace("'buf.validate.validate_pb2'", f"'{VENDOR}.buf.validate.validate_pb2'")
        (validate / name).write_text(text, "utf-8")

    left = [p for p in target.rglob("*.py*") if ANY_BUF_IMPORT.search(p.read_text("utf-8"))]
    if left:
        raise SdkError(f"still importing the top-level `buf`: {left}")


def build_python(version: str, out: Path) -> Path:
    """The wheel, built by pip from a staged copy of sdk/python/ and gen/."""
    with tempfile.TemporaryDirectory(prefix="shop-sdk-python-") as tmp:
        stage = Path(tmp) / "stage"
        shutil.copytree(SDK / "python", stage)
        (stage / "VERSION").write_text(version + "\n", "utf-8")
        stage_python(stage)
        wheels = Path(tmp) / "wheels"
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        _run(
            [*pip, "--wheel-dir", str(wheels), str(stage)],
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        )
        (wheel,) = wheels.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            top = {name.split("/")[0] for name in archive.namelist()}
        if {name for name in top if not name.endswith(".dist-info")} != {"shop"}:
            raise SdkError(f"the wheel holds more than the `shop` package: {sorted(top)}")
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(wheel, out / wheel.name))


def ensure_web_deps() -> None:
    """web/node_modules (TypeScript, @bufbuild/protobuf) from the Makefile's stamp target."""
    if not TSC.exists():
        _run(["make", "--no-print-directory", "web-deps"], cwd=ROOT)


def stage_npm(stage: Path, version: str) -> None:
    """web/src/gen's public files in src/, their relative imports ending in .js (Node's
    ES modules resolve nothing else), and the package.json with the version."""
    for path in sorted(WEB_GEN.rglob("*.ts")):
        relative = path.relative_to(WEB_GEN)
        if INTERNAL.search(path.name):
            continue
        text = RELATIVE_IMPORT.sub(
            lambda m: m[1] + (m[2] if m[2].endswith(".js") else m[2] + ".js") + m[3],
            path.read_text("utf-8"),
        )
        (stage / "src" / relative).parent.mkdir(parents=True, exist_ok=True)
        (stage / "src" / relative).write_text(text, "utf-8")
    if not (stage / "src" / "shop").is_dir():
        raise SdkError(f"no TypeScript of the contracts in {WEB_GEN.relative_to(ROOT)}: make gen")
    manifest = json.loads((SDK / "npm" / "package.json").read_text("utf-8"))
    manifest["version"] = version
    (stage / "package.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    shutil.copy(SDK / "npm" / "tsconfig.json", stage)
    shutil.copy(SDK / "npm" / "README.md", stage)


def build_npm(version: str, out: Path) -> Path:
    """The npm tarball: the staged TypeScript compiled by tsc (web's pinned TypeScript,
    checked against web's pinned @bufbuild/protobuf), packed by `npm pack`."""
    ensure_web_deps()
    with tempfile.TemporaryDirectory(prefix="shop-sdk-npm-") as tmp:
        stage = Path(tmp) / "stage"
        stage_npm(stage, version)
        (stage / "node_modules").symlink_to(WEB / "node_modules", target_is_directory=True)
        _run(["node", str(TSC), "--project", str(stage / "tsconfig.json")], cwd=stage)
        package = Path(tmp) / "package"
        package.mkdir()
        shutil.copytree(stage / "dist", package / "dist")
        for name in ("package.json", "README.md"):
            shutil.copy(stage / name, package)
        packed = Path(tmp) / "packed"
        packed.mkdir()
        listing = _run(
            ["npm", "pack", "--json", "--ignore-scripts", "--pack-destination", str(packed)],
            cwd=package,
        )
        (tarball,) = (packed / entry["filename"] for entry in json.loads(listing))
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(tarball, out / tarball.name))


def build(*, dev: bool = False, only: str = "", out: Path = OUT) -> tuple[Version, list[Path]]:
    version = resolve_version(dev=dev)
    built = []
    if only in ("", "python"):
        built.append(build_python(version.python, out))
    if only in ("", "npm"):
        built.append(build_npm(version.npm, out))
    return version, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build both packages into sdk/out/")
    build_parser.add_argument("--dev", action="store_true", help="allow unrecorded contracts")
    build_parser.add_argument("--only", choices=("python", "npm"), default="")
    build_parser.add_argument("--out", type=Path, default=OUT)
    version_parser = sub.add_parser("version", help="print the contracts' version")
    version_parser.add_argument("--dev", action="store_true")
    bump_parser = sub.add_parser("bump", help="record the contracts under the next version")
    bump_parser.add_argument("--patch", action="store_true", help="comments changed, nothing else")
    bump_parser.add_argument("--amend", action="store_true", help="re-point the last version")
    sub.add_parser("check", help="the ledger is consistent and records the contracts")
    args = parser.parse_args()
    try:
        if args.command == "build":
            version, built = build(dev=args.dev, only=args.only, out=args.out.resolve())
            print(f"{version.python}{'' if version.recorded else ' (unrecorded contracts)'}")
            for path in built:
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        elif args.command == "version":
            print(resolve_version(dev=args.dev).python)
        elif args.command == "bump":
            print(bump(patch=args.patch, amend=args.amend))
        else:
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            sys.exit(1 if problems else 0)
    except SdkError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
