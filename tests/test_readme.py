"""The README's API example runs as written (against tiny random models via the env vars)."""

import re
from pathlib import Path

from PIL import Image
from skimage import data

README = Path(__file__).resolve().parents[1] / "README.md"


def block_after(marker: str) -> str:
    text = README.read_text()
    tail = text[text.index(marker):]
    return re.search(r"```(?:python|bash)\n(.*?)```", tail, re.S).group(1)


def test_api_example_runs_as_written(tmp_path, monkeypatch, tiny_model_dirs, capsys):
    sd_dir, dino_dir = tiny_model_dirs
    monkeypatch.setenv("ANNOTATOR_SD_MODEL", str(sd_dir))
    monkeypatch.setenv("ANNOTATOR_DINO_MODEL", str(dino_dir))
    monkeypatch.chdir(tmp_path)
    img = data.chelsea()
    Image.fromarray(img).save("ref.jpg")
    Image.fromarray(img[20:, 30:]).save("target.jpg")
    exec(compile(block_after("<!-- api-example -->"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    # paper preset grids: s5 15 x 15, s4 30 x 30, s3 60 x 60, DINOv2 60 x 60
    assert re.search(r"'s5': \(\d+, 15, 15\)", out) and re.search(r"'s3': \(\d+, 60, 60\)", out)
    assert re.search(r"'dino': \(\d+, 60, 60\)", out)


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "test-command" in ci and "torch==2.13.0" in ci
    assert "pytest" in block_after("<!-- test-command -->")
