"""The registry of mask strategies: a strategy is added here, in one place.

A :class:`MaskStrategy` names the function that computes a mask from one run
(:class:`~daskmask.NiftiMasker`), the one that computes it from several runs
(a ``MultiNiftiMasker``), the arguments the masker fixes itself, and whether
the mask is computed from the mean over time (which lets a ``.nii.gz`` be
decoded once for the mask and the signals).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from daskmask.masking._background import compute_background_mask
from daskmask.masking._brain import compute_brain_mask
from daskmask.masking._epi import compute_epi_mask
from daskmask.masking._multi import (
    compute_multi_background_mask,
    compute_multi_brain_mask,
    compute_multi_epi_mask,
)


@dataclass(frozen=True)
class MaskStrategy:
    """How one value of ``mask_strategy`` computes a mask.

    Attributes
    ----------
    name : str
        The value of ``mask_strategy``.
    compute : callable
        ``compute(image, verbose=..., **fixed_args, **mask_args)`` for one run.
    compute_multi : callable
        The same for a list of runs (with ``threshold``, ``n_jobs``).
    fixed_args : mapping
        Arguments the strategy sets itself (a template's ``mask_type``).
    uses_mean : bool
        Whether the mask is computed from the mean over time of the run.

    """

    name: str
    compute: Callable[..., Any]
    compute_multi: Callable[..., Any]
    fixed_args: Mapping[str, Any] = field(default_factory=dict)
    uses_mean: bool = False


def _template(name: str, mask_type: str) -> MaskStrategy:
    return MaskStrategy(
        name,
        compute_brain_mask,
        compute_multi_brain_mask,
        MappingProxyType({"mask_type": mask_type}),
    )


#: Every strategy, in the order nilearn lists them.
STRATEGIES: Mapping[str, MaskStrategy] = MappingProxyType(
    {
        strategy.name: strategy
        for strategy in (
            MaskStrategy("background", compute_background_mask, compute_multi_background_mask,
                         uses_mean=True),
            MaskStrategy("epi", compute_epi_mask, compute_multi_epi_mask, uses_mean=True),
            _template("whole-brain-template", "whole-brain"),
            _template("gm-template", "gm"),
            _template("wm-template", "wm"),
        )
    }
)  # fmt: skip


def get_strategy(name: Any) -> MaskStrategy:
    """Return the registered strategy called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not a registered strategy (nilearn's exception type); the
        message lists the accepted values.

    """
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        names = [f"'{known}'" for known in STRATEGIES]
        accepted = ", ".join(names[:-1]) + f", and {names[-1]}"
        raise ValueError(
            f"Unknown value of mask_strategy '{name}'. Acceptable values are {accepted}."
        ) from None
