"""DM — Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Real-image initialisation; each iteration a freshly initialised ConvNet-3 embeds a real batch
(256 per class) and the synthetic images under the same siamese DSA draw; SGD on the images
(lr 1.0, momentum 0.5) minimises the squared distance between class-mean embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..data import LabeledImages
from ..normalization import Normalization
from ..synthetic import SyntheticSet
from .base import CONDENSERS, Budget, Runtime, SnapshotCallback
from .driver import Execution
from .matching import ALGORITHM_VERSION, MatchingConfig, match_distributions

DM_ITERATIONS = 20_000  # the reference budget; pass a smaller Budget on a CPU


@CONDENSERS.register("dm")
@dataclass(frozen=True)
class DM:
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    iterations: int = DM_ITERATIONS
    name: str = "dm"
    # not fields: the loop's version enters cache keys without changing the options
    algorithm_version: ClassVar[int] = ALGORITHM_VERSION
    iterative: ClassVar[bool] = True

    def with_runtime(self, runtime: Runtime) -> DM:
        return replace(self, matching=runtime.apply(self.matching))

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        return match_distributions(
            train, ipc, method=self.name, config=self.matching, normalization=normalization,
            seed=seed, budget=budget or Budget(iterations=self.iterations),
            on_snapshot=on_snapshot, progress=progress, execution=execution,
        )
