#!/usr/bin/env bash
# wsisum as users install it (`pip install wsisum`, `pip install .`: never editable), one line per step:
# build the sdist and, from it, the wheel; check both carry the configs; install the wheel into a fresh
# virtual environment; from a directory outside the clone run `wsisum --version`, `wsisum-synth`,
# `wsisum-summarize` and the README's Python API example. CI runs it after the tests (.ci/run).
#   scripts/check_wheel.sh            # PYTHON=python3.X picks the interpreter; KEEP=1 keeps the temp dir
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}   # the fresh environment's interpreter
VENV=${VENV:-.venv}
[[ $VENV = /* ]] || VENV=$REPO/$VENV
BUILD=$VENV/bin # the clone's environment (`make test` made it) builds, with its setuptools
TORCH=torch==2.13.0 # the Makefile's pin: the CPU wheel these machines carry, never a multi-GB CUDA build
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsisum-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT
T0=$(date +%s)

say() { echo "check_wheel: $* ($(($(date +%s) - T0)) s)"; }
fail() {
    echo "check_wheel: FAILED: $*" >&2
    [ -f "$TMP/last.log" ] && tail -n 40 "$TMP/last.log" >&2
    exit 1
}
quiet() { "$@" >"$TMP/last.log" 2>&1 || fail "$*"; } # a step's own output goes to a log, shown on failure

# The build reads a copy of the clone's files (tracked, and untracked but not ignored): no build/ is left
# in the clone and no stale build/lib file reaches the wheel.
mkdir -p "$TMP/src" "$TMP/dist" "$TMP/work"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null |
    tar -xf - -C "$TMP/src"
n_src=$(find "$TMP/src/wsisum/configs" -name '*.yaml' | wc -l)

cd "$TMP/src"
quiet "$BUILD/python" -c "from setuptools import build_meta; build_meta.build_sdist('$TMP/dist')"
sdist=$(ls "$TMP"/dist/wsisum-*.tar.gz)
n_sdist=$(tar -tzf "$sdist" | grep -c '/wsisum/configs/.*\.yaml$' || true)
[ "$n_sdist" -eq "$n_src" ] || fail "the sdist holds $n_sdist config files, the clone $n_src"
say "sdist $(basename "$sdist"): $n_sdist config files"

quiet "$BUILD/pip" wheel --no-deps --no-build-isolation -w "$TMP/dist" "$sdist" # the wheel of the sdist
wheel=$(ls "$TMP"/dist/wsisum-*.whl)
n_wheel=$("$PY" -m zipfile -l "$wheel" | grep -c '^wsisum/configs/.*\.yaml ' || true)
[ "$n_wheel" -gt 0 ] || fail "the wheel holds no config file"
[ "$n_wheel" -eq "$n_src" ] || fail "the wheel holds $n_wheel config files, the clone $n_src"
say "wheel $(basename "$wheel"): $n_wheel config files, e.g. $("$PY" -m zipfile -l "$wheel" | grep -o '^wsisum/configs/sampler/kmeans.yaml')"

cd "$TMP/work" # outside the clone from here on: nothing can be imported from it
quiet "$PY" -m venv "$TMP/venv"
echo "$TORCH" >"$TMP/torch.txt"
quiet "$TMP/venv/bin/pip" install "$TORCH"
quiet "$TMP/venv/bin/pip" install -c "$TMP/torch.txt" "$wheel"
BIN=$TMP/venv/bin
where=$("$BIN/python" -c 'import wsisum, torch; print(wsisum.__file__, torch.__version__)')
case "$where" in "$TMP/venv/"*" 2.13.0"*) ;; *) fail "wsisum or torch is not the fresh install's: $where" ;; esac
say "installed into a fresh venv (not editable): ${where%% *}, torch ${where##* }"

version=$("$BIN/wsisum" --version)
[ "$version" = "wsisum $("$BIN/python" -c 'import importlib.metadata as m; print(m.version("wsisum"))')" ] ||
    fail "wsisum --version says '$version', the installed metadata another"
say "$version"

quiet "$BIN/wsisum-synth" "out_dir=$TMP/cohort" preset=tiny progress=false
n_bags=$(find "$TMP/cohort/h5_files" -name '*.h5' | wc -l)
[ -f "$TMP/cohort/cohort.json" ] && [ "$n_bags" -gt 0 ] || fail "wsisum-synth wrote no cohort"
say "wsisum-synth preset=tiny: $n_bags slides"

quiet "$BIN/wsisum-summarize" "data.root=$TMP/cohort" sampler=kmeans budget=8 "out_dir=$TMP/summaries" progress=false
recorded=$("$BIN/python" - "$TMP/summaries" <<'EOF'
import sys
from pathlib import Path

import wsisum

paths = sorted(Path(sys.argv[1]).rglob("*.h5"))
versions = {wsisum.read_bag(p).attrs["wsisum_version"] for p in paths}
print(len(paths), *versions)
EOF
)
[ "$recorded" = "$n_bags ${version#wsisum }" ] || fail "summaries and their recorded versions: '$recorded'"
say "wsisum-summarize sampler=kmeans budget=8: $n_bags summaries, each recording version ${version#wsisum }"

# README's "your own task": one task file in the user's own config dir, its labels and splits by its name
mkdir -p my_configs/task "$TMP/cohort/splits"
printf 'classes: [IDC, ILC]\n' >my_configs/task/my_task.yaml
cp "$TMP/cohort/labels/brca.csv" "$TMP/cohort/labels/my_task.csv"
cp -r "$TMP/cohort/splits/brca" "$TMP/cohort/splits/my_task"
quiet "$BIN/wsisum-evaluate" --config-dir my_configs "data.root=$TMP/cohort" task=my_task "bags=$TMP/summaries" \
    mil=meanpool 'folds=[0]' trainer.max_epochs=2 threads=1 "hydra.run.dir=$TMP/evaluate"
auroc=$(grep -m 1 '^my_task,.*,test_auroc,' "$TMP/evaluate/metrics.csv" | cut -d, -f8) ||
    fail "wsisum-evaluate --config-dir wrote no test AUROC of my_task"
say "wsisum-evaluate --config-dir my_configs task=my_task: fold 0 test AUROC $auroc"

# the first ```python block under README's "## Python API" heading, as tests/test_api.py reads it
awk '/^## Python API/{s=1} s&&/^```python$/{b=1; next} b&&/^```$/{exit} b' "$REPO/README.md" >"$TMP/example.py"
[ -s "$TMP/example.py" ] || fail "no Python example under README's '## Python API'"
quiet "$BIN/python" "$TMP/example.py"
[ -f "$TMP/work/summaries/slide-1.h5" ] || fail "the README's example wrote no summaries/slide-1.h5"
say "README's Python API example: $(tail -n 1 "$TMP/last.log")"
