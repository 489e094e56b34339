#!/usr/bin/env bash
# The GPU evidence pack (issue 22), one command from a fresh copy of the repository on a bare GPU machine:
#   setup       Python packages from the wheelhouse .whl/ (bench/make_wheelhouse.sh) when it is there, else what is
#               importable already; the device and the software versions
#   bench       engine vs ceiling: MoCo-v2 R50 224 px bf16 batch 256, data.pipeline cpu / gpu / cache
#               (bench/bench_pipeline.py --engine-only; cache = data.pipeline gpu + data.cache device)
#   jobs        aggregate training img/s of N = 1, 4, 8 runs sharing the GPU (bench/jobs_throughput.py,
#               `study run --jobs N` on the Revisiting study's MoCo-v2 arm)
#   revisiting, detcon, d3ssl
#               `sslcli study run studies/gpu-planted-*.yaml --jobs 8`: 5 fresh seeds each, small stem, the
#               budget fixed in the files (docs/gpu-evidence.md has the arithmetic)
#   pack        the reports and results into $OUT/evidence.tar.gz (+ $OUT/evidence.log, this command's output)
# One line per phase with its wall time: `[evidence] PHASE: ok|FAILED (exit N)|TIMED OUT in S s`. A phase that fails
# does not stop the next; the exit code is 1 if any failed. Every phase runs under a deadline (default 540 s from
# the start, 15 s kept for the pack), so the pack always comes back; the study folders in the work folder are
# content-addressed, so running the command again on the same machine resumes where it stopped.
#
#   bench/gpu_evidence.sh                 # on the GPU machine: <= 9 minutes on one H100 (docs/gpu-evidence.md)
#   bench/gpu_evidence.sh --rehearse      # the same phases on CPU at the studies' `tiny` budget, <= 4 minutes
# Options: --out DIR (default $OUT, else ./evidence-out), --work DIR (data, checkpoints; default ./evidence-work),
# --bench-data DIR (real JPEGs in COCO layout, e.g. tiny-COCO; default: 50 generated 640 px scenes),
# --deadline S (seconds for everything). PYTHON=... picks the interpreter (default python3).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

rehearse=0
out="${OUT:-$repo/evidence-out}"
work="$repo/evidence-work"
bench_data=""
deadline=""
phase=""  # internal: run this one phase (the script runs each phase as a child of itself, under `timeout`)
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) rehearse=1 ;;
    --out|--work|--bench-data|--deadline|--phase)
      [ $# -ge 2 ] || { echo "gpu_evidence.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --out) out="$2" ;; --work) work="$2" ;; --bench-data) bench_data="$2" ;; --deadline) deadline="$2" ;;
        --phase) phase="$2" ;;
      esac
      shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_evidence.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
python="${PYTHON:-python3}"
mkdir -p "$out" "$work/logs" || exit 2
out="$(cd "$out" && pwd)"  # absolute, relative to where the command was started
work="$(cd "$work" && pwd)"
[ -z "$bench_data" ] || bench_data="$(cd "$bench_data" && pwd)" || exit 2
cd "$repo"
args=(--out "$out" --work "$work" ${deadline:+--deadline "$deadline"} ${bench_data:+--bench-data "$bench_data"})
[ "$rehearse" = 0 ] || args+=(--rehearse)
if [ "$rehearse" = 1 ]; then
  deadline="${deadline:-240}"
  export CUDA_VISIBLE_DEVICES=""  # the rehearsal is the CPU run, also on a machine with a GPU
  jobs=2
  budget=(--budget tiny)
  bench_args=(--device cpu --size 32 --arch resnet18 --width 8 --batch 4 --steps 1 --images 4 --workers 1)
  bench_images=8
  jobs_args=(--budget tiny --jobs 1,2 --steps 4)
else
  deadline="${deadline:-540}"
  jobs=8
  budget=()
  bench_args=(--device cuda --steps 20)
  bench_images=50
  jobs_args=(--jobs 1,4,8 --steps 100)
fi
log="$out/evidence.log"
# Every phase imports sslcli from this checkout, and the wheelhouse's packages first when there is one.
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
  export PYTHONPATH="$work/site:$repo"
else
  export PYTHONPATH="$repo"
fi

say() { echo "$*" | tee -a "$log"; }

# run_phase NAME: the phase runs as `gpu_evidence.sh ... --phase NAME` under `timeout` (which stops its whole process
# group: study run, its pretrain children); its output goes to the log and stdout; then one line with its wall time.
run_phase() {
  local name="$1"
  local left=$(( deadline - (SECONDS - start) - 15 ))
  if [ "$left" -le 0 ]; then
    say "[evidence] $name: TIMED OUT in 0 s (no time left before the ${deadline} s deadline)"
    failed=1
    return
  fi
  local t0=$SECONDS code
  timeout --kill-after=10 "$left" bash "$repo/bench/gpu_evidence.sh" "${args[@]}" --phase "$name" 2>"$work/logs/$name.err" \
    | tee -a "$log" "$work/logs/$name.out"
  code=${PIPESTATUS[0]}
  tail -n 3 "$work/logs/$name.err" | sed "s/^/[$name stderr] /" >> "$log"
  if [ "$code" = 0 ]; then
    say "[evidence] $name: ok in $(( SECONDS - t0 )) s"
  elif [ "$code" = 124 ] || [ "$code" = 137 ]; then
    say "[evidence] $name: TIMED OUT in $(( SECONDS - t0 )) s (deadline ${deadline} s; rerun to resume)"
    failed=1
  else
    say "[evidence] $name: FAILED (exit $code) in $(( SECONDS - t0 )) s; last lines:"
    tail -n 3 "$work/logs/$name.err" | tee -a "$log"
    failed=1
  fi
}

setup() {
  if compgen -G "$repo/.whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$work/site" "$repo"/.whl/*.whl || return 1
    echo "packages: installed from .whl/ into $work/site"
  else
    echo "packages: no .whl/ wheelhouse; using what $python imports already"
  fi
  "$python" - <<'PY' || return 1
import importlib, platform, sys
missing = [m for m in ("torch", "torchvision", "pydantic", "yaml", "typer", "rich", "numpy", "scipy", "statsmodels",
                       "cv2", "skimage", "h5py", "pycocotools", "matplotlib")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (bench/make_wheelhouse.sh downloads their wheels to .whl/)")
import cv2, torch, sslcli
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device visible)"
print(f"device: {name}; python {platform.python_version()}, torch {torch.__version__}, sslcli {sslcli.__version__} "
      f"from {sslcli.__file__}, cv2 {cv2.__version__} (ximgproc: {hasattr(cv2, 'ximgproc')})")
PY
}

bench() {
  local data="$bench_data"
  if [ -z "$data" ]; then
    data="$work/bench-data"
    echo "bench data: $bench_images generated scenes at 640 px in COCO layout (sslcli prepare synthetic; --bench-data DIR for real JPEGs)"
    [ -d "$data/train2017" ] || "$python" -m sslcli prepare synthetic "$data" --images "$bench_images" \
      --val-images "$bench_images" --size 640 --quiet --json > /dev/null || return 1
  fi
  "$python" bench/bench_pipeline.py --data "$data" --engine-only --pipelines cpu,gpu,cache "${bench_args[@]}"
}

study() {
  "$python" -m sslcli study run "studies/gpu-planted-$1.yaml" --out "$work/$1" --jobs "$jobs" "${budget[@]}"
}

pack() {
  local folder="$work/pack/evidence"
  rm -rf "$work/pack" && mkdir -p "$folder/logs" || return 1
  local name
  for name in revisiting detcon d3ssl; do
    local src="$work/$name"
    [ -f "$src/study.json" ] || continue
    mkdir -p "$folder/gpu-planted-$name"
    # What a committed study folder holds (docs/results/README.md): the report regenerates from these alone.
    for f in study.json study.yaml results.jsonl environment.json provenance.json report.md report.html plots; do
      [ -e "$src/$f" ] && cp -r "$src/$f" "$folder/gpu-planted-$name/"
    done
  done
  cp "$work"/logs/*.out "$work"/logs/*.err "$folder/logs/" 2>/dev/null
  cp "$log" "$folder/evidence.log"
  tar -czf "$out/evidence.tar.gz" -C "$work/pack" evidence || return 1
  echo "pack: $out/evidence.tar.gz ($(du -h "$out/evidence.tar.gz" | cut -f1)); $out/evidence.log"
  # Whatever finished is packed above; the phase fails if a study has no report or no result rows.
  local missing=0
  for name in revisiting detcon d3ssl; do
    local rows
    rows=$(cat "$folder/gpu-planted-$name/results.jsonl" 2>/dev/null | wc -l)
    if [ -f "$folder/gpu-planted-$name/report.md" ] && [ "$rows" -gt 0 ]; then
      echo "pack: gpu-planted-$name: report.md, $rows result rows"
    else
      echo "pack: gpu-planted-$name: no report or no result rows" >&2
      missing=1
    fi
  done
  return $missing
}

jobs_phase() {
  "$python" bench/jobs_throughput.py studies/gpu-planted-revisiting.yaml --out "$work/jobs" "${jobs_args[@]}"
}

if [ -n "$phase" ]; then
  case "$phase" in
    setup) setup ;; bench) bench ;; jobs) jobs_phase ;; revisiting|detcon|d3ssl) study "$phase" ;; pack) pack ;;
    *) echo "gpu_evidence.sh: unknown phase $phase" >&2; exit 2 ;;
  esac
  exit $?
fi

start=$SECONDS
failed=0
: > "$log"
say "[evidence] $( [ "$rehearse" = 1 ] && echo "rehearsal on CPU (tiny budgets)" || echo "GPU run" ), deadline ${deadline} s, out $out, work $work"
for name in setup bench jobs revisiting detcon d3ssl; do
  run_phase "$name"
done
deadline=$(( deadline + 15 ))  # the pack's reserve
run_phase pack
say "[evidence] total: $(( SECONDS - start )) s$( [ "$failed" = 1 ] && echo ", some phases did not finish (see above)" )"
exit "$failed"
