"""COCO result files for data sets without public annotations (COCO test-dev)."""
import os

from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

__all__ = ["COCOResultsWriter"]


class COCOResultsWriter(COCOEvaluator):
    """Write ``coco_instances_results.json`` for the evaluation server; compute nothing.

    Used for data sets such as ``coco_2017_test-dev`` whose json has image entries but no
    annotations. The file is written (by the main process) to ``output_dir``; zip it and
    upload it to the COCO server. ``evaluate()`` returns an empty dict.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, **kwargs):
        if not output_dir:
            raise ValueError(f"COCOResultsWriter('{dataset_name}') needs an output_dir")
        kwargs.setdefault("use_fast_impl", False)
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._do_evaluation = False  # server-side evaluation only

    def evaluate(self, img_ids=None):
        super().evaluate(img_ids)
        path = os.path.join(self._output_dir, "coco_instances_results.json")
        if comm.is_main_process() or not self._distributed:
            self._logger.info(f"Results for the COCO evaluation server written to {path}")
        return {}
