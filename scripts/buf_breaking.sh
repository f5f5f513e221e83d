#!/usr/bin/env bash
# Checks proto/ for breaking changes (buf.yaml: FILE rules) against the protos at a
# git ref, by comparing two images built with protoc. Usage: buf_breaking.sh [REF]
# (default HEAD~1). A ref that does not exist or has no proto/ has nothing to break.
set -euo pipefail
ref=${1:-HEAD~1}
root=$(git rev-parse --show-toplevel)
python=$root/.venv/bin/python
buf=$root/.venv/bin/buf
cd "$root"
if ! git rev-parse --verify -q "$ref^{commit}" >/dev/null; then
  echo "buf breaking: $ref does not exist, nothing to compare"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$ref" | tar -x -C "$tmp" --wildcards 'proto/*' 2>/dev/null || true
if [ ! -d "$tmp/proto" ]; then
  echo "buf breaking: $ref has no proto/, nothing to compare"
  exit 0
fi
"$python" scripts/protogen.py image "$tmp/against.binpb" "$tmp/proto"
"$python" scripts/protogen.py image "$tmp/current.binpb"
"$buf" breaking "$tmp/current.binpb" --against "$tmp/against.binpb"
echo "buf breaking: no breaking change against $ref"
