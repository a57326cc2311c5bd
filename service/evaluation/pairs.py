"""Verification pairs: LFW ``pairs.txt`` and CSV pair lists, parsed into image paths and labels.

LFW ``pairs.txt``: a header ``<folds> <n>`` (or a lone ``<n>``: one set), then per fold ``n``
same-person lines ``name i j`` and ``n`` different-person lines ``name1 i name2 j``. ``i`` and ``j``
are 1-based image numbers, resolved to files by a :class:`PathPattern` (LFW's own layout by default:
``name/name_%04d.jpg``).

CSV: a header naming two file columns (``file_x,file_y``) and a label column (``same``, or deepface's
``Decision`` with ``Yes``/``No``). File names are relative to the image folder, or bare names looked
up in a ``labels.csv`` (``identity,file``) that says which identity folder holds each file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

LFW_PATTERN = "{name}/{name}_{index:04d}.jpg"
# A pattern that means "the index-th file (1-based) of the folder ``name``, in sorted name order":
# lets any identity-per-folder data set be described in LFW format without renaming files.
SORTED_PATTERN = "sorted"
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".pnm", ".tif", ".tiff"}
)

_FIRST_COLUMNS = ("file_x", "img1", "file1", "image1", "first")
_SECOND_COLUMNS = ("file_y", "img2", "file2", "image2", "second")
_LABEL_COLUMNS = ("same", "decision", "label", "issame", "is_same", "match")
_TRUE_WORDS = frozenset({"1", "true", "yes", "y", "same", "match", "genuine"})
_FALSE_WORDS = frozenset({"0", "false", "no", "n", "different", "nonmatch", "impostor"})


class PairsFormatError(ValueError):
    """A pairs file that cannot be read: the message names the file and the line."""


@dataclass(frozen=True)
class Pair:
    first: Path
    second: Path
    same: bool
    fold: int | None  # the LFW fold (0-based) the pair belongs to; None in formats without folds


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[Pair, ...]
    n_folds: int | None  # folds declared by the file (LFW), None when the evaluator chooses
    source: str  # where the pairs came from, for reports

    @property
    def images(self) -> list[Path]:
        """Every distinct image, in first-use order."""
        return list(dict.fromkeys(path for pair in self.pairs for path in (pair.first, pair.second)))

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([pair.same for pair in self.pairs], dtype=np.bool_)

    def missing_files(self) -> list[Path]:
        return [path for path in self.images if not path.is_file()]


# ---------------------------------------------------------------------------------------- file naming


class PathPattern(Protocol):
    def path(self, name: str, index: int) -> Path:
        """The file of image ``index`` (1-based) of identity ``name``."""
        ...


@dataclass(frozen=True)
class FormatPattern:
    """``str.format`` pattern with ``{name}`` and ``{index}`` (format specs allowed), under ``root``."""

    root: Path
    pattern: str = LFW_PATTERN

    def path(self, name: str, index: int) -> Path:
        try:
            relative = self.pattern.format(name=name, index=index)
        except (KeyError, IndexError, ValueError) as exc:
            raise PairsFormatError(
                f"bad file pattern {self.pattern!r}: use {{name}} and {{index}} ({exc})"
            ) from None
        return self.root / relative


@dataclass(frozen=True)
class SortedFolderPattern:
    """Image ``index`` of ``name`` is the index-th image file of ``root/name`` in sorted order."""

    root: Path

    def path(self, name: str, index: int) -> Path:
        files = identity_images(self.root / name)
        if not 1 <= index <= len(files):
            raise PairsFormatError(
                f"{self.root / name} has {len(files)} images; image {index} does not exist"
            )
        return files[index - 1]


def path_pattern(root: Path, pattern: str = LFW_PATTERN, *, ext: str | None = None) -> PathPattern:
    """The pattern named by ``pattern`` ("sorted" or a format string); ``ext`` swaps LFW's ``.jpg``."""
    special = {SORTED_PATTERN: SortedFolderPattern}
    if pattern in special:
        return special[pattern](root)
    if ext is not None:
        if not pattern.endswith(".jpg"):
            raise PairsFormatError(f"--ext replaces the '.jpg' of a pattern; {pattern!r} has none")
        suffix = ext if ext.startswith(".") else f".{ext}"
        pattern = pattern.removesuffix(".jpg") + suffix
    return FormatPattern(root, pattern)


def identity_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def identity_folders(images_dir: Path) -> dict[str, list[Path]]:
    """``{identity: sorted image files}`` for every sub-folder of an identity-per-folder data set."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    folders = {
        folder.name: identity_images(folder) for folder in sorted(images_dir.iterdir()) if folder.is_dir()
    }
    return {name: files for name, files in folders.items() if files}


# ----------------------------------------------------------------------------------------- LFW format


def parse_lfw_pairs(text: str, pattern: PathPattern, *, source: str = "pairs.txt") -> PairSet:
    """Parse LFW ``pairs.txt`` text; image numbers are resolved through ``pattern``."""
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise PairsFormatError(f"{source} is empty")
    _, header = lines[0]
    n_folds, per_fold = _lfw_header(header, source)
    body = lines[1:]
    expected = n_folds * 2 * per_fold
    if len(body) != expected:
        raise PairsFormatError(
            f"{source}: header says {n_folds} fold(s) of {per_fold} same + {per_fold} different pairs "
            f"({expected} lines), found {len(body)} pair lines"
        )
    pairs = []
    for position, (number, fields) in enumerate(body):
        fold, within = divmod(position, 2 * per_fold)
        same = within < per_fold
        pairs.append(_lfw_pair(fields, same, fold if n_folds > 1 else None, pattern, f"{source}:{number}"))
    return PairSet(tuple(pairs), n_folds if n_folds > 1 else None, source)


def read_lfw_pairs(path: Path, pattern: PathPattern) -> PairSet:
    return parse_lfw_pairs(path.read_text(encoding="utf-8"), pattern, source=str(path))


def _lfw_header(fields: list[str], source: str) -> tuple[int, int]:
    try:
        numbers = [int(field) for field in fields]
    except ValueError:
        raise PairsFormatError(f"{source}: the first line must be '<folds> <pairs per fold>'") from None
    if len(numbers) == 1:
        numbers = [1, numbers[0]]
    if len(numbers) != 2 or min(numbers) < 1:
        raise PairsFormatError(f"{source}: the first line must be '<folds> <pairs per fold>', got {fields}")
    return numbers[0], numbers[1]


def _lfw_pair(fields: list[str], same: bool, fold: int | None, pattern: PathPattern, where: str) -> Pair:
    try:
        if same:
            if len(fields) != 3:
                raise PairsFormatError(f"{where}: a same-person line is 'name i j', got {' '.join(fields)!r}")
            name, i, j = fields
            return Pair(pattern.path(name, int(i)), pattern.path(name, int(j)), True, fold)
        if len(fields) != 4:
            raise PairsFormatError(
                f"{where}: a different-person line is 'name1 i name2 j', got {' '.join(fields)!r}"
            )
        name1, i, name2, j = fields
        return Pair(pattern.path(name1, int(i)), pattern.path(name2, int(j)), False, fold)
    except ValueError as exc:
        if isinstance(exc, PairsFormatError):
            raise
        raise PairsFormatError(f"{where}: image numbers must be integers ({' '.join(fields)!r})") from None


# ----------------------------------------------------------------------------------------- CSV format


def read_labels_csv(path: Path) -> dict[str, str]:
    """``{file name: identity}`` from a ``labels.csv`` with columns ``identity,file``."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "identity" not in columns or "file" not in columns:
            raise PairsFormatError(
                f"{path}: labels need the columns 'identity,file', got {reader.fieldnames}"
            )
        return {row[columns["file"]].strip(): row[columns["identity"]].strip() for row in reader}


def parse_csv_pairs(
    text: str, images_dir: Path, *, labels: Mapping[str, str] | None = None, source: str = "pairs.csv"
) -> PairSet:
    """Parse CSV pairs; ``labels`` (file name → identity folder) resolves bare file names."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    first = _column(columns, _FIRST_COLUMNS, source, "first file")
    second = _column(columns, _SECOND_COLUMNS, source, "second file")
    label = _column(columns, _LABEL_COLUMNS, source, "same/different label")
    pairs = []
    for number, row in enumerate(reader, start=2):
        where = f"{source}:{number}"
        pairs.append(
            Pair(
                _csv_path(row[first], images_dir, labels, where),
                _csv_path(row[second], images_dir, labels, where),
                _truth(row[label], where),
                None,
            )
        )
    if not pairs:
        raise PairsFormatError(f"{source} holds no pairs")
    return PairSet(tuple(pairs), None, source)


def read_csv_pairs(path: Path, images_dir: Path, *, labels: Mapping[str, str] | None = None) -> PairSet:
    return parse_csv_pairs(path.read_text(encoding="utf-8"), images_dir, labels=labels, source=str(path))


def _column(columns: Mapping[str, str], accepted: Sequence[str], source: str, what: str) -> str:
    for name in accepted:
        if name in columns:
            return columns[name]
    raise PairsFormatError(f"{source}: no {what} column; expected one of {', '.join(accepted)}")


def _truth(value: str | None, where: str) -> bool:
    word = (value or "").strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise PairsFormatError(f"{where}: cannot read {value!r} as same/different (use 1/0, true/false, Yes/No)")


def _csv_path(value: str | None, images_dir: Path, labels: Mapping[str, str] | None, where: str) -> Path:
    name = (value or "").strip()
    if not name:
        raise PairsFormatError(f"{where}: empty file name")
    if labels is None:
        path = Path(name)
        return path if path.is_absolute() else images_dir / path
    identity = labels.get(name) or labels.get(Path(name).name)
    if identity is None:
        raise PairsFormatError(f"{where}: {name!r} is not listed in the labels file")
    return images_dir / identity / Path(name).name


# ------------------------------------------------------------------------------- building LFW pairs


@dataclass(frozen=True)
class LfwFold:
    same: tuple[tuple[str, int, int], ...]
    different: tuple[tuple[str, int, str, int], ...]


def build_lfw_folds(
    counts: Mapping[str, int], *, n_folds: int = 10, per_fold: int | None = None, seed: int = 0
) -> list[LfwFold]:
    """Random LFW-style folds over an identity-per-folder set (``{identity: image count}``).

    Pairs are drawn without repetition; ``per_fold`` defaults to the most the data allows, at most
    300 (LFW's). Folds are not identity-disjoint (small sets have fewer identities than folds).
    """
    if n_folds < 1:
        raise ValueError("n_folds must be at least 1")
    rng = np.random.default_rng(seed)
    genuine = [
        (name, i, j) for name, n in sorted(counts.items()) for i in range(1, n) for j in range(i + 1, n + 1)
    ]
    names = sorted(name for name, n in counts.items() if n > 0)
    total = sum(counts[name] for name in names)
    impostor_total = (total * total - sum(counts[n] ** 2 for n in names)) // 2
    available = min(len(genuine), impostor_total) // n_folds
    if per_fold is None:
        per_fold = min(300, available)
    if per_fold < 1 or per_fold > available:
        raise ValueError(
            f"{n_folds} folds of {per_fold} same + {per_fold} different pairs need more data: "
            f"{len(genuine)} same-person and {impostor_total} different-person pairs exist"
        )
    chosen_genuine = [genuine[k] for k in rng.permutation(len(genuine))[: n_folds * per_fold]]
    chosen_impostor = _sample_impostors(counts, names, n_folds * per_fold, rng)
    return [
        LfwFold(
            same=tuple(chosen_genuine[f * per_fold : (f + 1) * per_fold]),
            different=tuple(chosen_impostor[f * per_fold : (f + 1) * per_fold]),
        )
        for f in range(n_folds)
    ]


def _sample_impostors(
    counts: Mapping[str, int], names: Sequence[str], wanted: int, rng: np.random.Generator
) -> list[tuple[str, int, str, int]]:
    # Rejection sampling over (identity, image) slots: cheap for any data set size.
    slots = [(name, index) for name in names for index in range(1, counts[name] + 1)]
    seen: set[tuple[str, int, str, int]] = set()
    chosen: list[tuple[str, int, str, int]] = []
    while len(chosen) < wanted:
        a, b = rng.integers(0, len(slots), size=2)
        (name1, i), (name2, j) = sorted((slots[a], slots[b]))
        if name1 == name2 or (name1, i, name2, j) in seen:
            continue
        seen.add((name1, i, name2, j))
        chosen.append((name1, i, name2, j))
    return chosen


def format_lfw_pairs(folds: Sequence[LfwFold]) -> str:
    """LFW ``pairs.txt`` text for ``folds`` (tab separated, as LFW's own file)."""
    per_fold = len(folds[0].same) if folds else 0
    if any(len(fold.same) != per_fold or len(fold.different) != per_fold for fold in folds):
        raise ValueError("every fold needs the same number of same and different pairs")
    lines = [f"{len(folds)}\t{per_fold}"]
    for fold in folds:
        lines.extend(f"{name}\t{i}\t{j}" for name, i, j in fold.same)
        lines.extend(f"{name1}\t{i}\t{name2}\t{j}" for name1, i, name2, j in fold.different)
    return "\n".join(lines) + "\n"
