#!/usr/bin/env bash
# Every GPU check of emdm in one go, for a machine with one H100 or H200, its own torch, triton
# and pytest, and no package registry. From the repository root:
#
#     PYTHONPATH=. bash bench/gpu_all.sh [OUT]     # OUT: argument, else $OUT, else results/bench
#     bash bench/gpu_all.sh --dry-run              # any machine: the commands, checked, not run
#
# Steps (each guarded: a failure is logged and the next step runs; the exit status is 0 only if
# every step passed). Expected wall time on one H200, ESTIMATES from results/bench/*h200* and
# the README's figures (this script has not run on a device yet):
#   1    the whole test suite natively on CUDA, slow tests included (kernels compiled, not
#        interpreted: TRITON_INTERPRET is unset), over 8 pytest-xdist processes where xdist
#        imports (GPU_ALL_PYTEST_WORKERS=0: one process, ~ 5 min)                  ~ 2 min
#   2    python3 -m bench.gpu_check: the kernels' timings, reference vs Triton      ~ 1 min
#   3    python3 -m bench.em_cost --measure --device cuda --batch 256               ~ 1 min
#   4a   python3 -m reproduce smoke --device cuda: every --smoke preset, on fake data files
#        in the real formats that it writes first (a random 93 M ADM checkpoint too) ~ 1.5 min
#   4b   the image ones (table1, fig6) again under torchrun --standalone --nproc_per_node=1,
#        in an NCCL process group of one (the runner sets EMDM_PROCESS_GROUP=1): the launcher,
#        DDP, NCCL's all-reduce and all-gather (the same path passes with gloo on the CPU in
#        tests/test_smoke_images.py)                                               ~ 0.5 min
#   5    python3 -m bench.mmps_cost --device cuda at B = 256 and B = 16384, with the
#        CUDA-graph captured call (H200, earlier code: 10 s and 5 s without it)     ~ 0.5 min
#   6a   python3 -m emdm mmps-check --device cuda at 4096 samples (H200: 3.4 s)    ~ 0.2 min
#   6b   one lap of reproduce/fig3.py --quick --compare (the paper's E-step) on CUDA ~ 0.5-1 min
#   7    python3 -m bench.memory --device cuda, if bench/memory.py exists           ~ 0.5 min
# About 8 minutes in all. A step stops at its own time limit, and once GPU_ALL_BUDGET seconds
# (default 450) have passed the steps left are skipped, marked so, and named in a command
# that runs them alone: the script ends within about 8 minutes whatever happens.
#
# Writes OUT/gpu_all_<gpu>.log (everything printed), OUT/gpu_all_<gpu>.csv (per step: status,
# exit code, wall time, command) and OUT/gpu_all_<gpu>.tar.gz (every result file under 4 MiB
# the steps wrote: CSV, JSON, PNG, logs). The steps write into GPU_ALL_WORK, by default a fresh
# OUT/gpu_all_<gpu>_<time> (so that a rerun meets no finished run folder); when OUT is the
# device tool's $OUT, /tmp/gpu_all_<time> instead, since only 8 files come back from there.
#
# Environment: PYTHON (default python3); GPU_ALL_STEPS, the steps to run (e.g. "2 5 6b"; a
# number selects its lettered steps too); GPU_ALL_BUDGET; GPU_ALL_WORK; GPU_ALL_PYTEST_WORKERS
# (default 8); DRY_RUN=1 (as --dry-run); GPU_ALL_EXTRA, more commands, one a line, run as
# steps x1, x2, ... (a device session's own checks).
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
unset TRITON_INTERPRET # native kernels; tests/conftest.py interprets only without CUDA

dry=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then
    dry=1
    shift
fi
py=${PYTHON:-python3}
out=${1:-${OUT:-results/bench}}
budget=${GPU_ALL_BUDGET:-450}
selected=${GPU_ALL_STEPS:-}

if [[ $dry == 1 ]]; then
    gpu=dry-run
else
    gpu=$("$py" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', \
torch.cuda.get_device_name(0).lower()).strip('-'))") || gpu=no-cuda
fi
if [[ -n ${GPU_ALL_WORK:-} ]]; then
    work=$GPU_ALL_WORK
elif [[ -n ${OUT:-} && $out == "$OUT" ]]; then
    work=/tmp/gpu_all_$(date +%Y%m%d-%H%M%S)
else
    work=$out/gpu_all_${gpu}_$(date +%Y%m%d-%H%M%S)
fi

# the steps: id, time limit (s), command
ids=() limits=() commands=()
add() {
    local id=$1 limit=$2
    shift 2
    ids+=("$id") limits+=("$limit") commands+=("$(printf '%q ' "$@")")
}
# pytest-xdist, where it imports (the H200 image has it), spreads the tests over 8 processes
xdist=()
if ((${GPU_ALL_PYTEST_WORKERS:-8} > 0)) && "$py" -c "import xdist" 2>/dev/null; then
    xdist=(-n "${GPU_ALL_PYTEST_WORKERS:-8}")
fi
add 1 330 "$py" -m pytest -q -p no:cacheprovider ${xdist[@]+"${xdist[@]}"} tests
add 2 120 "$py" -m bench.gpu_check --out "$work"
add 3 150 "$py" -m bench.em_cost --measure --device cuda --batch 256 --out "$work"
add 4a 180 "$py" -m reproduce smoke --device cuda --quiet --out "$work/smoke" \
    --data "$work/smoke_data"
add 4b 120 "$py" -m reproduce smoke table1 fig6 --device cuda --torchrun 1 --quiet \
    --out "$work/smoke_torchrun" --data "$work/smoke_data"
add 5a 60 "$py" -m bench.mmps_cost --device cuda --repeats 200 --out "$work/mmps_cost_$gpu"
add 5b 60 "$py" -m bench.mmps_cost --device cuda --batch 16384 --repeats 50 \
    --out "$work/mmps_cost_${gpu}_b16384"
add 6a 60 "$py" -m emdm mmps-check --device cuda --samples 4096 --quiet --out "$work" \
    --name "mmps_check_$gpu"
add 6b 120 "$py" reproduce/fig3.py --quick --device cuda --em-iterations 1 --compare --quiet \
    --out "$work/fig3_one_lap"
if [[ -f bench/memory.py ]]; then
    add 7 90 "$py" -m bench.memory --device cuda --out "$work"
fi
n=0
while IFS= read -r line; do
    [[ -z $line ]] && continue
    n=$((n + 1))
    ids+=("x$n") limits+=(120) commands+=("$line")
done <<<"${GPU_ALL_EXTRA:-}"

chosen() { # whether step $1 is selected (all by default; "4" selects 4a and 4b)
    [[ -z $selected ]] && return 0
    local s
    for s in $selected; do
        [[ $1 == "$s" || ${1%[a-z]} == "$s" ]] && return 0
    done
    return 1
}

if [[ $dry == 1 ]]; then
    echo "dry run: the commands, checked (each entry point imported and its flags parsed by"
    echo "its own parser, stopped before any work; CUDA taken as present), not run"
    echo "output folder: $out, work folder: $work"
    todo=()
    for i in "${!ids[@]}"; do
        chosen "${ids[$i]}" || continue
        echo "[${ids[$i]}] (limit ${limits[$i]} s) ${commands[$i]}"
        todo+=("${commands[$i]}")
    done
    status=0
    for script in bench/gpu_all.sh bench/gpu_check.sh bench/gpu_core.sh; do
        bash -n "$script" || status=1
    done
    checker=$(
        cat <<'EOF'
r"""Checks each command line of argv without running it: the module or script exists and
parses the given flags with its own parser (parse_config / parse_run, stopped right after)."""
import contextlib
import importlib
import io
import shlex
import sys
from pathlib import Path

import torch

torch.cuda.is_available = lambda: True  # the flags are checked as on a CUDA machine


class Parsed(Exception):
    pass


def stopped(parse):
    def wrapper(*args, **kwargs):
        parse(*args, **kwargs)
        raise Parsed

    return wrapper


def entry(module, argv):
    # run `module.main(argv)` with its parser stopped after parsing: no work is done
    names = [n for n in ("parse_config", "parse_run") if hasattr(module, n)]
    if not hasattr(module, "main") or not names:
        raise RuntimeError(f"{module.__name__} has no main parsed by parse_config/parse_run")
    saved = {n: getattr(module, n) for n in names}
    for n in names:
        setattr(module, n, stopped(saved[n]))
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            module.main(argv)
    except Parsed:
        return
    except SystemExit as e:
        raise RuntimeError(f"its flags are refused: {err.getvalue().strip()}") from None
    finally:
        for n in names:
            setattr(module, n, saved[n])
    raise RuntimeError("its main returned without parsing")


def script(path, argv):
    p = Path(path).resolve()
    if not p.is_file():
        raise RuntimeError(f"no script {path}")
    parts = p.relative_to(Path.cwd()).with_suffix("").parts  # run from the repository root
    entry(importlib.import_module(".".join(parts)), argv)


def module(name, argv):
    if name == "pytest":
        importlib.import_module("pytest")
        valued = ("-p", "-m", "-k", "-c", "-o", "-n")  # options whose value is the next word
        paths = [a for i, a in enumerate(argv)
                 if not a.startswith("-") and (i == 0 or argv[i - 1] not in valued)]
        missing = [a for a in paths if not Path(a.split("::")[0]).exists()]
        if missing:
            raise RuntimeError(f"no test paths {missing}")
    elif name == "torch.distributed.run":
        from torch.distributed.run import get_args_parser

        ns = get_args_parser().parse_args(argv)
        if ns.module:
            module(ns.training_script, ns.training_script_args)
        else:
            script(ns.training_script, ns.training_script_args)
    elif name == "emdm":
        from emdm.__main__ import COMMANDS

        if not argv or argv[0] not in COMMANDS:
            raise RuntimeError(f"no emdm command {argv[:1]}: expected one of {list(COMMANDS)}")
        entry(sys.modules[COMMANDS[argv[0]].__module__], argv[1:])
    elif name == "reproduce":
        import reproduce.__main__ as runner

        with contextlib.redirect_stdout(io.StringIO()) as listed:
            runner.main([*argv, "--list"])
        for line in listed.getvalue().splitlines():
            _, *cmd = shlex.split(line.split(": ", 1)[1])
            check(cmd)
    else:
        entry(importlib.import_module(name), argv)


def check(argv):
    if argv[:1] == ["-m"]:
        module(argv[1], argv[2:])
    else:
        script(argv[0], argv[1:])


failed = 0
for line in sys.argv[1:]:
    words = shlex.split(line)
    try:
        check(words[1:])  # words[0]: the interpreter
        print(f"ok      {line}")
    except Exception as error:
        failed += 1
        print(f"FAILED  {line}\n        {type(error).__name__}: {error}")
print(f"{failed} of the commands failed the check" if failed else "every command checked")
sys.exit(1 if failed else 0)
EOF
    )
    "$py" -c "$checker" "${todo[@]}" || status=1
    echo "== dry run exit status $status"
    exit $status
fi

mkdir -p "$out" "$work"
log=$out/gpu_all_$gpu.log
csv=$out/gpu_all_$gpu.csv
exec > >(tee "$log") 2>&1
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name(0))" || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "output folder: $out, work folder: $work, budget ${budget} s"
echo "step,status,exit_code,wall_s,command" >"$csv"
status=0 start=$SECONDS skipped=()
for i in "${!ids[@]}"; do
    id=${ids[$i]}
    chosen "$id" || continue
    left=$((budget - (SECONDS - start)))
    if ((left <= 0)); then
        echo "== [$id] skipped: the budget of $budget s is spent"
        echo "$id,skipped,,0,\"${commands[$i]//\"/\"\"}\"" >>"$csv"
        skipped+=("$id") status=1
        continue
    fi
    limit=${limits[$i]}
    ((left + 30 < limit)) && limit=$((left + 30))
    echo "== [$id] (limit $limit s) ${commands[$i]}"
    t=$SECONDS
    eval "timeout --kill-after=10 $limit ${commands[$i]}"
    code=$?
    wall=$((SECONDS - t))
    if ((code == 0)); then
        result=passed
    elif ((code == 124 || code == 137)); then
        result=timeout status=1
    else
        result=failed status=1
    fi
    echo "== [$id] $result (exit code $code) in $wall s"
    echo "$id,$result,$code,$wall,\"${commands[$i]//\"/\"\"}\"" >>"$csv"
done
if ((${#skipped[@]})); then
    echo "== to run the skipped steps: GPU_ALL_STEPS=\"${skipped[*]}\" bash bench/gpu_all.sh $out"
fi
echo "== steps:"
column -s, -t <"$csv" | cut -c1-100 || cat "$csv"
# the result files, without checkpoints and the fake data: one archive comes back from a device
(cd "$work" && find . -type f -size -4096k ! -path './smoke_data/*' -print0 |
    tar --null -czf - -T -) >"$out/gpu_all_$gpu.tar.gz" || status=1
echo "== wrote $log, $csv, $out/gpu_all_$gpu.tar.gz in $((SECONDS - start)) s; exit status $status"
exit $status
