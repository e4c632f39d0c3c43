"""What the VSPW and Cityscapes registrations share: a record's frame list and the
registration of a loader with the metadata every video dataset carries."""

import os
from typing import Callable, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..label_maps import IGNORE_LABEL

__all__ = ["VideoFrameList", "register_dataset"]


class VideoFrameList(list):
    """A list of frame paths that share one directory, pickled as (directory, file names).

    detectron2 pickles every dataset record separately; with one record per annotated frame a
    plain list of full paths would be stored ~70 times per VSPW video (about 1 GB for the
    training split). Behaves exactly like ``list[str]`` of full paths otherwise.
    """

    def __init__(self, directory: str, file_names: Sequence[str]):
        super().__init__(os.path.join(directory, f) for f in file_names)
        self._directory = directory

    def __reduce__(self):
        names = tuple(os.path.basename(p) for p in self)
        if any(os.path.join(self._directory, n) != p for n, p in zip(names, self)):
            return (list, (list(self),))  # modified after construction: pickle as a plain list
        return (VideoFrameList, (self._directory, names))


def register_dataset(
    name: str, loader: Callable[[], List[dict]], metadata: dict, overwrite: bool = False
) -> None:
    """Register ``loader`` under ``name`` with ``metadata`` (plus ``ignore_label`` 255 and
    ``evaluator_type`` "video_sem_seg"); ``overwrite`` replaces an existing registration of
    ``name`` (records and metadata)."""
    if overwrite and name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if overwrite and name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        ignore_label=IGNORE_LABEL, evaluator_type="video_sem_seg", **metadata
    )
