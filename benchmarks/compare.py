"""Runs ddpm-bench and the Python package side by side and prints a table.

Each case (configuration S or M, task train or sample, float32 or bf16
autocast) runs in fresh processes, in turn: this library, the Python
package, and the Python package with torch.compile, repeated for --rounds
rounds. The table gives the median over rounds of each process's median
time, images per second, peak resident memory, and the ratios of this
library's speed and memory to Python's.

The FLOP counts come from torch.utils.flop_counter.FlopCounterMode, which
counts the convolutions, matrix products and attention calls that the
Python model dispatches (2 FLOPs per multiply-add, element-wise operations
not counted). Both implementations run the same layers, so one count
serves both.

    .venv/bin/python benchmarks/compare.py --bench build/benchmarks/ddpm-bench
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_worker  # noqa: E402

IMPLS = ("cpp", "python", "python-compile")
REPEATS = {"train": (2, 5), "sample": (1, 3)}  # (warmup, timed) per process


def count_flops(config_name, task):
    """FLOPs of one timed iteration of a case and of one Unet forward."""
    config = python_worker.CONFIGS[config_name]
    torch.manual_seed(0)
    diffusion, _ = python_worker.build(config, compile_model=False)
    size, channels = config["image_size"], config["channels"]

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        x = torch.randn(1, channels, size, size)
        diffusion.model(x, torch.tensor([500]))
    per_forward_image = counter.get_total_flops()

    if task == "train":
        batch = torch.rand(config["train_batch"], channels, size, size)
        counter = FlopCounterMode(display=False)
        with counter:
            diffusion(batch).backward()
        return counter.get_total_flops(), per_forward_image
    steps = config.get("ddpm_steps") or config["sampling_timesteps"]
    return per_forward_image * config["sample_batch"] * steps, \
        per_forward_image


def run_worker(impl, args, config, task, amp):
    warmup, iters = REPEATS[task]
    common = ["--config", config, "--task", task,
              "--warmup", str(warmup), "--iters", str(iters)]
    if amp:
        common.append("--amp")
    if impl == "cpp":
        command = [args.bench] + common
    else:
        command = [sys.executable, os.path.join(HERE, "python_worker.py")]
        command += common + (["--compile"] if impl == "python-compile" else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine_peaks(args):
    """Matrix-product GFLOP/s measured by ddpm-bench, by dtype."""
    result = subprocess.run([args.bench, "--task", "matmul"],
                            capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {row["dtype"]: row["gflops"] for row in rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="build/benchmarks/ddpm-bench",
                        help="path of the ddpm-bench program")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per case")
    parser.add_argument("--configs", nargs="+", default=["S", "M"])
    parser.add_argument("--tasks", nargs="+", default=["train", "sample"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS),
                        choices=IMPLS)
    parser.add_argument("--compile-rounds", type=int, default=1,
                        help="rounds that include python-compile (its "
                             "compilation takes minutes per process)")
    parser.add_argument("--json", help="also write every run to this file")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    peaks = machine_peaks(args)
    print(f"measured 2048^3 matmul: float32 {peaks['float32']:.0f} GFLOP/s, "
          f"bfloat16 {peaks['bfloat16']:.0f} GFLOP/s")

    runs = []
    cases = [(c, t, p) for c in args.configs for t in args.tasks
             for p in args.precisions]
    for config, task, precision in cases:
        for round_index in range(args.rounds):
            for impl in args.impls:
                if impl == "python-compile" and \
                        round_index >= args.compile_rounds:
                    continue
                row = run_worker(impl, args, config, task, precision == "bf16")
                row["round"] = round_index
                runs.append(row)
                print(f"  {config} {task} {precision} {impl:15s} round "
                      f"{round_index + 1}: {row['median_s']:.3f} s, "
                      f"{row['peak_rss_mib']:.0f} MiB", flush=True)

    if args.json:
        with open(args.json, "w") as out:
            json.dump(runs, out, indent=1)

    print()
    print("| case | impl | median s | images/s | GFLOP/s | % of matmul "
          "peak | peak RSS MiB | speed vs Python | memory vs Python |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config, task, precision in cases:
        flops, per_image = count_flops(config, task)
        peak = peaks["bfloat16" if precision == "bf16" else "float32"]
        summary = {}
        for impl in args.impls:
            mine = [r for r in runs if r["impl"] == impl and
                    r["config"] == config and r["task"] == task and
                    r["amp"] == (precision == "bf16")]
            summary[impl] = (
                statistics.median(r["median_s"] for r in mine),
                statistics.median(r["images_per_s"] for r in mine),
                statistics.median(r["peak_rss_mib"] for r in mine))
        python = summary.get("python")
        for impl, (seconds, images, rss) in summary.items():
            gflops = flops / seconds / 1e9
            speed = f"{python[0] / seconds:.2f}x" if python else "-"
            memory = f"{rss / python[2]:.2f}x" if python else "-"
            print(f"| {config} {task} {precision} | {impl} | {seconds:.3f} | "
                  f"{images:.2f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
                  f"{rss:.0f} | {speed} | {memory} |")
        print(f"<!-- {config} {task}: {flops / 1e9:.2f} GFLOP per iteration, "
              f"{per_image / 1e9:.3f} GFLOP per Unet forward of one image -->")


if __name__ == "__main__":
    main()
