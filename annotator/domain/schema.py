"""Keypoint schema: ordered names, skeleton, left/right partners, colours.

A schema is immutable. Every edit returns a new schema together with an index map
``old index -> new index or None`` so that annotations can be remapped consistently.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IndexMap = tuple[int | None, ...]


class SchemaError(ValueError):
    """A schema definition or edit is invalid."""


def default_color(index: int) -> str:
    """A distinct colour for keypoint ``index`` as ``#rrggbb`` (golden-ratio hues)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _valid_color(color: str) -> bool:
    if not (isinstance(color, str) and len(color) == 7 and color.startswith("#")):
        return False
    try:
        int(color[1:], 16)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class KeypointSchema:
    """Ordered keypoints of one object category.

    ``skeleton`` and ``flip_pairs`` hold 0-based keypoint indices.
    """

    name: str
    keypoints: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    colors: tuple[str, ...] = field(default=())
    supercategory: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keypoints", tuple(self.keypoints))
        object.__setattr__(self, "skeleton", tuple((int(a), int(b)) for a, b in self.skeleton))
        object.__setattr__(self, "flip_pairs", tuple((int(a), int(b)) for a, b in self.flip_pairs))
        if not self.colors:
            object.__setattr__(
                self, "colors", tuple(default_color(i) for i in range(len(self.keypoints)))
            )
        else:
            object.__setattr__(self, "colors", tuple(self.colors))
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`SchemaError` naming the problem if the schema is inconsistent."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise SchemaError("schema name must be a non-empty string")
        k = len(self.keypoints)
        if k == 0:
            raise SchemaError(f"schema {self.name!r} has no keypoints; it needs at least one")
        seen: set[str] = set()
        for i, name in enumerate(self.keypoints):
            if not isinstance(name, str) or not name.strip():
                raise SchemaError(f"keypoint {i} has an empty name")
            if name in seen:
                raise SchemaError(f"keypoint name {name!r} appears twice")
            seen.add(name)
        if len(self.colors) != k:
            raise SchemaError(f"{len(self.colors)} colours given for {k} keypoints")
        for i, color in enumerate(self.colors):
            if not _valid_color(color):
                raise SchemaError(f"colour {color!r} of keypoint {i} is not '#rrggbb'")
        for what, pairs in (("skeleton edge", self.skeleton), ("flip pair", self.flip_pairs)):
            for a, b in pairs:
                if not (0 <= a < k and 0 <= b < k):
                    raise SchemaError(f"{what} ({a}, {b}) refers to a keypoint outside 0..{k - 1}")
                if a == b:
                    raise SchemaError(f"{what} ({a}, {b}) joins a keypoint to itself")
        partners: dict[int, int] = {}
        for a, b in self.flip_pairs:
            for x, y in ((a, b), (b, a)):
                if partners.get(x, y) != y:
                    raise SchemaError(f"keypoint {self.keypoints[x]!r} has two flip partners")
                partners[x] = y

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.keypoints)

    def index(self, name: str) -> int:
        """Index of keypoint ``name``."""
        try:
            return self.keypoints.index(name)
        except ValueError:
            raise SchemaError(f"no keypoint named {name!r} in schema {self.name!r}") from None

    def flip_permutation(self) -> tuple[int, ...]:
        """Permutation swapping left/right partners: ``perm[i]`` is i's mirror partner."""
        perm = list(range(len(self.keypoints)))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return tuple(perm)

    # ------------------------------------------------------------------ edits
    def add_keypoint(
        self, name: str, color: str | None = None, index: int | None = None
    ) -> tuple[KeypointSchema, IndexMap]:
        """Insert keypoint ``name`` at ``index`` (default: at the end)."""
        k = len(self.keypoints)
        pos = k if index is None else index
        if not 0 <= pos <= k:
            raise SchemaError(f"insert position {pos} outside 0..{k}")
        order: list[int | None] = list(range(k))
        order.insert(pos, None)
        names = list(self.keypoints)
        names.insert(pos, name)
        colors = list(self.colors)
        colors.insert(pos, color or default_color(k))
        return self._rebuild(order, names, colors)

    def rename_keypoint(self, index: int, name: str) -> tuple[KeypointSchema, IndexMap]:
        """Rename keypoint ``index``; annotations are unaffected."""
        self._check_index(index)
        names = list(self.keypoints)
        names[index] = name
        return self._rebuild(list(range(len(names))), names, list(self.colors))

    def set_color(self, index: int, color: str) -> tuple[KeypointSchema, IndexMap]:
        """Change the colour of keypoint ``index``."""
        self._check_index(index)
        colors = list(self.colors)
        colors[index] = color
        return self._rebuild(list(range(len(colors))), list(self.keypoints), colors)

    def delete_keypoint(self, index: int) -> tuple[KeypointSchema, IndexMap]:
        """Remove keypoint ``index`` and every edge or flip pair that uses it."""
        self._check_index(index)
        order: list[int | None] = [i for i in range(len(self.keypoints)) if i != index]
        names = [self.keypoints[i] for i in order if i is not None]
        colors = [self.colors[i] for i in order if i is not None]
        return self._rebuild(order, names, colors)

    def reorder(self, new_order: Sequence[int]) -> tuple[KeypointSchema, IndexMap]:
        """Reorder keypoints: ``new_order[j]`` is the old index placed at position j."""
        k = len(self.keypoints)
        if sorted(new_order) != list(range(k)):
            raise SchemaError(f"reorder {list(new_order)} is not a permutation of 0..{k - 1}")
        names = [self.keypoints[i] for i in new_order]
        colors = [self.colors[i] for i in new_order]
        return self._rebuild(list(new_order), names, colors)

    def with_skeleton(self, edges: Iterable[tuple[int, int]]) -> KeypointSchema:
        """Same keypoints, new skeleton edges."""
        return KeypointSchema(
            self.name, self.keypoints, tuple(edges), self.flip_pairs, self.colors,
            self.supercategory,
        )

    def with_flip_pairs(self, pairs: Iterable[tuple[int, int]]) -> KeypointSchema:
        """Same keypoints, new left/right partner pairs."""
        return KeypointSchema(
            self.name, self.keypoints, self.skeleton, tuple(pairs), self.colors,
            self.supercategory,
        )

    def renamed(self, name: str) -> KeypointSchema:
        """Same schema under a new category name."""
        return KeypointSchema(
            name, self.keypoints, self.skeleton, self.flip_pairs, self.colors, self.supercategory
        )

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.keypoints):
            raise SchemaError(f"keypoint index {index} outside 0..{len(self.keypoints) - 1}")

    def _rebuild(
        self, order: Sequence[int | None], names: list[str], colors: list[str]
    ) -> tuple[KeypointSchema, IndexMap]:
        """New schema whose position j holds old keypoint ``order[j]`` (None = new)."""
        old_to_new: list[int | None] = [None] * len(self.keypoints)
        for new, old in enumerate(order):
            if old is not None:
                old_to_new[old] = new

        def remap(pairs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
            out = []
            for a, b in pairs:
                na, nb = old_to_new[a], old_to_new[b]
                if na is not None and nb is not None:
                    out.append((na, nb))
            return tuple(out)

        schema = KeypointSchema(
            self.name, tuple(names), remap(self.skeleton), remap(self.flip_pairs), tuple(colors),
            self.supercategory,
        )
        return schema, tuple(old_to_new)


_SIDES = (("left_", "right_"), ("left", "right"), ("l_", "r_"), ("L_", "R_"))


def infer_flip_pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Left/right partner pairs guessed from names such as ``left_eye``/``right_eye``."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        for left, right in _SIDES:
            if name.startswith(left):
                j = index.get(right + name[len(left):])
                if j is not None and j != i:
                    pairs.append((i, j))
                break
    return tuple(pairs)
