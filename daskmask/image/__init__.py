"""Operations on single volumes: resampling onto another grid and smoothing."""

from daskmask.image._smoothing import smooth_array
from daskmask.image.resampling import (
    new_img_like,
    resample_img,
    resample_to_img,
    resample_volume,
)

__all__ = [
    "new_img_like",
    "resample_img",
    "resample_to_img",
    "resample_volume",
    "smooth_array",
]
