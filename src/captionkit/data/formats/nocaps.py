"""nocaps (``nocaps_val_4500_captions.json``): COCO captions JSON whose images carry ``domain`` (in-domain,
near-domain, out-domain), read by the COCO reader with each record keeping its image's domain, so that
``evaluate`` reports every metric per domain as well as overall."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from captionkit.data.formats import coco
from captionkit.data.formats.base import Collector, Probe, ReadOptions, ReadResult


def detect_document(document: Any) -> bool:
    if not coco.detect_document(document) or not document["images"]:
        return False
    first = document["images"][0]
    return isinstance(first, dict) and "domain" in first


def detect_file(probe: Probe) -> bool:
    return probe.suffix == ".json" and detect_document(probe.json())


def detect_dir(directory: Path) -> bool:
    return False


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    document = probe.json()
    collector = Collector()
    coco.read_document(document, probe.path, None, options, collector)
    domains = {str(image.get("id")): image.get("domain") for image in document["images"] if isinstance(image, dict)}
    collector.records = [
        dataclasses.replace(record, domain=str(domains[record.image_id]) if domains.get(record.image_id) else None)
        for record in collector.records
    ]
    return collector.result(probe.path)
