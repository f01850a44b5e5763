nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 200 python3 .gpu/gpu_checks.py 2>&1 | grep -v Warning | tee $OUT/gpu_checks.log
timeout 60 python3 -m aaclip_med run datasets/samples/hcc048_ct --model demo --device cuda -o /tmp/run_cuda --no-progress 2>&1 | tail -4 | tee $OUT/run_cuda.log
timeout 280 python3 benchmarks/bench_scoring.py --short --device cuda 2>&1 | grep -v -i warn | tail -40 | tee $OUT/bench_cuda.log
