"""Times one benchmark case with the Python package denoising-diffusion-pytorch.

The C++ counterpart is ddpm-bench (benchmarks/bench.cpp); both take the same
flags and print one JSON line, so benchmarks/compare.py can run them in
turn. Cases:

  S: Unet(dim=32, dim_mults=(1, 2, 4), channels=1) on 28 x 28 images;
     train = one Trainer step at batch 32, sample = DDIM, 16 images, 50 steps.
  M: Unet(dim=64, dim_mults=(1, 2, 4, 8)), 3 channels, 64 x 64 images;
     train = one Trainer step at batch 8, sample = 10 DDPM steps at batch 4.
  G: the GPU case, Unet(dim=64, dim_mults=(1, 2, 4, 8)) at 128 x 128;
     train at batch 32, sample = DDIM, 64 images, 50 steps.

A training step does what one step of the Python Trainer does with
gradient_accumulate_every=1: loss under autocast, backward, gradient
clipping to norm 1, Adam step, zero_grad, EMA update, loss.item().
"""

import argparse
import json
import resource
import statistics
import time

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from ema_pytorch import EMA

CONFIGS = {
    "S": dict(dim=32, dim_mults=(1, 2, 4), channels=1, image_size=28,
              train_batch=32, sample_batch=16, sampling_timesteps=50),
    "M": dict(dim=64, dim_mults=(1, 2, 4, 8), channels=3, image_size=64,
              train_batch=8, sample_batch=4, ddpm_steps=10),
    "G": dict(dim=64, dim_mults=(1, 2, 4, 8), channels=3, image_size=128,
              train_batch=32, sample_batch=64, sampling_timesteps=50),
}

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build(config, compile_model):
    unet = Unet(dim=config["dim"], dim_mults=config["dim_mults"],
                channels=config["channels"])
    diffusion = GaussianDiffusion(
        unet, image_size=config["image_size"], timesteps=1000,
        sampling_timesteps=config.get("sampling_timesteps"))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    if compile_model:
        diffusion.model = torch.compile(unet)
    return diffusion, ema


def autocast(device, precision):
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision),
                          enabled=precision != "fp32")


def make_train_step(config, diffusion, ema, device, precision):
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4,
                                 betas=(0.9, 0.99))
    # fp16 needs loss scaling, as the Python Trainer's accelerate applies.
    scaler = torch.amp.GradScaler(device.type,
                                  enabled=precision == "fp16")
    size = config["image_size"]
    batch = torch.rand(config["train_batch"], config["channels"], size, size,
                       device=device)

    def step():
        diffusion.train()
        with autocast(device, precision):
            loss = diffusion(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        ema.update()
        return loss.item()

    return step, config["train_batch"]


def make_sample(config, diffusion, device, precision, batch):
    diffusion.eval()

    def sample():
        with autocast(device, precision), torch.inference_mode():
            if "ddpm_steps" in config:
                size = config["image_size"]
                img = torch.randn(batch, config["channels"], size, size,
                                  device=device)
                for t in reversed(range(1000 - config["ddpm_steps"], 1000)):
                    img, _ = diffusion.p_sample(img, t)
                return img
            return diffusion.sample(batch_size=batch)

    return sample, batch


def peak_rss_kib():
    """Peak resident memory of this process in KiB.

    VmHWM in /proc/self/status starts afresh at exec, while ru_maxrss also
    counts the parent's resident memory at fork.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--task", choices=("train", "sample"), required=True)
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast (same as --precision bf16)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="fp32, or autocast to bf16 or fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample-batch", type=int, default=0,
                        help="images per sampling run (0: the config's)")
    parser.add_argument("--compile", action="store_true",
                        help="wrap the Unet in torch.compile")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=5,
                        help="timed iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile",
                        help="profile one more iteration, write a Chrome "
                             "trace to this file")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    precision = args.precision or ("bf16" if args.amp else "fp32")
    device = torch.device(args.device)
    config = CONFIGS[args.config]
    diffusion, ema = build(config, args.compile)
    diffusion.to(device)
    ema.to(device)
    if args.task == "train":
        run, images = make_train_step(config, diffusion, ema, device,
                                      precision)
    else:
        batch = args.sample_batch or config["sample_batch"]
        run, images = make_sample(config, diffusion, device, precision, batch)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        run()
    synchronize()
    seconds = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - start)

    if args.profile:
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        prof.export_chrome_trace(args.profile)

    median = statistics.median(seconds)
    peak_kib = peak_rss_kib()
    print(json.dumps({
        "impl": "python-compile" if args.compile else "python",
        "config": args.config, "task": args.task,
        "amp": precision != "fp32", "precision": precision,
        "device": args.device, "batch": images,
        "threads": torch.get_num_threads(),
        "median_s": median, "images_per_s": images / median,
        "peak_rss_mib": peak_kib / 1024.0, "seconds": seconds,
    }))


if __name__ == "__main__":
    main()
