#!/bin/bash
# Issue 20's figures in one command (at most 500 s of steps on one GPU, every step bounded by `timeout` so
# the rest still runs; bench/pipeline.py and bench/vae.py still report what they measured when cut;
# the CUDA tests include the lifecycle node giving its CUDA memory back at cleanup; the accuracy step leaves out the compiled settings, whose cost the CPU run measured at about zero,
# and the time to first frame times eager and the AOTI packages, the target's pair): the CUDA tests, bench/pipeline.py at 512/768/1024 (reference and eager settings),
# the fast path (torch-fast: the exact algorithm, bf16, the frame compiled and replayed as one CUDA
# graph) and the `fast` speed preset at 768, a profile with host synchronisations per frame, the VAE's
# variants, the fast settings' accuracy on the embedded trained models, the time to the first frame
# (eager, torch.compile, AOTI) and the node end to end for 1, 2 and 4 cameras. Writes each step's
# output to $OUT/<step>.txt, then the summary table and $OUT/summary.json (bench/gpu_summary.py) that
# go into bench/RESULTS.md.
#
# The GPU machine needs only python3 with torch+CUDA: the rest is installed from .whl/ (prepared
# with bench/wheels.sh on a machine with network), no network. From the project's root:
#     bash bench/gpu_check.sh                            # GPU: full-size configs (random weights)
#     DEVICE=cpu QUICK=1 PY=.venv/bin/python bash bench/gpu_check.sh   # CPU: tiny configs, a check of the script
set -u
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; QUICK=${QUICK:-0}; OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"; : > "$OUT/status.txt"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD  # no .whl/: this python has the dependencies already
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=  # bench/pipeline.py takes CUDA whenever it sees it

step() {  # step NAME SECONDS COMMAND...: output in $OUT/NAME.txt, exit status (124: timed out) in status.txt
    local name=$1 limit=$2; shift 2
    echo "[gpu_check] $name (at most ${limit} s)" >&2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "$name $?" >> "$OUT/status.txt"
}

B="$PY bench/pipeline.py"
if [ "$QUICK" = 1 ]; then  # tiny configs, a few frames: checks the script, not the GPU
    PIPE="--config small --frames 1 --warmup 1"; RES="64"; RES_FAST=64; SCENES=3; VAE="--config small --resolution 128 --calls 1"
    CAMERAS="--cameras 1 2 4 --warmup 2 --seconds 3"; FIRST="--input-size 320x240 --runs aoti"; ACC="latent-difference"; T=300
else
    PIPE="--config full --frames 5 --warmup 2"; RES="512 768 1024"; RES_FAST=768; SCENES=30; VAE="--config full --resolution 768"
    CAMERAS="--config full --size 640x480 --processing-res 768 --cameras 1 2 4 --warmup 4 --seconds 6"
    FIRST="--input-size 640x480 --runs aoti"; ACC="bf16 light-difference latent-difference light-encoder"; T=0
fi
lim() { echo $(( $1 > T ? $1 : T )); }  # QUICK on a CPU is slower per step than the GPU run it stands for

step tests "$(lim 45)" $PY -m pytest -q -p no:cacheprovider test/core/test_engines.py test/core/test_fast_frame.py test/ros/test_params.py test/ros/test_lifecycle.py -k "cuda or gpu or tensorrt"
step pipeline "$(lim 45)" $B $PIPE --settings reference torch-bf16 latent light --resolutions $RES --json "$OUT/pipeline.json"
step fast "$(lim 180)" $B $PIPE --settings torch-fast fast --resolutions $RES_FAST --json "$OUT/fast.json"
step profile "$(lim 20)" $B $PIPE --profile --settings torch-bf16 --resolutions $RES_FAST --json "$OUT/profile.json"
step vae "$(lim 45)" $PY bench/vae.py $VAE --device "$DEVICE" --variants bf16-cl bf16-cl-cudnn-benchmark bf16-cl-plain-attention bf16-cl-compile bf16-cl-compile-graph --json "$OUT/vae.json"
step accuracy "$(lim 40)" $PY bench/speed_accuracy.py --split eval --scenes $SCENES --settings $ACC --device "$DEVICE" --json "$OUT/accuracy.json"
step first_frame "$(lim 65)" $PY bench/first_frame.py --device "$DEVICE" $FIRST --workdir "$OUT/first_frame"
step cameras "$(lim 60)" $PY bench/cameras.py --device "$DEVICE" $CAMERAS --json "$OUT/cameras.json"
$PY bench/gpu_summary.py "$OUT"
