"""Settings dialog: the four presets, their fusion/flip defaults, the UNet and DIY-SC fields."""

from annotator.domain import ProjectSettings


def test_presets_and_weight_fields(qapp):
    from annotator.gui.settings_dialog import SettingsDialog

    dlg = SettingsDialog(ProjectSettings())
    names = [dlg.preset.itemText(i) for i in range(dlg.preset.count())]
    assert names == ["paper", "fast", "geoaware", "diy"]
    assert dlg.settings().preset == "paper"  # the default stays the paper's
    dlg.preset.setCurrentText("diy")
    s = dlg.settings()
    assert (s.preset, s.fusion, s.flip) == ("diy", "dino", False)
    dlg.preset.setCurrentText("geoaware")
    dlg.sd_unet.edit.setText(" CompVis/cleandift/cleandift_sd15_unet.safetensors ")
    dlg.diy_checkpoint.edit.setText("/w/diy.pth")
    s = dlg.settings()
    assert (s.preset, s.fusion, s.flip) == ("geoaware", "concat", True)
    assert s.sd_unet == "CompVis/cleandift/cleandift_sd15_unet.safetensors"
    assert s.diy_checkpoint == "/w/diy.pth"
    dlg.close()
