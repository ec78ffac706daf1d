"""Average-case perturbations: the common corruptions of CIFAR-10-C and MNIST-C, batched in torch.

:func:`corrupt` applies one corruption at one of five severities to a batch of images
``(N, C, H, W)`` in [0, 1], grey (C = 1) or colour (C = 3), on the input's device, in its
dtype, with the output clamped to [0, 1] and every random draw taken from an optional
``torch.Generator``. :func:`corruption_accuracy` evaluates a model on every
corruption x severity cell and reports the unweighted mean over the cells (the way
RobustBench reports CIFAR-10-C).

Corruptions (:func:`corruption_names`):

- the 15 of Hendrycks & Dietterich (ICLR 2019): gaussian_noise, shot_noise,
  impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
  brightness, contrast, elastic_transform, pixelate, jpeg_compression;
- the MNIST-C ones (Mu & Gilmer 2019) that are not among those 15: shear, scale,
  rotate, translate, stripe, dotted_line, zigzag, canny_edges, spatter.

Constants (:func:`corruption_parameters`; the full table is in docs/corruptions.md):

- Images whose smaller side is >= 30 use the CIFAR-10-C constants of
  ``hendrycks/robustness`` ``ImageNet-C/create_c/make_cifar_c.py`` (exact at 32 x 32).
- Smaller images use the five-level tables of ``google-research/mnist-c``
  ``corruptions.py`` (exact at 28 x 28). The MNIST-C dataset uses one of those five
  levels per corruption (the function's default); :func:`corruption_info` says which.
  The four MNIST-C corruptions that have no levels (stripe, dotted_line, zigzag,
  canny_edges) get five: stripe and canny_edges blend the MNIST-C result in with
  opacity ``severity / 5`` (severity 5 = MNIST-C), dotted_line and zigzag draw
  ``severity`` lines (severity 1 = MNIST-C).
- Other sizes (8 x 8 digits, 64 x 64, ...) take the table of the nearer reference
  and multiply every parameter measured in pixels (blur sigmas and radii, shifts,
  line widths, elastic fields, the fog map size) by ``min(H, W) / 28`` (or ``/ 32``);
  intensities, probabilities, angles, zoom factors, JPEG qualities and pixelation
  factors are kept. Integer pixel parameters are rounded (at least 1).
- MNIST-only corruptions (shear, ... spatter) use the MNIST-C table at every size
  (CIFAR-10-C's water spatter needs OpenCV's Canny, distance transform and histogram
  equalisation and is not reproduced; its mud branch is the MNIST-C algorithm, with
  CIFAR-10-C's mud colour for colour images).

Where the sources call a library, the same operation is written here in torch:
Gaussian filters as scipy/scikit-image define them (truncate and border modes),
ImageMagick's one-sided motion-blur kernel, the diamond-square plasma of the
sources, PIL's BOX resampling (pixelate), scikit-image's affine warps and Canny
detector, OpenCV's affine warp, and libjpeg's baseline JPEG codec as PIL calls it
(quality scaling, integer colour conversion, 4:2:0 chroma subsampling and
triangular upsampling, the accurate integer DCT): the same 8-bit output as PIL.
Grey images go through JPEG's single-component (luminance) path, as PIL does for
mode "L" (no repeating into three channels).
Frost uses five procedural ice textures (needles along the three hexagonal axes
with side branches, over a plasma haze) generated once from a fixed seed, standing
in for the source's six frost photographs, which are not downloaded.
Outputs are not quantised to 8 bits (the datasets store uint8), except JPEG and
pixelate, which the sources compute on 8-bit PIL images (pixelate: PIL's two 8-bit
passes per resize, bit-exact).

Every corruption is vectorised over the batch. Glass blur keeps the source's
sequential pixel swaps (a swap may move a pixel an earlier swap moved), so it loops
over pixel positions, each step working on the whole batch. Its "swap" is the published
one, which copies colour pixels instead of exchanging them (NumPy views; see
``hendrycks.glass_blur``); ``corrupt(..., glass_swap="swap")`` exchanges them.

Modules: ``imageops`` (the library operations the sources call, in torch), ``jpeg``
(libjpeg's codec), ``hendrycks`` and ``mnist_c`` (the corruptions as functions of the
images, their constants and a random source), ``catalogue`` (the table of corruptions
and constants, :func:`corrupt`) and ``evaluation`` (:func:`corruption_accuracy`). To add
a corruption: its function in ``hendrycks`` or ``mnist_c``, one entry in
``catalogue.SPECS``, its reference test in ``tests/corruptions/`` and its row in
docs/corruptions.md.

>>> import torch
>>> x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
>>> y = corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(1))
>>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
(torch.Size([4, 1, 28, 28]), torch.float32, True)
>>> corruption_parameters("gaussian_noise", 3, (28, 28))
{'sigma': 0.18}
>>> corruption_parameters("gaussian_noise", 3, (32, 32))
{'sigma': 0.08}
"""

from snnl.corruptions.catalogue import (
    PRESETS,
    SEVERITIES,
    CorruptionInfo,
    corrupt,
    corruption_info,
    corruption_names,
    corruption_parameters,
)
from snnl.corruptions.evaluation import CorruptionAccuracy, corruption_accuracy

__all__ = [
    "SEVERITIES",
    "PRESETS",
    "CorruptionInfo",
    "CorruptionAccuracy",
    "corrupt",
    "corruption_names",
    "corruption_info",
    "corruption_parameters",
    "corruption_accuracy",
]
