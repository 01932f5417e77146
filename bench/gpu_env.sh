# Sourced by the scripts run on a lent GPU machine (bench/gpu_checks.sh, bench/gpu_train.sh): Python with the
# carried wheels, this checkout on PYTHONPATH, the encoder's C kernels built in place, the machine described
# in $OUT/machine.txt. PY, DEVICE, OUT and WHEELS (default .whl) come from the caller's environment.
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl}  # the carried wheels' folder
if [ -d "$WHEELS" ] && [ "$PY" = python3 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
# The encoder's C kernels (pip install builds them; the tree is carried without build outputs). Without a
# compiler the encoder runs their numpy versions: slower, same answers; the log says which.
$PY -c "import sysconfig as s; print(s.get_paths()['include'] + ' ' + s.get_config_var('EXT_SUFFIX'))" | {
    read -r include suffix
    cc -O2 -ffp-contract=off -shared -fPIC -I"$include" cloud_core/_kernels.c -o "cloud_core/_kernels$suffix" \
        && echo "C kernels built" || echo "C kernels NOT built: numpy fallback"
}
(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; nproc; free -g) \
    2>&1 | tee "$OUT/machine.txt"
