"""Preset denoising strategies from the literature (nilearn's ``load_confounds_strategy``)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Literal

from daskmask._warnings import warn_user
from daskmask.interfaces.fmriprep._load import load_confounds

#: Each preset: the components it uses, the options it sets, and which of them
#: a user may change (``global_signal`` adds the global signal when given).
PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        # Fox et al. 2005: motion, white matter and CSF, high-pass.
        "simple": MappingProxyType(
            {
                "strategy": ("high_pass", "motion", "wm_csf"),
                "motion": "full",
                "wm_csf": "basic",
                "global_signal": None,
                "demean": True,
            }
        ),
        # Power et al. 2012/2014: "simple" with full wm_csf, and scrubbing.
        "scrubbing": MappingProxyType(
            {
                "strategy": ("high_pass", "motion", "wm_csf", "scrub"),
                "motion": "full",
                "wm_csf": "full",
                "scrub": 5,
                "fd_threshold": 0.5,
                "std_dvars_threshold": 1.5,
                "global_signal": None,
                "demean": True,
            }
        ),
        # Behzadi et al. 2007: anatomical CompCor.
        "compcor": MappingProxyType(
            {
                "strategy": ("high_pass", "motion", "compcor"),
                "motion": "full",
                "n_compcor": "all",
                "compcor": "anat_combined",
                "global_signal": None,
                "demean": True,
            }
        ),
        # Pruim et al. 2015: fMRIPrep's non-aggressive AROMA output plus WM/CSF.
        "ica_aroma": MappingProxyType(
            {
                "strategy": ("high_pass", "wm_csf", "ica_aroma"),
                "wm_csf": "basic",
                "ica_aroma": "full",
                "global_signal": None,
                "demean": True,
            }
        ),
    }
)

#: Options a preset fixes for good (not adjustable through ``**kwargs``).
_FIXED = frozenset({"strategy", "ica_aroma"})


def preset_parameters(denoise_strategy: str, **kwargs: Any) -> dict[str, Any]:
    """Return the ``load_confounds`` arguments of a preset with the user's adjustments.

    Parameters
    ----------
    denoise_strategy : str
        A preset name.
    **kwargs
        Adjustments; None keeps the preset's value. A ``global_signal``
        expansion adds the global signal to the preset's components. Options
        the preset does not use are ignored with a warning.

    Returns
    -------
    dict
        Keyword arguments for :func:`load_confounds`.

    """
    if denoise_strategy not in PRESETS:
        raise ValueError(
            f"denoise_strategy must be one of {list(PRESETS)}, not {denoise_strategy!r}."
        )
    preset = PRESETS[denoise_strategy]
    adjustable = [name for name in preset if name not in _FIXED]
    parameters = {name: value for name, value in preset.items() if name != "global_signal"}
    for name in adjustable:
        value = kwargs.pop(name, None)
        if name == "global_signal":
            if isinstance(value, str):
                parameters["global_signal"] = value
                parameters["strategy"] = (*parameters["strategy"], "global_signal")
        elif value is not None:
            parameters[name] = value
    if kwargs:
        warn_user(
            f"The preset '{denoise_strategy}' does not use {sorted(kwargs)}; they are ignored. "
            f"It accepts {adjustable}.",
            UserWarning,
        )
    return parameters


def load_confounds_strategy(
    img_files: Any,
    denoise_strategy: Literal["simple", "scrubbing", "compcor", "ica_aroma"] = "simple",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load fMRIPrep's confounds with a preset denoising strategy.

    The presets and the options each lets you change are nilearn 0.14.1's;
    so are the results.

    Parameters
    ----------
    img_files : str, path-like, Location, or list of those
        As for :func:`load_confounds`.
    denoise_strategy : {"simple", "scrubbing", "compcor", "ica_aroma"}, default="simple"
        - "simple" (Fox et al. 2005): high-pass, motion ("full"), wm_csf
          ("basic"). Adjustable: motion, wm_csf, global_signal, demean.
        - "scrubbing" (Power et al. 2012, 2014): high-pass, motion ("full"),
          wm_csf ("full"), scrub (5, fd_threshold 0.5 mm, std_dvars_threshold
          1.5). Adjustable: those and global_signal, demean.
        - "compcor" (Behzadi et al. 2007): high-pass, motion ("full"),
          compcor ("anat_combined", n_compcor "all"). Adjustable: motion,
          compcor, n_compcor, global_signal, demean.
        - "ica_aroma" (Pruim et al. 2015): the image must be fMRIPrep's
          ``desc-smoothAROMAnonaggr_bold``; high-pass and wm_csf ("basic")
          regressors. Adjustable: wm_csf, global_signal, demean.
    **kwargs
        Adjustments of the preset's options (see above). ``global_signal``
        ("basic", "power2", "derivatives" or "full") adds the global signal.
        Other options are ignored with a warning.

    Returns
    -------
    confounds, sample_mask
        As for :func:`load_confounds`.

    Notes
    -----
    nilearn's table of presets gives 0.2 and 3 as the scrubbing thresholds;
    its code (and this function) use 0.5 and 1.5 since nilearn 0.13.

    """
    return load_confounds(img_files, **preset_parameters(denoise_strategy, **kwargs))
