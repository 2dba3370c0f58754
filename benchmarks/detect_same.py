"""Whether two checkouts detect the same: digests of ``detect_section``'s output on the detection benchmark's sections.

    python -m benchmarks.detect_same save FILE [--demo DEMO_FOLDER]      # in checkout A (e.g. main)
    python -m benchmarks.detect_same compare FILE [--demo DEMO_FOLDER]   # in checkout B

The sections are those of ``bench_detect_grid``: the ISH precision / recall windows (Pvalb, five per family at
8, 4 and 1.5 um; Gad1, two), whole 8 um ISH sections (the throughput's), the 1 um 2048 x 2048 window, the
connectivity 10 um whole sections and second-family windows, and the 0.35 um window; with ``--demo`` also every
section of a demo folder (``brainmap demo --out``), read as the runner's workers read them. Per section: a
SHA-256 of the mask, the tissue mask and the injection site, the noise model, the tissue threshold and the
``info`` figures (the measured cell size, the cut...). Exit status 0 when every digest is the same, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.pipeline.detect import DetectionParams, detect_section

CENTRES = [(6000, 4000, 5700), (7000, 3000, 8000), (5000, 5000, 4000), (8000, 3500, 3000), (4000, 4500, 7000)]


def _benchmark_sections() -> Iterator[tuple[str, DetectionParams, dict[str, np.ndarray]]]:
    from benchmarks.bench_detect_grid import CENTRE_CONNECTIVITY, CENTRE_ISH, EXPERIMENT, GENES, _crop
    from brainmap.specimen.synthetic.replay import VirtualSpecimen

    for gene, count in ((GENES[0], 5), (GENES[1], 2)):
        for pixel, size in ((8.0, 640), (4.0, 640), (1.5, 512)):
            vs = VirtualSpecimen.make("ish", gene=gene, pixel_size_um=pixel)
            params = DetectionParams.for_dataset(vs.dataset)
            for family in ("virtual", "second"):
                for k, (image, centre) in enumerate(zip(vs.dataset.usable_images()[15::10], CENTRES[:count])):
                    yield f"ish {gene} {pixel:g} um {family} {k}", params, _crop(vs, image, size, centre, family)[0]
        vs = VirtualSpecimen.make("ish", gene=gene, pixel_size_um=8.0)
        image = vs.dataset.usable_images()[len(vs.dataset.images) // 2]
        yield f"ish {gene} 8 um whole", DetectionParams.for_dataset(vs.dataset), vs.render(image)[0]
    vs = VirtualSpecimen.make("ish", gene=GENES[0], pixel_size_um=1.0)
    image = vs.dataset.usable_images()[len(vs.dataset.images) // 2]
    arrays = vs.crop(image, size_px=(2048, 2048), centre_reference_um=CENTRE_ISH)[0]
    yield "ish 1 um 2048", DetectionParams.for_dataset(vs.dataset), arrays
    vs = VirtualSpecimen.make("connectivity", experiment_id=EXPERIMENT)
    params = DetectionParams.for_dataset(vs.dataset)
    images = vs.dataset.usable_images()
    for k, image in enumerate(images[10::len(images) // 6]):
        yield f"connectivity 10 um virtual {k}", params, vs.render(image)[0]
        yield f"connectivity 10 um second {k}", params, _crop(vs, image, 300, CENTRE_CONNECTIVITY, "second")[0]
    vs = VirtualSpecimen.make("connectivity", experiment_id=EXPERIMENT, pixel_size_um=0.35)
    image = vs.dataset.usable_images()[len(vs.dataset.images) // 2]
    arrays = vs.crop(image, size_px=(2048, 2048), centre_reference_um=CENTRE_CONNECTIVITY)[0]
    yield "connectivity 0.35 um 2048", DetectionParams.for_dataset(vs.dataset), arrays


def _demo_sections(folder: Path) -> Iterator[tuple[str, DetectionParams, dict[str, np.ndarray]]]:
    from brainmap.specimen.folder import read_dataset, read_section_image

    for specimen in sorted(p for p in (folder / "specimens").iterdir() if p.is_dir()):
        dataset = read_dataset(specimen)
        params = DetectionParams.for_dataset(dataset)
        for image in dataset.usable_images():
            arrays = {channel: read_section_image(specimen, image, channel) for channel in image.channels}
            yield f"demo {specimen.name} {image.id}", params, arrays


def _digest(arrays: dict[str, np.ndarray], params: DetectionParams) -> str:
    result = detect_section(arrays, params)
    h = hashlib.sha256()
    for array in (result.mask, result.tissue, result.injection):
        h.update(b"none" if array is None else np.ascontiguousarray(array).tobytes() + str(array.shape).encode())
    h.update(repr((result.noise, result.tissue_threshold, sorted(result.info.items()))).encode())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4) or argv[0] not in ("save", "compare") or (len(argv) == 4 and argv[2] != "--demo"):
        print(__doc__, file=sys.stderr)
        return 2
    sections: Any = list(_benchmark_sections())
    if len(argv) == 4:
        sections += list(_demo_sections(Path(argv[3])))
    digests = {name: _digest(arrays, params) for name, params, arrays in sections}
    path = Path(argv[1])
    if argv[0] == "save":
        path.write_text(json.dumps(digests, indent=0))
        print(f"{len(digests)} sections' digests written to {path}")
        return 0
    saved = json.loads(path.read_text())
    differ = sorted(name for name in saved.keys() | digests.keys() if saved.get(name) != digests.get(name))
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(saved)} sections saved, {len(digests)} detected here: {len(differ)} differ"
          if differ else f"the same: {len(digests)} sections")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
