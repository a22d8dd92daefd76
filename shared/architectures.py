"""The architectures a study may name, with what the submitter must know about each.

Only metadata lives here (no TensorFlow): sizes the study is validated against and the names
the worker uses to build the model from `keras.applications`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    module: str  # keras.applications submodule that holds the constructor and preprocess_input
    constructor: str  # class/function name inside keras.applications
    min_size: int  # smallest image side keras.applications accepts without the top
    imagenet_size: int | None = None  # the only side the ImageNet weights accept, if fixed
    unfreeze_from: str | int | None = None  # default first trainable layer for fine-tuning

    @property
    def is_benchmark(self) -> bool:
        return self.name == "benchmark"

    def size_error(self, image_size: int, weights: str | None) -> str | None:
        """Why this architecture cannot take `image_size` with `weights`, or None if it can."""
        if image_size < self.min_size:
            return f"image_size {image_size} is below {self.name}'s minimum of {self.min_size}"
        if weights == "imagenet" and self.imagenet_size and image_size != self.imagenet_size:
            return (
                f"{self.name} with imagenet weights needs image_size {self.imagenet_size}, "
                f"got {image_size}"
            )
        return None


def _efficientnet(index: int) -> Architecture:
    return Architecture(
        f"efficientnet_b{index}", "efficientnet", f"EfficientNetB{index}", 32, unfreeze_from="block7a_expand_conv"
    )


_ALL = [
    Architecture("benchmark", "", "", 32, unfreeze_from=0),
    Architecture("xception", "xception", "Xception", 71, unfreeze_from="block14_sepconv1"),
    Architecture("vgg16", "vgg16", "VGG16", 32, unfreeze_from="block5_conv1"),
    Architecture("vgg19", "vgg19", "VGG19", 32, unfreeze_from="block5_conv1"),
    Architecture("resnet50", "resnet", "ResNet50", 32, unfreeze_from="conv5_block1_1_conv"),
    Architecture("inception_v3", "inception_v3", "InceptionV3", 75, unfreeze_from="mixed9"),
    Architecture(
        "inception_resnet_v2", "inception_resnet_v2", "InceptionResNetV2", 75, unfreeze_from="conv_7b"
    ),
    Architecture("mobilenet", "mobilenet", "MobileNet", 32, unfreeze_from="conv_dw_13"),
    Architecture("mobilenet_v2", "mobilenet_v2", "MobileNetV2", 32, unfreeze_from="block_16_expand"),
    Architecture("densenet121", "densenet", "DenseNet121", 32, unfreeze_from="conv5_block1_0_bn"),
    Architecture("densenet169", "densenet", "DenseNet169", 32, unfreeze_from="conv5_block1_0_bn"),
    Architecture("densenet201", "densenet", "DenseNet201", 32, unfreeze_from="conv5_block1_0_bn"),
    # NASNet's ImageNet weights only load at the size they were trained at.
    Architecture("nasnet_mobile", "nasnet", "NASNetMobile", 32, imagenet_size=224, unfreeze_from=-60),
    Architecture("nasnet_large", "nasnet", "NASNetLarge", 32, imagenet_size=331, unfreeze_from=-60),
    *[_efficientnet(i) for i in range(8)],
    Architecture("convnext_tiny", "convnext", "ConvNeXtTiny", 32, unfreeze_from="convnext_tiny_stage_3_block_0_depthwise_conv"),
]

ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in _ALL}
