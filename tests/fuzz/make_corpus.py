"""Writes the seed corpora of the fuzz targets into corpus/<target>/.

Run with the project's virtual environment (torch, Pillow, safetensors):

    .venv/bin/python tests/fuzz/make_corpus.py

The seeds are small valid inputs of each format, so that mutations start
from deep inside the parsers. Output is deterministic.
"""

import collections
import io
import os
import zipfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as out:
        out.write(data)


def image_seeds():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    saves = {
        "rgb.png": (rgb, "PNG", {}),
        "gray.png": (rgb.convert("L"), "PNG", {}),
        "gray_alpha.png": (rgb.convert("LA"), "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "rgb.jpg": (rgb, "JPEG", {"quality": 90}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "gray.jpg": (rgb.convert("L"), "JPEG", {}),
        "rgb.bmp": (rgb, "BMP", {}),
        "rgb.gif": (rgb, "GIF", {}),
        "rgb.tga": (rgb, "TGA", {}),
        "rgb.ppm": (rgb, "PPM", {}),
    }
    for name, (image, fmt, kwargs) in saves.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        write("image_folder", name, buffer.getvalue())
    sixteen = Image.fromarray(
        rng.integers(0, 65536, (4, 4), dtype=np.uint16)).convert("I;16")
    buffer = io.BytesIO()
    sixteen.save(buffer, "PNG")
    write("image_folder", "gray16.png", buffer.getvalue())


def torch_save_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def checkpoint_seeds():
    torch.manual_seed(0)
    weight = torch.randn(2, 3)
    state = collections.OrderedDict(
        [("model.w", weight), ("model.b", torch.zeros(2))])
    checkpoint = {
        "step": 3,
        "model": state,
        "opt": {"state": {0: {"step": torch.tensor(3.0),
                              "exp_avg": torch.zeros(2, 3),
                              "exp_avg_sq": torch.zeros(2, 3)}},
                "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99),
                                  "eps": 1e-8, "weight_decay": 0,
                                  "amsgrad": False, "params": [0]}]},
        "ema": collections.OrderedDict(
            [("initted", torch.tensor(True)), ("step", torch.tensor(3))]),
        "scaler": None,
        "version": "2.3.4",
    }
    write("checkpoint", "trainer.pt", torch_save_bytes(checkpoint))
    write("checkpoint", "state_dict.pt", torch_save_bytes(state))


def pickle_seeds():
    # The fuzz target supplies storages "0" (4 float32) and "1" (2 bytes),
    # so each seed's tensors use at most those.
    objects = {
        "tensors.pkl": {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]),
                        "b": torch.tensor([1, 2], dtype=torch.uint8)},
        "ordered.pkl": collections.OrderedDict(
            [("w", torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
             ("v", torch.tensor([5, 6], dtype=torch.int8))]),
        "scalars.pkl": {"int": 7, "big": 2 ** 40, "neg": -3, "float": 2.5,
                        "str": "text", "none": None, "true": True,
                        "list": [1, 2.0, "x"], "tuple": (1, (2, 3)),
                        "bytes": b"ab", "nested": {"k": [{}]}},
        "view.pkl": {"t": torch.tensor([1.0, 2.0, 3.0, 4.0])[1:3]},
    }
    for name, obj in objects.items():
        with zipfile.ZipFile(io.BytesIO(torch_save_bytes(obj))) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            write("torch_pickle", name, archive.read(pkl[0]))


def safetensors_seeds():
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.tensor([1, 2], dtype=torch.int64),
               "h": torch.ones(2, dtype=torch.float16),
               "z": torch.ones(2, dtype=torch.bfloat16),
               "u": torch.tensor([True, False])}
    write("safetensors", "tensors.safetensors", save_safetensors(tensors))
    write("safetensors", "metadata.safetensors",
          save_safetensors({"x": torch.zeros(1)}, metadata={"k": "v"}))
    write("safetensors", "empty.safetensors", save_safetensors({}))


if __name__ == "__main__":
    image_seeds()
    checkpoint_seeds()
    pickle_seeds()
    safetensors_seeds()
