"""CHASE_DB1 retinal vessels: 28 RGB fundus images of 999×960, both eyes of 14 children; background and vessel."""

from __future__ import annotations

from ..info import DatasetInfo, github_archive
from .file import RESIZED_CROP_SIZE, RESIZED_SIZE, FileDataModule


def child_of(key: str) -> str:
    """CHASE grouping: ``Image_01L`` and ``Image_01R`` belong to child ``Image_01``."""
    return key[:-1]


CHASE = DatasetInfo(
    name="chase",
    title="CHASE_DB1",
    homepage="https://researchdata.kingston.ac.uk/96/",
    provenance=(
        "the raw CHASE_DB1 images and first-observer (1stHO) labels as shipped by "
        "SHI-Labs/SGL-Retinal-Vessel-Segmentation (images 01-10 in CHASE/, 11-14 in CHASET/); cite Fraz et al. 2012"
    ),
    image_file="images/{key}.jpg",
    label_file="labels/{key}_1stHO.png",
    key_pattern=r"Image_\d{2}[LR]",
    image_mode="RGB",
    native_size=(960, 999),
    class_names=("background", "retinal vessel"),
    curvilinear_classes=("retinal vessel",),
    label_values={0: 0, 1: 1, 255: 1},  # 1-bit PNGs: PIL gives 0/1, other readers 0/255
    archives=(
        github_archive(
            "SHI-Labs",
            "SGL-Retinal-Vessel-Segmentation",
            "e74eaeac27ce2a483da7717645eb0f6e8e708acd",
            {
                "dataset/CHASE/HR": "chase/images",
                "dataset/CHASET/HR": "chase/images",
                "dataset/CHASE/VE": "chase/labels",
                "dataset/CHASET/VE": "chase/labels",
            },
        ),
    ),
    num_val=6,
    split_unit="one id per eye image; group = child (Image_NN)",
    group=child_of,
)


class ChaseDataModule(FileDataModule):
    """CHASE_DB1 (:data:`CHASE`): resized to 256×256 as in the paper (which changes the aspect ratio slightly).

    Images ``chase/images/Image_NNX.jpg``, labels the first observer's ``chase/labels/Image_NNX_1stHO.png``.
    Image keys are the file stems, ``Image_01L`` ... ``Image_14R``. Training draws a random ``crop_size``
    (224) crop of the resized image and a random horizontal flip; evaluation sees whole 256² images
    (``docs/datasets.md`` argues the crop size).
    """

    #: the dataset's record: files, labels, classes, sources, splits
    info = CHASE

    def __init__(
        self,
        image_size: int | tuple[int, int] | None = RESIZED_SIZE,
        crop_size: int | None = RESIZED_CROP_SIZE,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, crop_size=crop_size, **kwargs)
