#!/usr/bin/env bash
# The GPU check in one call: eager and compiled (torch.compile, CUDA graphs) training of vae, cvae, gmvae and
# vrnn against the plain loops, 200 steps each, in one process, then a verdict on the compiled rows.
#
#     benchmarks/gpu.sh [MNIST_DIR [OUT_DIR]]          defaults: .mnist and runs/gpu
#
# It reads nothing outside the work tree: copy MNIST's four IDX files into MNIST_DIR first (e.g. .mnist/,
# which git does not ignore, so that a copy of the untracked work tree carries it to the GPU machine). It
# compiles from an empty cache (a temporary folder, removed at the end), so the compile times are what a first
# run pays. Each row is a JSON line in OUT_DIR/gpu.jsonl (and on the standard output), the whole output in
# OUT_DIR/log; an OUT_DIR that holds either already is refused (exit 2). It exits 1 if a row failed or a compiled
# row skipped a CUDA graph, replayed none, broke its graph, generated no kernel or synchronized with the host
# inside a step.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-.mnist}
out=${2:-runs/gpu}
if [ -e "$out/gpu.jsonl" ] || [ -e "$out/log" ]; then
    echo "gpu.sh: $out already holds gpu.jsonl or log: name another OUT_DIR" >&2
    exit 2
fi
mkdir -p "$out"
export PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
python3 benchmarks/bench.py --models vae,cvae,gmvae,vrnn --steps 200 --modes eager,compiled --data-dir "$data" \
    --out "$out/gpu.jsonl" --json 2>&1 | tee "$out/log" || status=1
python3 - "$out/gpu.jsonl" "$out/log" <<'PY' || status=1
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
targets = {"vae": 0.5, "cvae": 0.5, "gmvae": 0.6, "vrnn": 0.35}
print(f"{'model':<6} {'mode':<9} {'ours s':>8} {'plain s':>8} {'ratio':>6} {'target':>6} {'compile s':>9} "
      f"{'syncs/step':>10} {'replays/step':>12}")
problems = [f"{r['model']}: {r['error']}" for r in rows if "error" in r]
for r in rows:
    if "error" in r:
        continue
    mode = "compiled" if r["compiled"] else "eager"
    print(f"{r['model']:<6} {mode:<9} {r['ours_seconds']:8.2f} {r['plain_seconds']:8.2f} {r['ratio']:6.3f} "
          f"{targets[r['model']]:6.2f} {r.get('compile_seconds', 0):9.1f} {r['syncs_per_step']:10.2f} "
          f"{r.get('graph_replays_per_step', 0):12.2f}")
    if r["compiled"]:
        checks = {"CUDA graphs skipped": r["cudagraph_skips"], "no CUDA-graph replay": not r["graph_replays_per_step"],
                  "graph breaks": r["graph_breaks"], "no kernel generated": not r["generated_kernels"],
                  "host-device syncs inside a step": r["syncs_per_step"]}
        problems += [f"{r['model']} compiled: {what} ({value})" for what, value in checks.items() if value]
skips = open(sys.argv[2]).read().count("skipping cudagraphs")
if skips:
    problems.append(f'{skips} "skipping cudagraphs" warnings in the log')
print("\n".join(problems) or "compiled rows: Triton kernels, CUDA graphs replayed, no graph break, no sync in a step")
sys.exit(1 if problems else 0)
PY
exit $status
