set -x
nvidia-smi -L; python3 --version
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import aaclip_med, monai, open_clip, highdicom; print('imports ok')" || exit 1
timeout 240 python3 .gpu/gpu_checks.py 2>&1 | grep -v Warning | tee $OUT/gpu_checks.log
timeout 60 python3 -m aaclip_med run datasets/samples/hcc048_ct --model demo --device cuda -o /tmp/run_cuda --no-progress 2>&1 | tail -5 | tee $OUT/run_cuda.log
ls /tmp/run_cuda; cp /tmp/run_cuda/run.json $OUT/run_cuda_run.json 2>/dev/null
python3 .gpu/train_data.py /tmp/td
timeout 90 python3 -m aaclip_med train /tmp/td/manifest.csv -o /tmp/train_cuda --model aaclip-tiny --backbone-weights random --text-epochs 1 --image-epochs 2 --device cuda --no-progress 2>&1 | tail -6 | tee $OUT/train_cuda.log
ls /tmp/train_cuda
timeout 150 python3 benchmarks/bench_scoring.py --device cuda --speed-only --baseline-images 2 --default-slices 8 --no-int8 2>&1 | grep -v Warning | tail -30 | tee $OUT/bench_cuda.log
