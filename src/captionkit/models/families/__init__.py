"""One tiny module per model family, each declaring ``FAMILIES``: a tuple of :class:`captionkit.models.family.Family`.

The registry imports every module found here, so adding a family is its model module, one declaration module here
and its tests. A declaration imports no model code: the registry must answer ``list_models()`` without transformers.
"""
