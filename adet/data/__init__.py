"""Data: builtin data sets (synthetic shapes, shared real data, custom COCO json).

Importing this package registers the default synthetic splits (``synthetic_shapes_train``,
``synthetic_shapes_val``; generated lazily on first load) and the shared real data sets
that are present (``coco_tiny_train``, ``coco_tiny_val``, ``fruits_nuts``).
"""
from .builtin import (
    check_dataset_available,
    register_all,
    register_coco_dataset,
    register_shared_datasets,
    register_synthetic,
    shared_data_root,
)
from .synthetic import (
    SHAPE_CLASSES,
    default_cache_dir,
    generate_synthetic_dataset,
    mask_to_polygons,
    render_sample,
    synthetic_dataset_dir,
)

# Other modules of this package (dataset mapper, augmentations) add their imports here.

register_all()
