"""The optional channels stage: a data set's image channels resampled into the 25 um CCF (Allen's
``ImagesResampledTo25MicronARA``), which ``brainmap load`` registers and AllenSDK's
``download_reference_aligned_image_channel_volumes`` fetches."""

from __future__ import annotations

import os

from brainmap.pipeline.run.layout import PipelineFolder
from brainmap.pipeline.run.records import StageRecord, fingerprint, stage_is_done
from brainmap.specimen.folder import read_dataset, read_section_image

__all__ = ["CHANNELS_FORMAT", "channels_stage"]

#: Bumped when the volumes' content changes, so older files are redone rather than taken as done.
CHANNELS_FORMAT = 1


def channels_stage(folder: str | os.PathLike[str], resolution_um: int = 25) -> str:
    """Resample one aligned data set's channels into the CCF unless done; returns "done" or "skipped".

    Parameters
    ----------
    folder : str or PathLike
        The data set folder (relative or absolute), aligned (``pipeline/alignment.json`` written).
    resolution_um : int
        Voxel size of the volumes, um (Allen's file is 25 um).

    Returns
    -------
    str
        ``"done"`` (written now) or ``"skipped"`` (verified as written before, from the same images and
        alignment).
    """
    from brainmap.pipeline.grid.channels import resample_channels, write_channel_volumes
    from brainmap.pipeline.run.runner import image_signature

    layout = PipelineFolder.of(folder)
    dataset = read_dataset(layout.dataset)
    expected = fingerprint([layout.alignment], {"stage": "channels", "format": CHANNELS_FORMAT,
                                                "images": image_signature(layout.dataset, dataset),
                                                "resolution_um": int(resolution_um)})
    if stage_is_done(layout.work, "channels", expected):
        return "skipped"
    volumes = resample_channels(
        dataset, lambda image: {c: read_section_image(layout.dataset, image, c) for c in image.channels},
        resolution_um=resolution_um)
    path = write_channel_volumes(layout.work, volumes, resolution_um)
    StageRecord("channels", expected, StageRecord.describe_outputs(layout.work, [path])).write(layout.work)
    return "done"
