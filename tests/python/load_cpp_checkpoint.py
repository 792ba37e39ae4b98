"""Loads a checkpoint written by ddpm-train with the Python Trainer.load and
checks that the Python package samples the same images as ddpm-sample.

    python load_cpp_checkpoint.py RESULTS_FOLDER MILESTONE SAMPLES_FOLDER SEED \
        CPP_SAFETENSORS PYTHON_SAFETENSORS

RESULTS_FOLDER contains model-MILESTONE.pt from ddpm-train run with
--image-size 8 --channels 1 --dim 8 --dim-mults 1 2 --attn-dim-head 8
--timesteps 20 --sampling-timesteps 4; SAMPLES_FOLDER contains the
000000.png, ... that `ddpm-sample --seed SEED --num-samples 4` wrote.
Exits 0 when every pixel agrees within one 8-bit level and the EMA weights
that ddpm-sample wrote to CPP_SAFETENSORS equal the checkpoint's. Writes the
EMA weights with Python's safetensors to PYTHON_SAFETENSORS.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from denoising_diffusion_pytorch import GaussianDiffusion, Trainer, Unet
from safetensors.torch import load_file, save_file


def main():
    results, milestone, samples, seed, cpp_weights, python_weights = \
        sys.argv[1:7]
    model = Unet(dim=8, dim_mults=(1, 2), channels=1, attn_dim_head=8)
    diffusion = GaussianDiffusion(model, image_size=8, timesteps=20,
                                  sampling_timesteps=4)
    with tempfile.TemporaryDirectory() as folder:
        # The Python Trainer wants at least 100 training images.
        for i in range(100):
            Image.new("L", (8, 8), i).save(Path(folder) / f"{i}.png")
        trainer = Trainer(diffusion, folder, results_folder=results,
                          train_batch_size=4, gradient_accumulate_every=4,
                          num_samples=4, calculate_fid=False)
        trainer.load(milestone)

    ema_model = trainer.ema.ema_model.eval()
    torch.manual_seed(int(seed))
    images = ema_model.sample(batch_size=4)
    expected = (images * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    for i in range(4):
        written = np.asarray(Image.open(Path(samples) / f"{i:06d}.png"))
        difference = np.abs(written.astype(int) - expected[i, 0].astype(int))
        print(f"image {i}: largest difference {difference.max()} levels")
        if difference.max() > 1:
            sys.exit(f"image {i} differs by {difference.max()} levels")
    print(f"step {trainer.step}: Python samples match ddpm-sample")

    state = ema_model.state_dict()
    written = load_file(cpp_weights)
    if set(written) != set(state):
        sys.exit(f"safetensors keys differ: {sorted(set(written) ^ set(state))}")
    for key, value in state.items():
        if not torch.equal(written[key], value):
            sys.exit(f"safetensors tensor {key} differs")
    print(f"{len(state)} safetensors tensors equal the EMA weights")
    save_file({key: value.contiguous() for key, value in state.items()},
              python_weights, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
