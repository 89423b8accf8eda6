"""Figures of images, masks and signals, on matplotlib.

Every function reads only what it draws (the mean or one volume of a 4-D
run, the mask, a few voxels' signals) and returns a :class:`Display` that
shows in Jupyter and saves to PNG or SVG.
"""

from daskmask.plotting._display import Display, OrthoDisplay
from daskmask.plotting._epi import plot_epi
from daskmask.plotting._roi import plot_roi
from daskmask.plotting._signals import plot_signals

__all__ = ["Display", "OrthoDisplay", "plot_epi", "plot_roi", "plot_signals"]
