"""Runs the GPU benchmark of ddpm-bench beside the Python package.

Configuration G, Unet(dim=64, dim_mults=(1, 2, 4, 8)) at 128 x 128 on one
CUDA device: training images per second at batch 32 with fp16 (loss
scaling) and bf16 autocast, and DDIM sampling (50 steps) images per second
at batch 16 and 64, eager and with CUDA Graphs. Processes alternate as in
compare.py; the table gives medians over rounds and the ratio of each
row's images per second to the Python package's.

    .venv/bin/python benchmarks/compare_gpu.py --bench build/benchmarks/ddpm-bench
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = [
    ("train", "fp16", 0), ("train", "bf16", 0),
    ("sample", "fp32", 16), ("sample", "fp32", 64),
]


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def commands(args, task, precision, batch):
    common = ["--config", "G", "--task", task, "--precision", precision,
              "--device", args.device, "--warmup", "2",
              "--iters", "5" if task == "train" else "3"]
    if batch:
        common += ["--sample-batch", str(batch)]
    rows = {"cpp": [args.bench] + common,
            "python": [sys.executable, os.path.join(HERE, "python_worker.py")]
            + common}
    if task == "sample":
        rows["cpp-graphs"] = [args.bench] + common + ["--cuda-graphs"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="build/benchmarks/ddpm-bench")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    print(f"device: {torch.cuda.get_device_name(0)}, torch "
          f"{torch.__version__}")
    results = {}
    for task, precision, batch in CASES:
        for round_index in range(args.rounds):
            for impl, command in commands(args, task, precision,
                                          batch).items():
                row = run(command)
                results.setdefault((task, precision, batch, impl),
                                   []).append(row)
                print(f"  {task} {precision} batch {row['batch']} {impl} "
                      f"round {round_index + 1}: "
                      f"{row['images_per_s']:.1f} images/s", flush=True)

    print()
    print("| case | impl | images/s | vs Python |")
    print("|---|---|---|---|")
    for task, precision, batch in CASES:
        python = statistics.median(
            r["images_per_s"]
            for r in results[(task, precision, batch, "python")])
        for (t, p, b, impl), rows in results.items():
            if (t, p, b) != (task, precision, batch):
                continue
            rate = statistics.median(r["images_per_s"] for r in rows)
            size = rows[0]["batch"]
            print(f"| G {task} {precision} batch {size} | {impl} | "
                  f"{rate:.1f} | {rate / python:.2f}x |")


if __name__ == "__main__":
    main()
