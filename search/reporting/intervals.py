"""Confidence intervals of accuracies, and when one accuracy's lead over another is more than noise.

An accuracy measured on n images is a binomial proportion, so its interval depends on n alone: the
same 90 % means a lot less on digits' 431 validation images than on 10,000 CIFAR-10 test images.
The interval is Wilson's score interval at 95 % (Wilson 1927), in closed form. Why Wilson: the
textbook Wald interval (p ± z·sqrt(p(1-p)/n)) collapses to a point at 0 % or 100 % and undercovers
near them, where ReLU-reduced models of small datasets often sit; Wilson's stays inside [0, 1], never
has zero width, and covers close to its nominal 95 % even for small n. A bootstrap would need each
image's prediction, which the study does not store; the interval needs only the accuracy and n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95 % interval
METHOD = "95% Wilson score interval (binomial) on the number of images in the split"


@dataclass(frozen=True)
class Interval:
    """A closed interval of accuracies, as fractions."""

    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def wilson(accuracy: float, n: int, z: float = Z_95) -> Interval:
    """The Wilson score interval of an accuracy (a fraction) measured on ``n`` images."""
    if n < 1:
        raise ValueError(f"a split of {n} images has no accuracy")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy {accuracy} is not a fraction")
    z2 = z * z
    scale = 1.0 + z2 / n
    centre = (accuracy + z2 / (2 * n)) / scale
    half = z / scale * math.sqrt(accuracy * (1.0 - accuracy) / n + z2 / (4 * n * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(accuracy: float | None, n: int | None) -> Interval | None:
    """The interval where both the accuracy and the split's size are known, else None."""
    if accuracy is None or n is None or n < 1 or not 0.0 <= accuracy <= 1.0:
        return None
    return wilson(accuracy, n)
