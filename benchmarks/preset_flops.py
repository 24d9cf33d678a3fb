"""FLOPs and CPU seconds of the diy preset per image (full-size DINOv2-B with random weights from
benchmarks/configs + the DIY-SC adapter, a 640 x 480 synthetic image, DINOv2 at 840):

    PYTHONPATH=. python benchmarks/preset_flops.py

Prints one JSON line. (``annotator bench --presets diy`` measures the same inside the full
benchmark, with the baseline and the transfer parts.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def main() -> dict[str, float]:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from annotator.bench.runner import synthetic_image
    from annotator.bench.util import count_flops
    from annotator.features.adapter import DiyAdapter
    from annotator.features.config import DIY
    from annotator.features.models import DinoComponents
    from annotator.features.sd_dino import SDDinoExtractor

    torch.manual_seed(0)
    raw = json.loads((Path(__file__).parent / "configs" / "dinov2.json").read_text())
    model = Dinov2Model(Dinov2Config(**{k: v for k, v in raw.items() if not k.startswith("_")}))
    adapter = DiyAdapter()
    ex = SDDinoExtractor(None, DinoComponents(model.eval(), "random"), DIY, adapter=adapter)
    img = synthetic_image((480, 640), 1)
    with count_flops() as fc:
        ex.extract([img])
    x = torch.randn(1, 768, 60, 60)
    with count_flops() as fa, torch.inference_mode():
        adapter(x)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        ex.extract([img])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        adapter(x)
    return {"diy_tflop_per_image": fc.get_total_flops() / 1e12,
            "adapter_gflop": fa.get_total_flops() / 1e9, "diy_cpu_s_per_image": min(times),
            "adapter_cpu_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(main()))
