"""resnet_tiny on digits: test accuracy and training time of the full-ReLU model.

Run: python -m benchmarks.bench_digits [--epochs 15] [--seeds 3]
"""

from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import replace

import torch

from benchmarks.common import machine
from search.data import Loader, load_dataset
from search.spaces import build_model
from search.train import evaluate, fit, teacher_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=teacher_config("digits").epochs)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset("digits")
    device = torch.device("cpu")
    print(f"# {datetime.date.today()} | {machine()} | recipe: {replace(teacher_config('digits'), epochs=args.epochs)}")
    print("| seed | epochs | train time (s) | val acc | test acc |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        config = replace(teacher_config("digits"), epochs=args.epochs, seed=seed)
        torch.manual_seed(seed)
        model = build_model("resnet_tiny", input_size=data.info.input_shape)
        start = time.perf_counter()
        result = fit(model, data, config, device, log=lambda _: None)
        seconds = time.perf_counter() - start
        test = evaluate(model, Loader(data.test, data.info, 512, device))
        print(f"| {seed} | {args.epochs} | {seconds:.1f} | {result.best_val_acc:.4f} | {test:.4f} |")


if __name__ == "__main__":
    main()
