"""The batch captioning job: collect inputs, shard them, decode images, caption, write and resume records, merge parts.

Modules, lowest first: ``inputs`` (which files), ``sharding`` (which of them this process takes), ``outputs``
(records written and read back), ``pipeline`` (images decoded in worker processes), ``batch`` (captions per batch),
``overlays`` (attention maps beside the records; ``overlay_index``: which folder is whose), ``run`` (one job from
its options) and ``merge`` (parts joined).
Importing this package imports none of them, so ``captionkit.jobs.inputs`` stays free of torch.
"""
