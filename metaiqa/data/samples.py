"""The one record type every data set is read into."""

from dataclasses import dataclass
from pathlib import Path

from metaiqa.errors import MetaIQAError


class DatasetError(MetaIQAError):
    """A data set's files are missing, malformed, or hold bad values (message names file and row)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    mos:    normalised opinion score in [0, 1], higher is better, whatever the source scale.
    group:  the task id: distortion type where the set has one (e.g. "gaussian_blur"), else None.
    ref_id: the pristine content this image was made from, so splits can be content-disjoint.
    level:  distortion level (1 = mildest) where known; 0 for a pristine reference.
    source: the scene ref_id was cut from, when several references share one photo (our
            synthetic crops): content-disjoint splits group by `source or ref_id`, while a
            ranking loss pairs versions of the same `ref_id` (labels are relative to it).
    """

    path: Path
    mos: float
    group: str | None = None
    ref_id: str | None = None
    level: int | None = None
    source: str | None = None

    @property
    def content(self) -> str | None:
        """What content-disjoint splits must keep apart."""
        return self.source or self.ref_id
