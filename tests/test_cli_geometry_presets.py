"""``annotator geometry --presets all`` reports every preset side by side (content descriptor:
the presets' matching rules on real photos; the weights are absent here)."""

import json

from annotator.cli import main


def test_geometry_reports_every_preset(tmp_path):
    out = tmp_path / "geo"
    rc = main(["geometry", "--images", "astronaut", "--keypoints", "8", "--max-side", "128",
               "--no-cache", "--presets", "all", "--out", str(out)])
    assert rc == 0
    runs = json.loads((out / "geometry.json").read_text())["runs"]
    assert list(runs) == ["content:paper", "content:fast", "content:geoaware", "content:diy"]
    assert runs["content:geoaware"]["settings"]["preset"] == "geoaware"

    def mirror_pck(name):
        return runs[name]["per_category"]["mirror"]["per_keypoint"][-1]  # largest alpha

    # the content descriptor is not mirror invariant: geoaware's adaptive pose alignment
    # (mutual-NN choice of the flipped reference) finds mirrored copies, diy (no flip) cannot
    assert mirror_pck("content:geoaware") >= 0.9
    assert mirror_pck("content:diy") < mirror_pck("content:geoaware")
    assert main(["geometry", "--presets", "paper,nope", "--out", str(out)]) == 2
