"""Datasets: records, readers, splits, the synthetic scenes and the torch dataset."""

from captionkit.data.records import CaptionRecord, read_jsonl, write_jsonl
from captionkit.data.sources import load_records

__all__ = ["CaptionRecord", "load_records", "read_jsonl", "write_jsonl"]
