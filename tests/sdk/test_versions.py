"""The client libraries' version comes from the contracts (scripts/sdk.py): the ledger
records the contracts as they are, is append-only, and maps each version to one set of
contracts; the declared dependencies admit what the mesh is tested with."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from scripts import sdk
from scripts.sdk import Release


def test_the_contracts_have_a_version() -> None:
    """What CI checks: after a change to the public contracts (or the vendored protos),
    `python scripts/sdk.py bump` records them under a new version in sdk/versions.json."""
    assert sdk.check() == []


def test_the_ledger_rules() -> None:
    one, two = Release("1.0.0", "sha256:a"), Release("1.1.0", "sha256:b")
    assert sdk.ledger_problems([one, two], earlier=[[one], [one, two]]) == []
    assert sdk.ledger_problems([one, Release("1.1.0", "sha256:a")]) == [
        "1.1.0: these contracts already have a version"
    ]
    assert sdk.ledger_problems([two, one]) == ["1.0.0 does not come after the version before it"]
    assert sdk.ledger_problems([one, Release("1.0.0", "sha256:c")]) == [
        "1.0.0 does not come after the version before it"
    ]
    assert sdk.ledger_problems([Release("1.0", "sha256:a")]) == ["'1.0' is not MAJOR.MINOR.PATCH"]
    # A committed version re-pointed at other contracts, or dropped.
    for changed in ([Release("1.0.0", "sha256:c"), two], [two]):
        assert len(sdk.ledger_problems(changed, earlier=[[one, two]])) >= 1


def test_the_next_version() -> None:
    ledger = [Release("1.0.0", "sha256:a"), Release("1.3.2", "sha256:b")]
    assert sdk.next_version([], 1) == "1.0.0"
    assert sdk.next_version(ledger, 1) == "1.4.0"
    assert sdk.next_version(ledger, 1, patch=True) == "1.3.3"
    assert sdk.next_version(ledger, 2) == "2.0.0"  # shop.*.v2
    with pytest.raises(sdk.SdkError):
        sdk.next_version(ledger, 0)


def test_bump_records_new_contracts_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contracts = {"now": "sha256:a"}
    monkeypatch.setattr(sdk, "LEDGER", tmp_path / "versions.json")
    monkeypatch.setattr(sdk, "contracts_hash", lambda root=sdk.ROOT: contracts["now"])
    assert sdk.bump() == "1.0.0"
    assert sdk.bump() == "1.0.0"  # the same contracts, the same version
    contracts["now"] = "sha256:b"
    assert sdk.bump() == "1.1.0"
    committed = sdk.load_ledger()
    contracts["now"] = "sha256:c"
    assert sdk.bump(patch=True) == "1.1.1"
    contracts["now"] = "sha256:a"
    assert sdk.bump() == "1.0.0"  # back to the first contracts: their version
    assert sdk.resolve_version().python == "1.0.0"
    assert sdk.ledger_problems(sdk.load_ledger(), [committed]) == []
    # --amend re-points the last entry: fine before a commit has it, caught after.
    contracts["now"] = "sha256:d"
    assert sdk.bump(amend=True) == "1.1.1"
    assert sdk.ledger_problems(sdk.load_ledger(), [committed]) == []
    assert sdk.ledger_problems(sdk.load_ledger(), [[*committed, Release("1.1.1", "sha256:c")]])


def contracts_copy(tmp_path: Path) -> Path:
    for name in ("proto", "third_party"):
        shutil.copytree(sdk.ROOT / name, tmp_path / name)
    return tmp_path


def test_the_hash_follows_what_ships(tmp_path: Path) -> None:
    root = contracts_copy(tmp_path)
    original = sdk.contracts_hash(root)
    assert original == sdk.contracts_hash(sdk.ROOT)
    product = root / "proto" / "shop" / "product" / "v1" / "product.proto"
    internal = root / "proto" / "shop" / "product" / "v1" / "product_internal.proto"

    # An internal contract does not ship: changing it changes no version.
    internal.write_text(internal.read_text("utf-8") + "\n// internal note\n", "utf-8")
    assert sdk.contracts_hash(root) == original
    # Line endings of a checkout are not a change.
    text = product.read_text("utf-8")
    product.write_bytes(text.replace("\n", "\r\n").encode())
    assert sdk.contracts_hash(root) == original
    # A public contract or a vendored import is.
    product.write_text(text + "\n// a comment\n", "utf-8")
    changed = sdk.contracts_hash(root)
    assert changed != original
    product.write_text(text, "utf-8")
    annotations = root / "third_party" / "google" / "api" / "annotations.proto"
    annotations.write_text(annotations.read_text("utf-8") + "\n", "utf-8")
    assert sdk.contracts_hash(root) not in (original, changed)
    # A file's name is part of it.
    product.rename(product.with_name("catalogue.proto"))
    assert sdk.contracts_hash(root) not in (original, changed)
    assert sdk.contracts_major(root) == 1


def test_unrecorded_contracts_build_only_as_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "contracts_hash", lambda root=sdk.ROOT: "sha256:" + "ab" * 32)
    with pytest.raises(sdk.SdkError, match=r"scripts/sdk\.py bump"):
        sdk.resolve_version()
    dev = sdk.resolve_version(dev=True)
    assert not dev.recorded
    # Not a release anywhere: PyPI refuses local versions, npm sorts it before the release.
    assert Version(dev.python).is_devrelease and Version(dev.python).local == "cabababababab"
    assert re.fullmatch(r"\d+\.\d+\.\d+-dev\.cabababababab", dev.npm)
    assert Version(dev.python).base_version == dev.npm.split("-")[0]


def locked() -> dict[str, str]:
    pins = {}
    for line in (sdk.ROOT / "requirements.lock").read_text("utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def generated_floor(pattern: str, path: Path) -> Version:
    found = re.search(pattern, path.read_text("utf-8"))
    assert found, f"{pattern!r} not in {path}"
    return Version(found[1])


def test_the_wheel_dependencies_admit_what_is_tested() -> None:
    project = tomllib.loads((sdk.SDK / "python" / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for r in project["optional-dependencies"]["typing"]]
    pins = locked()
    for requirement in requirements:
        pinned = pins[requirement.name]
        assert requirement.specifier.contains(pinned), f"{requirement} excludes the locked {pinned}"
    floors = {
        r.name: Version(s.version) for r in requirements for s in r.specifier if s.operator == ">="
    }
    # The generated code refuses older runtimes at import time.
    product = sdk.GEN / "shop" / "product" / "v1"
    assert floors["protobuf"] >= generated_floor(
        r"Protobuf Python Version: (\S+)", product / "product_pb2.py"
    )
    assert floors["grpcio"] >= generated_floor(
        r"GRPC_GENERATED_VERSION = '([^']+)'", product / "product_pb2_grpc.py"
    )
    assert {r.name for r in requirements} >= {"protobuf", "grpcio", "connectrpc"}


def test_the_npm_peers_admit_what_the_console_pins() -> None:
    manifest = json.loads((sdk.SDK / "npm" / "package.json").read_text("utf-8"))
    pins = json.loads((sdk.WEB / "package.json").read_text("utf-8"))
    web = {**pins["dependencies"], **pins["devDependencies"]}
    assert manifest["peerDependencies"] == {
        "@bufbuild/protobuf": "^" + web["@bufbuild/protoc-gen-es"],  # the runtime of its code
        "@connectrpc/connect": "^" + web["@connectrpc/connect"],
    }
