"""Cost of a saliency-guided training step (CEntIoU, HiResCAM with ``create_graph``) vs a plain one.

    python benchmarks/saliency_step.py --quick    # ~1 min on 2 cores
    python benchmarks/saliency_step.py            # more batches and repeats, both backbones

The same batches (images, lesion masks, labels) train a fresh ``classification`` system (CE only,
no CAMs) and a fresh ``saliency_classification`` system (``ce_weight`` 0.5: CE + soft IoU of the
true class's HiResCAM with the mask, backpropagated) on the same backbone, with ``Trainer.fit`` as
in trials, one thread, 64 px, batch 16; repeats interleave A and B. Prints the ratio last.
"""

from __future__ import annotations

import argparse

import torch
from common import load, median, synth_caches
from step_throughput import CONFIG, collect_batches, lightning_loop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n_batches, repeats = (10, 3) if args.quick else (40, 5)
    backbones = ["resnet18"] if args.quick else ["resnet18", "mobilenet_v3_small"]
    torch.set_num_threads(1)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from medtune.engine.build import build_datamodule

    _, caches, k = synth_caches()
    batches = collect_batches(build_datamodule(CONFIG, caches=caches), n_batches)
    ratios = {}
    for backbone in backbones:
        plain = {**CONFIG, "model.name": backbone}
        saliency = {**plain, "train.ce_weight": 0.5}
        saliency.pop("train.saliency_metric")  # always on in the saliency task
        a, b = [], []
        for r in range(repeats):  # ABBA order: drifting load hits both sides alike
            order = [(a, "classification", plain), (b, "saliency_classification", saliency)][:: 1 if r % 2 == 0 else -1]
            for out, task, config in order:
                out.append(lightning_loop(batches, k, task, config))
            print(f"{backbone} repeat {r}: whole-image {a[-1]:.1f} img/s, saliency {b[-1]:.1f} img/s ({load()})")
        ratios[backbone] = median(a) / median(b)
        print(f"{backbone}: median whole-image {median(a):.1f} img/s, saliency {median(b):.1f} img/s")
    print("RATIO saliency step / whole-image step = " + ", ".join(f"{n} {v:.2f}x" for n, v in ratios.items()))


if __name__ == "__main__":
    main()
