#!/usr/bin/env bash
# Every GPU check and benchmark of the scan work (issue 14) in one unattended run, ~5 minutes on an H200.
#
#   bash benchmarks/gpu_all.sh                    # on the GPU machine; results under $OUT (or ./gpu_results)
#   bash benchmarks/gpu_all.sh --device cpu --tiny   # the same parts on tiny shapes on a CPU (a smoke run)
#   PARTS="gpu_check layer_speed" bash benchmarks/gpu_all.sh   # only the named parts (a lease split in two calls)
#
# Each part runs under its own time limit and its failure is reported, not fatal: the others still run.
# Every part's output goes to <out>/<part>.log (and .json where the script writes one); summary.txt lists
# each part's exit status. Needs torch (CUDA) and triton; lightning only for the training check.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
OUTDIR="${OUT:-gpu_results}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"

part() {  # part NAME SECONDS COMMAND...
  local name="$1" limit="$2"; shift 2
  case " ${PARTS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUTDIR/$name.log"
  echo "--- $name: exit $rc after $((SECONDS - t0))s" | tee -a "$SUMMARY"
}

if [ "$TINY" = 1 ]; then
  part gpu_check 300 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --tiny --json "$OUTDIR/gpu_check.json"
  part scan_speed 120 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --tiny --scan-only --reps 2 \
    --json "$OUTDIR/scan_speed.json"
  part layer_speed 300 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --tiny --reps 2 --json "$OUTDIR/layer_speed.json"
  part model_memory 300 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --tiny --model --batch 2 --reps 1 \
    --json "$OUTDIR/model_memory.json"
  part prune_speed 300 "$PY" benchmarks/prune_speed.py --device "$DEVICE" --quick --tasks text-small --ratios 0,0.5 \
    --reps 1 --json "$OUTDIR/prune_speed.json"
else
  part gpu_check 150 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --json "$OUTDIR/gpu_check.json"
  # Triton tile configurations for the Path-X scan (BLOCK_T:BLOCK_P:WARPS:MIN_PROGRAMS); the default is
  # ssmlit.models.scan_triton.CONFIG.
  part scan_speed 60 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --scan-only --batch 16 \
    --shapes 128:256:16384,256:192:4096 --scans triton,lean,chunked \
    --triton-configs 64:32:4:512,256:32:4:512,128:16:4:512,128:64:4:512,128:32:8:512,128:32:4:128,128:32:4:2048 \
    --json "$OUTDIR/scan_speed.json"
  part layer_speed 120 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --batch 16 --scans triton,lean,chunked,fft \
    --json "$OUTDIR/layer_speed.json"
  part pathx_batch50 45 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --batch 50 --shapes 128:256:16384 \
    --scans triton,chunked,fft --json "$OUTDIR/pathx_batch50.json"
  part model_memory 75 "$PY" benchmarks/layer_speed.py --device "$DEVICE" --model --batch 50 --reps 3 \
    --scans triton,chunked --json "$OUTDIR/model_memory.json"
  part prune_speed 120 "$PY" benchmarks/prune_speed.py --device "$DEVICE" --json "$OUTDIR/prune_speed.json"
  # issue 13: training steps after a 50 / 90 % compaction during training, against masking only
  part train_speed 120 "$PY" benchmarks/train_speed.py --device "$DEVICE" --tasks text,retrieval,pathx \
    --ratios 0,0.5,0.9 --json "$OUTDIR/train_speed.json"
fi
echo "results in $OUTDIR"; cat "$SUMMARY"
