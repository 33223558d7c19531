"""COVID-19 CT segmentation (MedSeg): 100 axial slices of 512×512, four classes in the paper's Table 1 order."""

from __future__ import annotations

from ..info import UNKNOWN, Archive, DatasetInfo, github_archive
from .file import RESIZED_CROP_SIZE, RESIZED_SIZE, FileDataModule

COVID19 = DatasetInfo(
    name="covid19",
    title="COVID-19 CT (MedSeg)",
    homepage="https://medicalsegmentation.com/covid19/",
    provenance=(
        "images: the MedSeg slices as windowed 8-bit PNGs from yuhuan-wu/JCS; 4-class masks: derived by this "
        "project from the Inf-Net and JCS copies (no public host; see docs/datasets.md)"
    ),
    image_file="images/tr_im_{key}.png",
    label_file="labels_4class_derived/tr_mask_{key}.png",
    key_pattern=r"\d{4}",
    image_mode="L",
    native_size=(512, 512),
    class_names=("background", "consolidation", "ground glass", "pleural effusion"),
    # the files: 1 ground glass, 2 consolidation, 3 pleural effusion (inferred), 255 infection of unknown class
    label_values={0: 0, 1: 2, 2: 1, 3: 3, 255: UNKNOWN},
    archives=(
        github_archive(
            "yuhuan-wu",
            "JCS",
            "fa4bb6ae452c6aa042db8c762822e72df65d9519",
            {"data/COVID-19-CT100/tr_im": "covid19/images"},
        ),
        Archive(
            filename="lightning-seg-covid19-labels-4class-derived-v1.tar",
            url=None,
            # What lightning_seg.data.mirror.build_archives gives on the 100 masks that pass the manifest (USTAR,
            # no compression, fixed metadata); tests/data/test_install.py rebuilds and compares it.
            sha256="42c2f693d7ddff53fc24672d7e8f4e3f66a84ad4cc154f857286f336def09e26",
            folders={"covid19/labels_4class_derived": "covid19/labels_4class_derived"},
            strip=0,
        ),
    ),
    num_val=10,
    split_unit="one id per CT slice; no patient ids published",
)


class Covid19DataModule(FileDataModule):
    """COVID-19 CT (:data:`COVID19`): slices resized to 256×256, labels remapped to the paper's Table 1 order.

    Images ``covid19/images/tr_im_NNNN.png``; labels the derived 4-class masks
    ``covid19/labels_4class_derived/tr_mask_NNNN.png``, whose values 1 = ground glass, 2 = consolidation,
    3 = pleural effusion become the table order (background, consolidation, ground glass, pleural
    effusion); 255 (infection of unknown class) becomes ``ignore_index``. Training draws a random
    ``crop_size`` (224) crop and a random horizontal flip; evaluation sees whole 256² images.
    """

    #: the dataset's record: files, labels, classes, sources, splits
    info = COVID19

    def __init__(
        self,
        image_size: int | tuple[int, int] | None = RESIZED_SIZE,
        crop_size: int | None = RESIZED_CROP_SIZE,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, crop_size=crop_size, **kwargs)
