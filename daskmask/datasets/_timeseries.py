"""Temporal model of the synthetic EPI run: scanner drift, BOLD networks, physiology.

Everything here is a pure function of the time index ``t`` (and of parameters drawn once
from the seed), so any volume can be produced on its own and in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Band of resting-state BOLD fluctuations (Hz).
_BOLD_BAND_HZ = (0.01, 0.1)
_SINUSOIDS_PER_NETWORK = 8
# RMS amplitude of the BOLD signal at a network centre in grey matter, as a fraction of the
# baseline (the network time courses have unit RMS before this scaling).
_BOLD_AMPLITUDE = 0.02
# Physiological rhythms, evaluated at the acquisition times so that they alias into the
# sampled band exactly as in a real run with TR longer than a heartbeat.
_CARDIAC_HZ = 1.1
_RESPIRATION_HZ = 0.28
_CSF_PULSATION_AMPLITUDE = 0.015
_GLOBAL_RESPIRATION_AMPLITUDE = 0.004


@dataclass(frozen=True)
class TemporalModel:
    """Time courses shared by all voxels of a run.

    Attributes
    ----------
    n_timepoints : int
        Run length in volumes (the drift is defined over the whole run).
    t_r : float
        Repetition time in seconds.
    drift_coefficients : numpy.ndarray
        Weights of the linear, half-cosine and full-cosine drift terms.
    network_frequencies_hz, network_phases, network_weights : numpy.ndarray
        ``(n_networks, n_sinusoids)`` parameters of the band-limited network time courses.
    physiology_phases : numpy.ndarray
        Phases of the cardiac and respiratory rhythms.

    """

    n_timepoints: int
    t_r: float
    drift_coefficients: np.ndarray
    network_frequencies_hz: np.ndarray
    network_phases: np.ndarray
    network_weights: np.ndarray
    physiology_phases: np.ndarray

    @property
    def n_networks(self) -> int:
        """Number of BOLD networks."""
        return int(self.network_frequencies_hz.shape[0])

    def drift(self, t: int) -> float:
        """Return the multiplicative scanner drift at volume ``t`` (around 1).

        A positive linear trend (scanner warming) plus two low-order cosines, defined over
        the run so that its amplitude does not grow with the run length.
        """
        run_fraction = t / max(self.n_timepoints - 1, 1)
        linear, half_cosine, cosine = self.drift_coefficients
        return float(
            1.0
            + linear * (2.0 * run_fraction - 1.0)
            + half_cosine * np.cos(np.pi * run_fraction)
            + cosine * np.cos(2.0 * np.pi * run_fraction)
        )

    def network_signals(self, t: int) -> np.ndarray:
        """Return the fractional BOLD change of each network at volume ``t`` (float64)."""
        time_s = t * self.t_r
        waves = np.sin(2.0 * np.pi * self.network_frequencies_hz * time_s + self.network_phases)
        return _BOLD_AMPLITUDE * np.sum(self.network_weights * waves, axis=1)

    def physiology_signals(self, t: int) -> np.ndarray:
        """Return the (CSF pulsation, global respiration) fractional changes at volume ``t``."""
        time_s = t * self.t_r
        cardiac = np.sin(2.0 * np.pi * _CARDIAC_HZ * time_s + self.physiology_phases[0])
        respiration = np.sin(2.0 * np.pi * _RESPIRATION_HZ * time_s + self.physiology_phases[1])
        return np.array(
            [
                _CSF_PULSATION_AMPLITUDE * (0.7 * cardiac + 0.3 * respiration),
                _GLOBAL_RESPIRATION_AMPLITUDE * respiration,
            ]
        )


def build_temporal_model(
    n_timepoints: int, t_r: float, n_networks: int, rng: np.random.Generator
) -> TemporalModel:
    """Draw the parameters of a run's time courses.

    Parameters
    ----------
    n_timepoints : int
        Run length in volumes.
    t_r : float
        Repetition time in seconds; BOLD frequencies stay below 90 % of the Nyquist
        frequency so that the networks are smooth whatever the TR.
    n_networks : int
        Number of BOLD networks.
    rng : numpy.random.Generator
        Source of the parameters.

    Returns
    -------
    TemporalModel

    """
    nyquist_hz = 0.5 / t_r
    low_hz = min(_BOLD_BAND_HZ[0], 0.5 * nyquist_hz)
    high_hz = min(_BOLD_BAND_HZ[1], 0.9 * nyquist_hz)
    size = (n_networks, _SINUSOIDS_PER_NETWORK)
    frequencies = rng.uniform(low_hz, high_hz, size=size)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=size)
    # Roughly 1/f power, then unit RMS per network (a sinusoid has RMS amplitude/sqrt(2)).
    weights = 1.0 / np.sqrt(frequencies / low_hz)
    weights /= np.sqrt(np.sum(weights**2, axis=1, keepdims=True) / 2.0)
    drift_coefficients = np.array(
        [rng.uniform(0.01, 0.025), rng.uniform(-0.006, 0.006), rng.uniform(-0.004, 0.004)]
    )
    return TemporalModel(
        n_timepoints=n_timepoints,
        t_r=t_r,
        drift_coefficients=drift_coefficients,
        network_frequencies_hz=frequencies,
        network_phases=phases,
        network_weights=weights,
        physiology_phases=rng.uniform(0.0, 2.0 * np.pi, size=2),
    )
