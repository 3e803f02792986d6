#!/usr/bin/env bash
# relaxrun's GPU check: one short run (under 8 minutes on one GPU) that
#   1. runs the default test tier with RELAXRUN_TEST_DEVICE=cuda (tests/conftest.py: tensors made without
#      a device go to the GPU; whole relaxrun processes pick CUDA themselves, device=auto),
#   2. times one default epoch and the end-of-run IWAE-1000 of a real `relaxrun device=cuda` run,
#   3. runs the kernel table and the IWAE section of scripts/benchmark.py on the GPU,
# and writes the figures to benchmarks/gpu.json, which BENCHMARKS.md's GPU section renders (the last
# step merges that section into BENCHMARKS.md).
#
#   scripts/device_check.sh            # from the repository root, the project's environment active
#
# Environment: PYTHON (default python), DATA_ROOT (default ../shared/data: MNIST/raw in torchvision's
# layout; without it, random digit-sized images are generated and the figures say so), TEST_TIMEOUT
# (seconds for the test tier, default 240), OUT (a folder that also gets a copy of the logs and figures).
# Exits 2 at once, saying so, when CUDA is not available. A rehearsal on a machine without one:
# CHECK_DEVICE=cpu TEST_TIMEOUT=60 IWAE_IMAGES=5 GEMM_N=256 RUN_OVERRIDES="trainer.max_steps=20 eval.iwae_samples=10"
# KERNEL_CALLS=5 scripts/device_check.sh runs every step, shortened, on the CPU and
# writes its figures to OUT (or nowhere), never to benchmarks/gpu.json or BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA_ROOT=${DATA_ROOT:-../shared/data}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
DEV=${CHECK_DEVICE:-cuda}
IWAE_IMAGES=${IWAE_IMAGES:-10000}
if [ "$DEV" = cuda ]; then GEMM_N=${GEMM_N:-8192}; else GEMM_N=${GEMM_N:-1024}; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relaxrun-device-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t_start=$(date +%s)

if [ "$DEV" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check.sh: error: CUDA is not available here (torch.cuda.is_available() is False with $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch")); run it on a machine with an NVIDIA GPU and a CUDA build of torch. Nothing was measured or written." >&2
    exit 2
fi

generated=false
if [ ! -d "$DATA_ROOT/MNIST/raw" ]; then
    echo "[device_check] no MNIST under $DATA_ROOT: generating random digit-sized images (60000 + 10000)"
    DATA_ROOT="$WORK/data"
    "$PY" -c "import sys; sys.path.insert(0, 'scripts'); from benchmark import generate_mnist; from pathlib import Path; generate_mnist(Path(sys.argv[1]), 60000, 10000)" "$DATA_ROOT" || exit 1
    generated=true
fi

# 1. the test suite on CUDA (default tier); at the limit pytest gets SIGINT, so it still prints its summary
echo "[device_check] 1/3 tests with RELAXRUN_TEST_DEVICE=$DEV (timeout ${TEST_TIMEOUT} s)"
t0=$(date +%s)
RELAXRUN_TEST_DEVICE=$DEV timeout -s INT -k 30 "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests > "$WORK/tests.log" 2>&1
tests_rc=$?
tests_s=$(( $(date +%s) - t0 ))
tail -n 25 "$WORK/tests.log"

# 2. a default epoch and the end-of-run IWAE-1000 with device=cuda (a real run, whole process)
echo "[device_check] 2/3 relaxrun device=$DEV, 1 epoch + IWAE-1000"
RELAXRUN=(relaxrun)
command -v relaxrun > /dev/null || RELAXRUN=("$PY" -m relaxrun.cli)
RUN_CMD=("${RELAXRUN[@]}" "device=$DEV" "data.root=$DATA_ROOT" data.download=false trainer.epochs=1 eval.iwae_samples=1000
         trainer.progress=false "hydra.run.dir=$WORK/run" ${RUN_OVERRIDES:-})
t0=$(date +%s%N)
"${RUN_CMD[@]}" > "$WORK/run.log" 2>&1
run_rc=$?
run_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
tail -n 5 "$WORK/run.log"

# 3. the kernel table and the IWAE section on the GPU
echo "[device_check] 3/3 benchmark.py --device $DEV --sections kernels,iwae"
BENCH_CMD=(scripts/benchmark.py --device "$DEV" --data-root "$DATA_ROOT" --sections kernels,iwae --repeats 3
           --iwae-images "$IWAE_IMAGES" --gemm-n "$GEMM_N" --kernel-calls "${KERNEL_CALLS:-200}" --out "$WORK/bench.md" --json "$WORK/bench.json")
"$PY" "${BENCH_CMD[@]}" > "$WORK/bench.log" 2>&1
bench_rc=$?
tail -n 5 "$WORK/bench.log"

FIGS=benchmarks/gpu.json
[ "$DEV" = cuda ] || FIGS="$WORK/gpu.json"  # a rehearsal: not the GPU's figures
mkdir -p benchmarks
"$PY" - "$FIGS" "$DEV" "$WORK" "$tests_rc" "$tests_s" "$run_rc" "$run_ms" "$bench_rc" "$generated" "$DATA_ROOT" "$t_start" "$IWAE_IMAGES" "$GEMM_N" <<'EOF'
import json, re, subprocess, sys, time
from pathlib import Path
import torch

figs_path, dev = sys.argv[1:3]
work, tests_rc, tests_s, run_rc, run_ms, bench_rc, generated, data_root, t_start, len_images, gemm_n = sys.argv[3:]
work = Path(work)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
tests_log = (work / "tests.log").read_text(errors="replace")
summary = next((ln for ln in reversed(tests_log.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), "")
if tests_rc == "124":
    summary = f"stopped at the {tests_s} s limit; last summary: {summary or 'none'}"
data = "generated random images" if generated == "true" else data_root
figs = [{"what": f"default test tier with RELAXRUN_TEST_DEVICE={dev}",
         "value": f"exit {tests_rc}: {summary.strip('= ')} ({tests_s} s)",
         "command": f"RELAXRUN_TEST_DEVICE={dev} python -m pytest -q tests"}]
m = work / "run" / "metrics.json"
run_cmd = (f"relaxrun device={dev} data.root=... data.download=false trainer.epochs=1 eval.iwae_samples=1000 "
           "trainer.progress=false")
if run_rc == "0" and m.exists():
    metrics = json.loads(m.read_text())
    h = metrics["history"][0]
    figs.append({"what": f"default epoch, device={dev} ({data})", "value": f"{h['seconds']:.2f} s (training loop, "
                 f"{metrics['steps']} steps)", "command": run_cmd})
    kk = metrics.get("iwae_samples", "?")
    figs.append({"what": f"whole run: start, 1 epoch, test evaluation, IWAE-{kk}, exit",
                 "value": f"{float(run_ms) / 1000:.1f} s wall; -IWAE-{kk} {metrics.get('test_iwae', float('nan')):.2f} nats",
                 "command": run_cmd})
else:
    tail = " | ".join((work / "run.log").read_text(errors="replace").strip().splitlines()[-3:])
    figs.append({"what": f"default epoch, device={dev}", "value": f"failed (exit {run_rc}): {tail}", "command": run_cmd})
sections = {}
bench_cmd = (f"python scripts/benchmark.py --device {dev} --data-root ... --sections kernels,iwae --repeats 3 "
             f"--iwae-images {len_images} --gemm-n {gemm_n}")
bj = work / "bench.json"
if bench_rc == "0" and bj.exists():
    res = json.loads(bj.read_text())
    iw = res.get("iwae")
    if iw:
        e = next(iter(iw["by_threads"].values()))
        cur = e["variants"]["relaxrun"]
        figs.append({"what": f"IWAE-{iw['k']} on {iw['images']} test images (benchmark.py iwae section)",
                     "value": f"{cur['s']['median']:.2f} s median; {cur['gflops']['median']:.0f} GFLOP/s, "
                              f"{100 * cur['share_of_gemm']:.0f} % of the float32 GEMM rate "
                              f"({e['gemm']['median']:.0f} GFLOP/s, {iw['gemm_n']}³ torch.mm)",
                     "command": bench_cmd})
    text = (work / "bench.md").read_text()
    for head in ("## 3. Distribution kernels", "## 6. The end-of-run IWAE bound"):
        if head in text:
            body = text.split(head, 1)[1]
            body = re.split(r"\n## ", body, maxsplit=1)[0]
            sections[head[3:]] = body
else:
    tail = " | ".join((work / "bench.log").read_text(errors="replace").strip().splitlines()[-3:])
    figs.append({"what": "benchmark.py on the GPU", "value": f"failed (exit {bench_rc}): {tail}", "command": bench_cmd})
out = {"gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{dev} (a rehearsal, not a GPU)", "torch": torch.__version__, "cuda": torch.version.cuda,
       "commit": commit + ("+changes" if dirty else ""), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
       "duration_s": time.time() - float(t_start), "figures": figs, "sections": sections,
       "benchmark_command": bench_cmd}
Path(figs_path).write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(figs, indent=1))
EOF
write_rc=$?

# the GPU section of BENCHMARKS.md, re-rendered from benchmarks/gpu.json (the other sections are kept)
if [ "$DEV" = cuda ] && [ -f BENCHMARKS.md ]; then
    "$PY" scripts/benchmark.py --data-root "$DATA_ROOT" --sections gpu --merge BENCHMARKS.md --out BENCHMARKS.md \
        > "$WORK/merge.log" 2>&1 || tail -n 5 "$WORK/merge.log"
fi
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp "$WORK"/*.log "$FIGS" "$OUT"/ 2>/dev/null
    [ -f "$WORK/bench.md" ] && cp "$WORK/bench.md" "$OUT"/
fi
echo "[device_check] done in $(( $(date +%s) - t_start )) s: tests exit $tests_rc, run exit $run_rc, benchmark exit $bench_rc; $FIGS written (exit $write_rc)"
[ "$tests_rc" = 0 ] && [ "$run_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$write_rc" = 0 ]
