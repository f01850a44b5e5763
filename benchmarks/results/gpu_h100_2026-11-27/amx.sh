lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -w -E "amx_bf16|amx_int8|amx_tile" /proc/cpuinfo | sort | uniq -c
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES=""
timeout 330 taskset -c 0,1 python3 benchmarks/bench_scoring.py --short --device cpu --out $OUT/amx_short.json 2>&1 | grep -v -i warn | tee $OUT/amx_bench.log
