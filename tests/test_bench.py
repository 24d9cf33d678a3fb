"""The benchmark machinery on tiny models (scaled-down configs with the real layouts)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from tests.tiny_models import TINY, TINY_FAST

SMALL_MAPS = {"s5": 32, "s4": 32, "s3": 16, "dino": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread avoids oversubscription when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_parts():
    from annotator.bench.models import build_components, tiny_configs

    return build_components(tiny_configs(), "cpu")


def test_shipped_configs_are_full_size():
    from annotator.bench.models import load_configs

    cfg = load_configs()
    assert cfg["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["unet"]["cross_attention_dim"] == 768
    assert cfg["vae"]["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["vae"]["scaling_factor"] == pytest.approx(0.18215)
    assert cfg["text_encoder"]["hidden_size"] == 768
    assert cfg["text_encoder"]["num_hidden_layers"] == 12
    assert cfg["dinov2"]["hidden_size"] == 768 and cfg["dinov2"]["patch_size"] == 14
    assert cfg["scheduler"]["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize("config", [TINY, TINY_FAST], ids=["tiles", "single"])
def test_baseline_gives_the_engine_features(tiny_parts, config):
    """Same weights, same image: the reference-style baseline (batch 1, full UNet, decoder,
    classic attention) and the optimised extractor give the same raw maps."""
    from annotator.bench.baseline import BaselineExtractor
    from annotator.bench.runner import synthetic_image
    from annotator.features.sd_dino import SDDinoExtractor

    sd, dino = tiny_parts
    img = synthetic_image((90, 130), 1)
    engine = SDDinoExtractor(sd, dino, config).extract([img])[0].layers
    base = BaselineExtractor(sd, dino, config).extract_one(img)
    assert set(base) == set(engine) == {"s3", "s4", "s5", "dino"}
    for key in engine:
        assert base[key].shape == engine[key].shape
        torch.testing.assert_close(base[key], engine[key], atol=1e-4, rtol=1e-4)
    # the baseline left the models with their SDPA processors
    from diffusers.models.attention_processor import AttnProcessor

    assert not any(isinstance(p, AttnProcessor) for p in sd.unet.attn_processors.values())


def test_loop_match_agrees_with_vectorised_match():
    from annotator.bench.baseline import loop_match
    from annotator.features.letterbox import Letterbox
    from annotator.matching.transfer import MatchParams, query_cells, transfer

    g = torch.Generator().manual_seed(0)
    ref, tgt = torch.randn(8, 6, 6, generator=g), torch.randn(8, 6, 6, generator=g)
    lb = Letterbox.fit(60, 60, 60)
    pts = np.array([[5.0, 5.0], [33.0, 12.0], [58.0, 40.0]])
    cells = query_cells(lb.to_canvas(pts), 10.0, 6)
    best = loop_match(ref, tgt, cells)
    res = transfer(ref, tgt, pts, lb, lb, MatchParams(soft_window=0))
    want = np.floor(lb.to_canvas(res.points) / 10.0).astype(int)
    np.testing.assert_array_equal(best, want)


def test_bench_run_produces_table_and_json(tmp_path):
    from annotator.bench.models import tiny_configs
    from annotator.bench.runner import BenchOptions, format_table, run_bench, write_json

    msgs: list[str] = []
    opts = BenchOptions(
        quick=True, device="cpu", presets={"tiny-fast": TINY_FAST, "tiny": TINY},
        configs=tiny_configs(), image_hw=(60, 80), transfer_preset="tiny", disk_targets=3,
        memory_targets=3, targets=1000, peak_size=128, peak_seconds=0.2, map_channels=SMALL_MAPS,
        gui=lambda say: {"open_seconds": 0.5, "max_stall_ms": 12.0})
    res = run_bench(opts, msgs.append)
    assert msgs
    for name in ("tiny-fast", "tiny"):
        e = res["extraction"][name]
        for part in ("engine", "baseline"):
            assert e[part]["seconds_per_image"] > 0
            assert e[part]["flops_per_image"] > 0
            assert e[part]["achieved_flops_per_s"] > 0
            assert 0 < e[part]["fraction_of_peak"]
            assert e[part]["memory"]["peak_bytes"] > 0
        assert e["speedup"] > 0
        eng = e["engine"]
        # the first call is timed on its own; the steady state comes from the later runs
        assert eng["first_call_seconds"] > 0 and len(eng["seconds_per_image_all"]) >= 1
        assert eng["warmup_seconds"] == pytest.approx(
            max(0.0, eng["first_call_seconds"] - eng["seconds_per_image"] * eng["images"]))
        assert e["one_off_seconds"] == pytest.approx(res["model_build_seconds"]
                                                     + eng["warmup_seconds"])
        assert e["projected_seconds"] == pytest.approx(e["one_off_seconds"]
                                                       + 1000 * eng["seconds_per_image"])
    base = res["extraction"]["tiny"]["baseline"]
    assert base["extrapolated"] and base["tiles_measured"] == 0 and base["tiles"] == 4
    assert base["tile_figures_from"] == "tiny-fast"
    assert {"text", "vae_encode", "unet", "vae_decode", "dino"} <= set(base["stages_seconds"])
    assert res["peak"]["flops_per_s"] > 0
    assert res["ablations"]["unet_full_sdpa_s"] > 0
    assert res["ablations"]["vae_encode_contiguous_s"] > 0
    assert res["ablations"]["unet_early_stop_contiguous_s"] > 0
    tr = res["transfer"]
    assert tr["cache_bytes_per_image"] > 0
    assert set(tr["fusions"]) == {"concat", "concat-lockstep", "copca", "copca-run"}
    for case in ("copca", "copca-run", "concat", "concat-lockstep"):
        for where in ("disk", "memory"):
            d = tr["fusions"][case][where]
            assert d["targets_measured"] == 3
            # measured after the warm-up in one run: never 0, and no part exceeds the whole
            assert d["seconds"] > 0 and d["seconds_per_target"] > 0
            warmup = d["one_off_seconds"] - d.get("basis_fit_seconds", 0.0)  # copca-run's fit
            w = d["warmup_targets"]
            assert 0 < warmup < d["seconds"]
            assert warmup + (3 - w) * d["seconds_per_target"] == pytest.approx(d["seconds"])
            assert d["projected_seconds"] == pytest.approx(
                d["one_off_seconds"] + (1000 - w) * d["seconds_per_target"])
    assert tr["fusions"]["concat"]["disk"]["prefetch"] == 8
    assert tr["fusions"]["concat-lockstep"]["disk"]["prefetch"] == 0
    assert tr["fusions"]["copca-run"]["memory"]["basis_fit_seconds"] > 0
    assert tr["match_loop_seconds_per_target"] > 0
    assert res["gui"]["open_seconds"] == 0.5
    table = format_table(res)
    assert "ratio" in table and "tiny-fast" in table and "transfer" in table
    path = write_json(res, tmp_path / "bench.json")
    back = json.loads(path.read_text())
    assert set(back) >= {"machine", "peak", "extraction", "transfer", "gui", "date"}


def test_transfer_projection_separates_the_one_off():
    """A one-off of 0.3 s (reference preparation) and 10 ms per target, matched in batches of 4
    (so the first result arrives only after a whole batch): the steady state is 10 ms and the
    projection about 0.3 + 1000 x 0.01 s, not 1000 x the mean over the measured targets.
    A simulated clock: exact figures whatever the machine's load."""
    from annotator.bench.runner import _time_transfer

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    class Batched:
        def iter_transfer(self, refs, targets, flip=None, prefetch=0):
            sleep(0.3)
            batch = []
            for t in targets:
                batch.append(t)
                if len(batch) == 4:
                    sleep(0.01 * len(batch))
                    yield from batch
                    batch = []
            sleep(0.01 * len(batch))
            yield from batch

    r = _time_transfer(Batched, np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)),
                       [np.zeros((4, 4, 3), np.uint8)] * 21, 4, 1000, clock=lambda: now[0])
    assert r["targets_measured"] == 21
    assert r["seconds_per_target"] == pytest.approx(0.01)
    assert r["one_off_seconds"] == pytest.approx(0.34)  # 0.3 + the first batch of 4
    assert r["projected_seconds"] == pytest.approx(0.34 + 0.01 * 996)
    with pytest.raises(ValueError, match="at least 2"):
        _time_transfer(Batched, np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)),
                       [np.zeros((4, 4, 3), np.uint8)], 4, 1000)


def test_time_transfer_repeats_keep_the_best_steady_state():
    """A noisy machine: the first repetition is slow (30 ms per target), the second fast
    (10 ms); the report keeps the fast one and lists both."""
    import time

    from annotator.bench.runner import _time_transfer

    per_target = iter([0.03, 0.01])  # per repetition

    class Noisy:
        def iter_transfer(self, refs, targets, flip=None, prefetch=0):
            cost = next(per_target)
            for t in targets:
                time.sleep(cost)
                yield t

    r = _time_transfer(Noisy, np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)),
                       [np.zeros((4, 4, 3), np.uint8)] * 11, 0, 1000, repeats=2)
    assert r["repeats"] == 2 and len(r["seconds_per_target_all"]) == 2
    assert r["seconds_per_target_all"][0] > 0.025
    assert 0.009 <= r["seconds_per_target"] < 0.02
    with pytest.raises(ValueError, match="repeats"):
        _time_transfer(Noisy, np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)),
                       [np.zeros((4, 4, 3), np.uint8)] * 3, 0, 1000, repeats=0)


class _Instant:
    """An engine whose results cost nothing: the timings come from the test's clock."""

    def iter_transfer(self, refs, targets, flip=None, prefetch=0):  # noqa: ANN001, ANN201
        yield from targets


def _clock(*times: float):
    ticks = iter(times)
    return lambda: next(ticks)


def test_steady_state_is_timed_after_the_warm_up_in_one_run():
    """Start 0, first result at 0.5 s (reference preparation + one target), then one result
    every 10 ms: the steady state is measured directly (10 ms), the warm-up is 0.5 s."""
    from annotator.bench.runner import _time_transfer

    times = (0.0, 0.5, *(0.5 + 0.01 * i for i in range(1, 20)))
    r = _time_transfer(_Instant, np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)),
                       [np.zeros((4, 4, 3), np.uint8)] * 20, 0, 1000, clock=_clock(*times))
    assert r["warmup_targets"] == 1 and r["targets_measured"] == 20
    assert r["seconds_per_target"] == pytest.approx(0.01)
    assert r["one_off_seconds"] == pytest.approx(0.5)
    assert r["seconds"] == pytest.approx(0.69)
    assert r["projected_seconds"] == pytest.approx(0.5 + 999 * 0.01)


def test_impossible_transfer_figures_are_refused():
    """The issue's case (a steady state of 0 ms/target) and its relatives are never reported:
    a repetition with such figures is dropped, and with none left the timing refuses."""
    from annotator.bench.runner import ImpossibleFigure, _time_transfer, check_transfer_figures

    img, pts = np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2))
    burst = (0.0, *([0.6] * 10))  # every result in one burst: nothing after the warm-up
    with pytest.raises(ImpossibleFigure, match="steady state 0.000 ms/target is not > 0"):
        _time_transfer(_Instant, img, pts, [img] * 10, 0, 1000, clock=_clock(*burst))
    stalled = (0.0, 0.0, *(0.1 * i for i in range(1, 10)))  # a clock that did not move
    with pytest.raises(ImpossibleFigure, match="warm-up 0.000 s is not > 0"):
        _time_transfer(_Instant, img, pts, [img] * 10, 0, 1000, clock=_clock(*stalled))
    sane = (0.0, 0.2, *(0.2 + 0.05 * i for i in range(1, 10)))
    r = _time_transfer(_Instant, img, pts, [img] * 10, 0, 1000, repeats=2,
                       clock=_clock(*burst, *sane))
    assert r["seconds_per_target"] == pytest.approx(0.05)
    assert r["seconds_per_target_all"] == [pytest.approx(0.05)] and len(r["refused"]) == 1
    with pytest.raises(ImpossibleFigure, match="exceeds the whole run"):
        check_transfer_figures(total=0.52, warmup=0.62, steady=0.001, timed=20)
    check_transfer_figures(total=0.52, warmup=0.1, steady=0.02, timed=20)  # 0.1 + 0.4 <= 0.52


def test_cli_registers_bench():
    from annotator.cli import bench as cli_bench

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_bench.add_parser(sub)
    args = parser.parse_args(["bench", "--quick", "--device", "cpu", "--out", "x.json"])
    assert args.quick and args.device == "cpu" and callable(args.func)


def test_count_flops_counts_cpu_attention():
    """SDPA on the CPU dispatches to a flash kernel torch's counter has no formula for; the
    bench's counter adds it: QK^T and AV are 2 * N * M * d FLOPs each, per batch and head."""
    import torch.nn.functional as F

    from annotator.bench.util import count_flops

    q = torch.randn(2, 3, 50, 16)
    k = torch.randn(2, 3, 70, 16)
    with count_flops() as fc:
        F.scaled_dot_product_attention(q, k, k)
    assert fc.get_total_flops() == 2 * 3 * (2 * 50 * 70 * 16) * 2
    with count_flops() as fc:  # and matmuls are still counted as before
        q @ k.transpose(-1, -2)
    assert fc.get_total_flops() == 2 * 3 * 2 * 50 * 70 * 16


def test_peak_is_the_better_of_blas_and_the_convolution_kernel():
    from annotator.bench.util import matmul_peak

    p = matmul_peak("cpu", torch.float32, 64, seconds=0.2)
    assert p["matmul_flops_per_s"] > 0 and p["conv1x1_flops_per_s"] > 0
    assert p["flops_per_s"] == max(p["matmul_flops_per_s"], p["conv1x1_flops_per_s"])
    assert p["kernel"] == ("conv1x1" if p["conv1x1_flops_per_s"] > p["matmul_flops_per_s"]
                           else "matmul")
    odd = matmul_peak("cpu", torch.float32, 60, seconds=0.1)  # not a square pixel count
    assert odd["conv1x1_flops_per_s"] == 0 and odd["kernel"] == "matmul"
