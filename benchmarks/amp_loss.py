"""Compares the training loss under bf16 autocast with float32, on both sides.

Configuration M (Unet(dim=64, dim_mults=(1, 2, 4, 8)), 3 channels, 64 x 64,
batch 8, Adam at 1e-4 with betas (0.9, 0.99), gradient clipping to 1) trains
for --steps steps twice with the same seed: once in float32 and once under
bf16 autocast. For this library the runs are two calls of ddpm-train, whose
per-step losses come from metrics.jsonl. For the Python package the same
loop runs here, on the same images. With one seed both runs of a side draw
the same batches, times and noise, so the losses are paired step by step.

Printed per side and precision: the mean loss over all steps and over the
last quarter, and the bf16 figure relative to float32.

    .venv/bin/python benchmarks/amp_loss.py --data data/fashion-mnist
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

from denoising_diffusion_pytorch import GaussianDiffusion, Unet

IMAGE_SIZE = 64
BATCH = 8


def list_images(folder):
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith((".png", ".jpg", ".jpeg")):
                found.append(os.path.join(root, name))
    if not found:
        sys.exit(f"amp_loss: no PNG or JPEG images under {folder!r}")
    return sorted(found)


def load_pool(paths, count, seed):
    """`count` images picked with `seed`, RGB, resized, as one tensor."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(paths), size=min(count, len(paths)),
                        replace=False)
    images = []
    for index in picked:
        with Image.open(paths[index]) as image:
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE),
                                                Image.BICUBIC)
            images.append(torch.from_numpy(np.asarray(image).copy()))
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255.0


def python_losses(pool, steps, bf16, seed):
    torch.manual_seed(seed)
    unet = Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=3)
    diffusion = GaussianDiffusion(unet, image_size=IMAGE_SIZE, timesteps=1000)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4,
                                 betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = pool[torch.randint(len(pool), (BATCH,), generator=order)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def cpp_losses(train, data, steps, bf16, seed):
    with tempfile.TemporaryDirectory(prefix="ddpm-amp-loss-") as results:
        subprocess.run(
            [train, "--folder", data, "--results-folder", results,
             "--image-size", str(IMAGE_SIZE), "--channels", "3",
             "--dim", "64", "--dim-mults", "1", "2", "4", "8",
             "--train-batch-size", str(BATCH),
             "--train-num-steps", str(steps), "--train-lr", "1e-4",
             "--save-and-sample-every", str(steps + 1), "--seed", str(seed),
             "--amp" if bf16 else "--no-amp", "--overwrite"],
            check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(results, "metrics.jsonl")) as metrics:
            return [json.loads(line)["loss"] for line in metrics]


def summarize(name, fp32, bf16):
    tail = max(1, len(fp32) // 4)
    rows = []
    for label, losses in (("fp32", fp32), ("bf16", bf16)):
        rows.append((label, statistics.mean(losses),
                     statistics.mean(losses[-tail:])))
    base_all, base_tail = rows[0][1], rows[0][2]
    for label, mean_all, mean_tail in rows:
        print(f"| {name} | {label} | {mean_all:.5f} "
              f"| {100 * (mean_all / base_all - 1):+.2f}% "
              f"| {mean_tail:.5f} "
              f"| {100 * (mean_tail / base_tail - 1):+.2f}% |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="folder of training images")
    parser.add_argument("--train", default="build/examples/ddpm-train",
                        help="the ddpm-train program")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool", type=int, default=2048,
                        help="images the Python loop draws its batches from")
    parser.add_argument("--sides", default="cpp,python",
                        help="cpp, python or both, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    sides = args.sides.split(",")
    tail = max(1, args.steps // 4)
    print(f"| side | precision | mean loss, {args.steps} steps | vs fp32 "
          f"| mean loss, last {tail} | vs fp32 |")
    print("|---|---|---|---|---|---|")
    if "cpp" in sides:
        summarize("cpp",
                  cpp_losses(args.train, args.data, args.steps, False,
                             args.seed),
                  cpp_losses(args.train, args.data, args.steps, True,
                             args.seed))
    if "python" in sides:
        pool = load_pool(list_images(args.data), args.pool, args.seed)
        summarize("python",
                  python_losses(pool, args.steps, False, args.seed),
                  python_losses(pool, args.steps, True, args.seed))


if __name__ == "__main__":
    main()
