"""Metrics for explanation maps, on ONNX Runtime with numpy only (no torch, onnx or scipy).

Faithfulness (:mod:`.faithfulness`, ROAD in :mod:`.road`), localisation and complexity
(:mod:`.localisation`), sanity (:mod:`.sanity`, needs onnx; imported on use).
Every function documents its definition; maps are float32 [N, H, W] at input resolution.
"""
from onnxcam.runtime.metrics._model import Scorer, class_score, softmax
from onnxcam.runtime.metrics.faithfulness import (auc, average_drop, cam_mult_scores, confidence_change,
                                                  deletion_curve, drop_in_confidence, gaussian_blur,
                                                  increase_in_confidence, increase_in_confidence_percent,
                                                  insertion_curve, relative_drop, remove_top_percent,
                                                  rise_kernel, win_percent)
from onnxcam.runtime.metrics.localisation import (as_boxes, as_mask, box_iou, box_localisation, boxes_to_mask,
                                                  energy_pointing_game, gini, label_components, mask_to_box,
                                                  pointing_game, sparsity, top_percent_box, topk_box_iou)
from onnxcam.runtime.metrics.road import (linear_impute, noisy_linear_impute, road_combined, road_keep_mask,
                                          road_lerf, road_morf, road_scores)

__all__ = [
    "Scorer", "auc", "average_drop", "cam_mult_scores", "class_score", "confidence_change",
    "deletion_curve", "drop_in_confidence", "gaussian_blur", "increase_in_confidence",
    "increase_in_confidence_percent", "insertion_curve", "relative_drop", "remove_top_percent",
    "rise_kernel", "softmax", "win_percent",
    "as_boxes", "as_mask", "box_iou", "box_localisation", "boxes_to_mask", "energy_pointing_game", "gini",
    "label_components", "mask_to_box", "pointing_game", "sparsity", "top_percent_box", "topk_box_iou",
    "linear_impute", "noisy_linear_impute", "road_combined", "road_keep_mask", "road_lerf", "road_morf",
    "road_scores",
]
