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


def test_reference_rules_round_trip_through_the_dialog(qapp):
    from annotator.gui.settings_dialog import SettingsDialog

    dlg = SettingsDialog(ProjectSettings())
    s = dlg.settings()  # the defaults come back unchanged, the prior weight automatic
    assert (s.boxes, s.combine, s.prior_weight, s.soft_argmax) == ("auto", "prototype", None,
                                                                   None)
    assert dlg.prior_weight.text().startswith("auto")
    dlg.boxes.setCurrentIndex(dlg.boxes.findData("none"))
    dlg.combine.setCurrentIndex(dlg.combine.findData("best"))
    dlg.prior_weight.setValue(0.05)
    s = dlg.settings()
    assert (s.boxes, s.combine, s.prior_weight) == ("none", "best", 0.05)
    dlg.close()
    again = SettingsDialog(s).settings()  # what was set shows again as set
    assert (again.boxes, again.combine, again.prior_weight) == ("none", "best", 0.05)
    dlg.prior_weight.setValue(0.0)  # 0 is "off", not "auto"
    assert dlg.settings().prior_weight == 0.0
