"""Engine settings: model ids or local folders, device, precision, preset, cache."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QWidget,
)

from annotator.domain import ProjectSettings
from annotator.io.cache_folder import cache_folder_problem
from annotator.jobs.engine_factory import fusion_names, preset_names, preset_values

DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("fp32", "fp16", "bf16")


def _combo(values: tuple[str, ...], current: str) -> QComboBox:
    box = QComboBox()
    box.setEditable(current not in values)
    box.addItems(list(values) + ([current] if current not in values else []))
    box.setCurrentText(current)
    return box


class PathField(QWidget):
    """A line edit with a Browse... button for a folder."""

    def __init__(self, text: str, title: str, parent: QWidget | None = None,
                 file_filter: str | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(text)
        self.button = QPushButton("Browse...")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button)
        if file_filter is None:
            self.button.clicked.connect(
                lambda: self.edit.setText(
                    QFileDialog.getExistingDirectory(self, title, self.edit.text())
                    or self.edit.text()
                )
            )
        else:
            self.button.clicked.connect(
                lambda: self.edit.setText(
                    QFileDialog.getOpenFileName(self, title, self.edit.text(), file_filter)[0]
                    or self.edit.text()
                )
            )

    def text(self) -> str:
        return self.edit.text().strip()


class SettingsDialog(QDialog):
    """Edit a :class:`ProjectSettings`; ``settings()`` returns the result."""

    def __init__(self, settings: ProjectSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.resize(620, 380)
        self._base = settings
        self.sd_model = PathField(settings.sd_model, "Stable Diffusion 1.5 folder")
        self.sd_model.edit.setToolTip("Hugging Face id or a local diffusers folder")
        self.dino_model = PathField(settings.dino_model, "DINOv2 folder")
        self.dino_model.edit.setToolTip("Hugging Face id or a local transformers folder")
        self.preset = _combo(preset_names(), settings.preset)
        self.preset.setToolTip(
            "paper: A Tale of Two Features (SD 1.5 + DINOv2); fast: smaller and 4x cheaper; "
            "geoaware: GeoAware-SC zero-shot (FreeU, flip by mutual nearest neighbours); "
            "diy: DIY-SC adapter on DINOv2 only (about 11x cheaper than paper)")
        own = preset_values(settings.preset)  # what the settings left None mean
        self.fusion = _combo(fusion_names(), settings.fusion or own.fusion)
        self.sd_unet = PathField(settings.sd_unet, "UNet weights (safetensors)",
                                 file_filter="safetensors (*.safetensors)")
        self.sd_unet.edit.setPlaceholderText("none; e.g. CompVis/cleandift/"
                                             "cleandift_sd15_unet.safetensors")
        self.sd_unet.edit.setToolTip("CleanDIFT UNet: a local file or owner/repo/file on the "
                                     "hub; uses clean latents at t=261 without FreeU")
        self.diy_checkpoint = PathField(settings.diy_checkpoint, "DIY-SC checkpoint",
                                        file_filter="PyTorch state dict (*.pth *.pt)")
        self.diy_checkpoint.edit.setPlaceholderText("default: downloaded once (sha256-checked)")
        self.device = _combo(DEVICES, settings.device)
        self.dtype = _combo(DTYPES, settings.dtype)
        self.flip = QCheckBox("Flip-aware matching (uses left/right partners)")
        self.flip.setChecked(own.flip if settings.flip is None else settings.flip)
        self.preset.currentTextChanged.connect(self._preset_changed)
        self.soft_argmax = QCheckBox("Sub-cell refinement (window soft-argmax)")
        self.soft_argmax.setChecked(own.soft_argmax if settings.soft_argmax is None
                                    else settings.soft_argmax)
        self._shown = self._engine_choice()
        self.use_head = QCheckBox("Learn from reviewed images")
        self.use_head.setChecked(settings.use_head)
        self.use_head.setToolTip("Train a keypoint model on the reviewed images (a few seconds, "
                                 "in the background; Run > Retrain) and let propagation use it "
                                 "where it is more confident than transfer")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(settings.review_threshold)
        self.cache_dir = PathField(settings.cache_dir, "Feature cache folder")
        self.cache_dir.edit.setPlaceholderText("default: the user cache folder")
        self.cache_cap = QDoubleSpinBox()
        self.cache_cap.setRange(0.1, 10_000.0)  # > 0: the cache needs room
        self.cache_cap.setSuffix(" GB")
        self.cache_cap.setValue(settings.cache_cap_gb)
        form = QFormLayout(self)
        form.addRow("SD 1.5 model", self.sd_model)
        form.addRow("DINOv2 model", self.dino_model)
        form.addRow("Preset", self.preset)
        form.addRow("Fusion", self.fusion)
        form.addRow("SD UNet weights", self.sd_unet)
        form.addRow("DIY-SC checkpoint", self.diy_checkpoint)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.dtype)
        form.addRow("", self.flip)
        form.addRow("", self.soft_argmax)
        form.addRow("", self.use_head)
        form.addRow("Review below confidence", self.threshold)
        form.addRow("Cache folder", self.cache_dir)
        form.addRow("Cache size cap", self.cache_cap)
        self._add_instance_rows(form, settings)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _add_instance_rows(self, form: QFormLayout, settings: ProjectSettings) -> None:
        """Instances: crop transfer and the zero-shot box detector."""
        self.crop = QCheckBox("Transfer between crops around instance boxes")
        self.crop.setChecked(settings.crop == "bbox")
        self.crop_margin = QDoubleSpinBox()
        self.crop_margin.setRange(0.0, 2.0)
        self.crop_margin.setSingleStep(0.05)
        self.crop_margin.setValue(settings.crop_margin)
        self.detector_model = PathField(settings.detector_model, "Box detector folder")
        self.detector_model.edit.setToolTip("OWLv2: Hugging Face id or a local folder")
        self.detect_prompt = QLineEdit(settings.detect_prompt)
        self.detect_prompt.setPlaceholderText("default: the schema's category name")
        self.detect_threshold = QDoubleSpinBox()
        self.detect_threshold.setRange(0.0, 1.0)
        self.detect_threshold.setSingleStep(0.05)
        self.detect_threshold.setValue(settings.detect_threshold)
        self.detect_max = QSpinBox()
        self.detect_max.setRange(1, 1000)
        self.detect_max.setValue(settings.detect_max_boxes)
        self.boxes = QComboBox()
        self.boxes.addItem("Find the object from the references", "auto")
        self.boxes.addItem("Match the whole image", "none")
        self.boxes.setCurrentIndex(max(0, self.boxes.findData(settings.boxes)))
        self.boxes.setToolTip("Targets without boxes: find the labelled kind of object by "
                              "feature similarity (no detector) and transfer between crops")
        self.combine = QComboBox()
        self.combine.addItem("Prototypes (mean descriptor per keypoint)", "prototype")
        self.combine.addItem("Most confident reference", "best")
        self.combine.setCurrentIndex(max(0, self.combine.findData(settings.combine)))
        self.prior_weight = QDoubleSpinBox()
        self.prior_weight.setRange(-0.01, 1.0)
        self.prior_weight.setSingleStep(0.01)
        self.prior_weight.setDecimals(2)
        self.prior_weight.setSpecialValueText("auto (leave one reference out)")
        self.prior_weight.setValue(-0.01 if settings.prior_weight is None
                                   else settings.prior_weight)
        self.prior_weight.setToolTip("Weight of where the keypoint sits in the references' "
                                     "boxes against feature similarity (0: off). With a "
                                     "prior, a keypoint stays at that place unless the "
                                     "features clearly prefer another")
        self.crop_canvas = QComboBox()
        self.crop_canvas.addItem("Auto (large objects at 448 px)", "auto")
        self.crop_canvas.addItem("The preset's", "preset")
        self.crop_canvas.setCurrentIndex(max(0, self.crop_canvas.findData(
            settings.crop_canvas)))
        self.crop_canvas.setToolTip("Canvas of crop transfer: with auto, references whose "
                                    "crops are 224 px or larger are matched at the fast "
                                    "preset's 448 px canvas (same models), smaller ones "
                                    "upsampled to the preset's")
        form.addRow("Targets without boxes", self.boxes)
        form.addRow("Several references", self.combine)
        form.addRow("Position prior weight", self.prior_weight)
        form.addRow("", self.crop)
        form.addRow("Crop margin (per side)", self.crop_margin)
        form.addRow("Crop canvas", self.crop_canvas)
        form.addRow("Box detector model", self.detector_model)
        form.addRow("Detection prompt", self.detect_prompt)
        form.addRow("Detection score threshold", self.detect_threshold)
        form.addRow("Max boxes per image", self.detect_max)

    def _preset_changed(self, name: str) -> None:
        """A preset brings its own fusion and flip (still editable)."""
        if name in preset_names():
            own = preset_values(name)
            self.fusion.setCurrentText(own.fusion)
            self.flip.setChecked(own.flip)

    def _engine_choice(self) -> tuple[str, str, bool, bool]:
        return (self.preset.currentText(), self.fusion.currentText(), self.flip.isChecked(),
                self.soft_argmax.isChecked())

    def _kept(self, name: str) -> str | bool | None:
        """Fusion, flip or soft-argmax: the project's own value (None: the preset's) while the
        preset and this value are as the dialog first showed them, else what it shows."""
        index = ("fusion", "flip", "soft_argmax").index(name) + 1
        now = self._engine_choice()
        if now[0] == self._shown[0] and now[index] == self._shown[index]:
            return getattr(self._base, name)
        return now[index]

    def accept(self) -> None:
        """Refuse a cache folder that holds other files (the cache would never use it)."""
        problem = cache_folder_problem(self.cache_dir.text()) if self.cache_dir.text() else None
        self.problem = problem
        if problem is not None:
            QMessageBox.warning(self, "Cache folder", problem)
            return
        super().accept()

    def settings(self) -> ProjectSettings:
        return replace(
            self._base,
            crop="bbox" if self.crop.isChecked() else "none",
            boxes=self.boxes.currentData(),
            combine=self.combine.currentData(),
            prior_weight=(None if self.prior_weight.value() < 0
                          else float(self.prior_weight.value())),
            crop_margin=float(self.crop_margin.value()),
            crop_canvas=self.crop_canvas.currentData(),
            detector_model=self.detector_model.text() or self._base.detector_model,
            detect_prompt=self.detect_prompt.text().strip(),
            detect_threshold=float(self.detect_threshold.value()),
            detect_max_boxes=int(self.detect_max.value()),
            sd_model=self.sd_model.text() or self._base.sd_model,
            dino_model=self.dino_model.text() or self._base.dino_model,
            preset=self.preset.currentText(),
            fusion=self._kept("fusion"),
            device=self.device.currentText(),
            dtype=self.dtype.currentText(),
            flip=self._kept("flip"),
            soft_argmax=self._kept("soft_argmax"),
            use_head=self.use_head.isChecked(),
            review_threshold=float(self.threshold.value()),
            cache_dir=self.cache_dir.text(),
            cache_cap_gb=float(self.cache_cap.value()),
            sd_unet=self.sd_unet.text(),
            diy_checkpoint=self.diy_checkpoint.text(),
        )
