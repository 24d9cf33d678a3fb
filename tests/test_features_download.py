"""First run: weights come through huggingface_hub.snapshot_download with progress reported."""

import huggingface_hub

from annotator.features.config import ModelSource
from annotator.features.models import load_dino


def test_hub_download_reports_file_progress(monkeypatch, tiny_model_dirs):
    _, dino_dir = tiny_model_dirs
    calls = {}

    def fake_snapshot_download(repo, *, tqdm_class=None, allow_patterns=None, **kw):
        calls.update(repo=repo, patterns=allow_patterns, kw=kw)
        files = ["config.json", "model.safetensors"]
        bar = tqdm_class(total=len(files), disable=True)
        for _ in files:
            bar.update(1)
        bar.close()
        return str(dino_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    seen = []
    comps = load_dino(ModelSource(dino_model="someone/dinov2-small-test"), "cpu", None,
                      progress=lambda what, done, total: seen.append((what, done, total)))
    assert calls["repo"] == "someone/dinov2-small-test"
    assert "model.safetensors" in calls["patterns"] and calls["kw"]["local_files_only"] is False
    assert seen == [("DINOv2", 1, 2), ("DINOv2", 2, 2)]
    assert comps.model.config.model_type == "dinov2"
