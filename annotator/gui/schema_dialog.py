"""Define or edit the keypoint schema: template, names, order, colours, skeleton, flip pairs.

Every edit goes through the immutable :class:`KeypointSchema` operations; the dialog composes
their index maps so the project can remap existing annotations consistently on accept.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import KeypointSchema, SchemaError
from annotator.domain.schema import IndexMap
from annotator.io.templates import list_templates, load_template


def compose(first: IndexMap, second: IndexMap) -> IndexMap:
    """Index map of ``first`` followed by ``second``."""
    return tuple(None if i is None else second[i] for i in first)


def default_schema() -> KeypointSchema:
    return KeypointSchema("object", ("point_1",))


class PairEditor(QGroupBox):
    """A list of index pairs with two pickers and Add/Remove buttons."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.list = QListWidget()
        self.a = QComboBox()
        self.b = QComboBox()
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        row = QHBoxLayout()
        for w in (self.a, self.b, self.add_button, self.remove_button):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(row)

    def show_pairs(self, names: tuple[str, ...], pairs: tuple[tuple[int, int], ...]) -> None:
        for box in (self.a, self.b):
            keep = box.currentIndex()
            box.clear()
            box.addItems(list(names))
            box.setCurrentIndex(min(max(keep, 0), len(names) - 1))
        self.list.clear()
        self.list.addItems([f"{names[a]} - {names[b]}" for a, b in pairs])


class SchemaDialog(QDialog):
    """Edits a schema; ``schema`` and ``index_map`` (old -> new) hold the result."""

    def __init__(self, schema: KeypointSchema | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keypoint schema")
        self.resize(720, 560)
        self.original = schema or default_schema()
        self.schema = self.original
        self.index_map: IndexMap = tuple(range(len(self.original)))
        self._updating = False

        self.name_edit = QLineEdit(self.schema.name)
        self.supercategory_edit = QLineEdit(self.schema.supercategory)
        self.supercategory_edit.setPlaceholderText("same as the category")
        self.template_box = QComboBox()
        self.template_box.addItems(list_templates())
        self.template_box.setPlaceholderText("choose...")
        # show the template the schema comes from, if any, never an unrelated first entry
        self.template_box.setCurrentIndex(self.template_box.findText(self.schema.name))
        self.template_button = QPushButton("Use template")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Keypoint", "Colour"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(90)
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("new keypoint name")
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.skeleton = PairEditor("Skeleton edges")
        self.flips = PairEditor("Left/right partners")
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #d04040")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )

        top = QHBoxLayout()
        top.addWidget(QLabel("Category"))
        top.addWidget(self.name_edit, 1)
        top.addWidget(QLabel("Supercategory"))
        top.addWidget(self.supercategory_edit, 1)
        top.addWidget(QLabel("Template"))
        top.addWidget(self.template_box)
        top.addWidget(self.template_button)
        edit_row = QHBoxLayout()
        for w in (self.new_name, self.add_button, self.remove_button, self.up_button,
                  self.down_button):
            edit_row.addWidget(w)
        grid = QGridLayout()
        grid.addWidget(self.table, 0, 0, 2, 1)
        grid.addWidget(self.skeleton, 0, 1)
        grid.addWidget(self.flips, 1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(grid, 1)
        layout.addLayout(edit_row)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)

        self.template_button.clicked.connect(
            lambda: self.use_template(self.template_box.currentText())
        )
        self.add_button.clicked.connect(lambda: self.add_keypoint(self.new_name.text()))
        self.new_name.returnPressed.connect(lambda: self.add_keypoint(self.new_name.text()))
        self.remove_button.clicked.connect(lambda: self.remove_keypoint(self.table.currentRow()))
        self.up_button.clicked.connect(lambda: self.move_keypoint(self.table.currentRow(), -1))
        self.down_button.clicked.connect(lambda: self.move_keypoint(self.table.currentRow(), 1))
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.cellDoubleClicked.connect(self._on_double_click)
        self.skeleton.add_button.clicked.connect(
            lambda: self.add_edge(self.skeleton.a.currentIndex(), self.skeleton.b.currentIndex())
        )
        self.skeleton.remove_button.clicked.connect(
            lambda: self.remove_edge(self.skeleton.list.currentRow())
        )
        self.flips.add_button.clicked.connect(
            lambda: self.add_flip_pair(self.flips.a.currentIndex(), self.flips.b.currentIndex())
        )
        self.flips.remove_button.clicked.connect(
            lambda: self.remove_flip_pair(self.flips.list.currentRow())
        )
        self.buttons.accepted.connect(self._on_accept)
        self.buttons.rejected.connect(self.reject)
        self._refresh()

    # ------------------------------------------------------------- edits
    def _apply(self, result: tuple[KeypointSchema, IndexMap]) -> None:
        schema, step = result
        self.schema = schema
        self.index_map = compose(self.index_map, step)
        self._refresh()

    def _guard(self, fn, *args) -> bool:  # noqa: ANN001
        try:
            fn(*args)
        except (SchemaError, ValueError, IndexError) as exc:
            self.error_label.setText(str(exc))
            return False
        self.error_label.clear()
        return True

    def use_template(self, name: str) -> bool:
        """Replace the keypoints by template ``name``; same-named keypoints keep their data."""

        def do() -> None:
            template = load_template(name)
            mapping = tuple(
                template.keypoints.index(n) if n in template.keypoints else None
                for n in self.schema.keypoints
            )
            self.schema = template
            self.index_map = compose(self.index_map, mapping)
            self.name_edit.setText(template.name)
            self.supercategory_edit.setText(template.supercategory)
            self.template_box.setCurrentIndex(self.template_box.findText(name))
            self._refresh()

        return self._guard(do)

    def add_keypoint(self, name: str) -> bool:
        ok = self._guard(lambda: self._apply(self.schema.add_keypoint(name.strip())))
        if ok:
            self.new_name.clear()
        return ok

    def remove_keypoint(self, index: int) -> bool:
        return self._guard(lambda: self._apply(self.schema.delete_keypoint(index)))

    def rename_keypoint(self, index: int, name: str) -> bool:
        return self._guard(lambda: self._apply(self.schema.rename_keypoint(index, name.strip())))

    def set_color(self, index: int, color: str) -> bool:
        return self._guard(lambda: self._apply(self.schema.set_color(index, color)))

    def move_keypoint(self, index: int, delta: int) -> bool:
        j = index + delta
        if not (0 <= index < len(self.schema) and 0 <= j < len(self.schema)):
            return False
        order = list(range(len(self.schema)))
        order[index], order[j] = order[j], order[index]
        ok = self._guard(lambda: self._apply(self.schema.reorder(order)))
        if ok:
            self.table.setCurrentCell(j, 0)
        return ok

    def add_edge(self, a: int, b: int) -> bool:
        edges = set(self.schema.skeleton)
        if (a, b) in edges or (b, a) in edges:
            return False
        return self._guard(
            lambda: self._set(self.schema.with_skeleton((*self.schema.skeleton, (a, b))))
        )

    def remove_edge(self, row: int) -> bool:
        edges = list(self.schema.skeleton)
        if not 0 <= row < len(edges):
            return False
        del edges[row]
        return self._guard(lambda: self._set(self.schema.with_skeleton(edges)))

    def add_flip_pair(self, a: int, b: int) -> bool:
        return self._guard(
            lambda: self._set(self.schema.with_flip_pairs((*self.schema.flip_pairs, (a, b))))
        )

    def remove_flip_pair(self, row: int) -> bool:
        pairs = list(self.schema.flip_pairs)
        if not 0 <= row < len(pairs):
            return False
        del pairs[row]
        return self._guard(lambda: self._set(self.schema.with_flip_pairs(pairs)))

    def _set(self, schema: KeypointSchema) -> None:
        self.schema = schema
        self._refresh()

    # ----------------------------------------------------------------- view
    def _refresh(self) -> None:
        self._updating = True
        try:
            s = self.schema
            self.table.setRowCount(len(s))
            for i, (name, color) in enumerate(zip(s.keypoints, s.colors)):
                self.table.setItem(i, 0, QTableWidgetItem(name))
                swatch = QTableWidgetItem(color)
                swatch.setBackground(QColor(color))
                swatch.setFlags(swatch.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, 1, swatch)
            self.skeleton.show_pairs(s.keypoints, s.skeleton)
            self.flips.show_pairs(s.keypoints, s.flip_pairs)
        finally:
            self._updating = False

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating or item.column() != 0:
            return
        if item.text().strip() != self.schema.keypoints[item.row()]:
            if not self.rename_keypoint(item.row(), item.text()):
                self._refresh()

    def _on_double_click(self, row: int, column: int) -> None:
        if column == 1:
            color = QColorDialog.getColor(QColor(self.schema.colors[row]), self, "Keypoint colour")
            if color.isValid():
                self.set_color(row, color.name())

    def _on_accept(self) -> None:
        name = self.name_edit.text().strip()
        if not len(self.schema):
            self.error_label.setText("the schema needs at least one keypoint")
            return
        if name and name != self.schema.name and not self._guard(
            lambda: self._set(self.schema.renamed(name))
        ):
            return
        supercategory = self.supercategory_edit.text().strip()
        if supercategory != self.schema.supercategory and not self._guard(
            lambda: self._set(replace(self.schema, supercategory=supercategory))
        ):
            return
        self.accept()
