"""Convert a detection dataset between COCO JSON and YOLO txt.

A COCO source is one JSON file, so one split, named after the file (``instances_train2017.json``
-> ``train2017``). A YOLO source is a ``data.yaml`` (or its folder) and gives every split it
names. COCO output is ``OUT/annotations/instances_<split>.json`` with the images copied to
``OUT/images/<split>/``; YOLO output is described in ``imrec.data.yolo.write_yolo``. Category ids
of a COCO source are kept when writing COCO again; otherwise they are ``label + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imrec.data.boxes import AnnotationReport, DetectionSet
from imrec.data.coco import load_coco, split_name, write_coco
from imrec.data.sources import DatasetError
from imrec.data.yolo import (
    check_out_dir,
    find_data_yaml,
    place_images,
    read_yolo,
    write_yolo,
    yolo_splits,
)

FORMATS = ("coco", "yolo")


@dataclass
class ConvertResult:
    """What ``convert_dataset`` wrote.

    Attributes:
        path: the YOLO ``data.yaml``, or the COCO ``annotations`` folder.
        report: what was clipped, dropped or ignored while reading the source (all splits).
        splits: number of images written per split.
        classes: class names, label order.
    """

    path: Path
    report: AnnotationReport
    splits: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


@dataclass
class _Source:
    splits: dict[str, DetectionSet]
    classes: list[str]
    report: AnnotationReport
    category_ids: list[int] | None = None


def convert_dataset(
    source: str | Path,
    out_dir: str | Path,
    to: str,
    *,
    images: str | Path | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Read a COCO or YOLO dataset and write it in format ``to``, images copied.

    Args:
        source: a COCO ``.json`` file, or a YOLO ``data.yaml`` or the folder holding it.
        out_dir: the output folder; it must be empty or missing unless ``overwrite``.
        to: ``"coco"`` or ``"yolo"``.
        images: the image folder of a COCO source (default: searched, see ``imrec.data.coco``).
        overwrite: write into a non-empty ``out_dir``, replacing what this conversion writes.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> result = convert_dataset(coco128 / "data.yaml", tmp / "coco128-coco", to="coco")
        >>> result.path, result.splits, result.report.summary()
        (PosixPath('.../coco128-coco/annotations'), {'train': 128, 'val': 128}, '1827 boxes; ...')

    Raises:
        DatasetError: an unknown ``to`` or source format, or any error reading the source.
    """
    if to not in FORMATS:
        raise DatasetError(f"cannot convert to {to!r}: expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    src = _read_source(Path(source), images)
    if to == "yolo":
        path = write_yolo(src.splits, src.classes, out_dir, overwrite=True)
    else:
        path = _write_coco_dataset(src, out_dir)
    counts = {name: len(split) for name, split in src.splits.items()}
    return ConvertResult(path, src.report, counts, src.classes)


def _read_source(source: Path, images: str | Path | None) -> _Source:
    if source.is_file() and source.suffix.lower() == ".json":
        coco = load_coco(source, images)
        return _Source(
            {split_name(source): coco.split}, coco.classes, coco.report, coco.category_ids
        )
    if images is not None:
        raise DatasetError(f"an image folder ({images}) is only taken with a COCO .json source")
    is_yaml = source.is_file() and source.suffix.lower() in (".yaml", ".yml")
    if not (is_yaml or source.is_dir()):
        raise DatasetError(
            f"cannot convert {source}: expected a COCO .json file, or a YOLO data.yaml "
            "or a folder holding one"
        )
    return _read_yolo_source(find_data_yaml(source))


def _read_yolo_source(yaml_path: Path) -> _Source:
    report = AnnotationReport()
    splits, classes = {}, []
    for name in yolo_splits(yaml_path):
        splits[name], classes, _ = read_yolo(yaml_path, name, report=report)
    if not splits:
        raise DatasetError(f"{yaml_path}: names no split (train, val or test)")
    return _Source(splits, classes, report)


def _write_coco_dataset(src: _Source, out_dir: Path) -> Path:
    annotations = out_dir / "annotations"
    for name, split in src.splits.items():
        image_dir = out_dir / "images" / name
        placed = place_images(split, image_dir)
        write_coco(
            placed,
            src.classes,
            annotations / f"instances_{name}.json",
            image_root=image_dir,
            category_ids=src.category_ids,
        )
    return annotations
