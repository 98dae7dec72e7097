"""The accuracy gate: a backend's features and top-1 classes against torch fp32 on real clips.

A reduced-precision or quantized backend is used only when, on the gate clips, every clip's
feature vector keeps cosine >= MIN_COSINE to torch fp32 and the head's top-1 class agrees with
torch's on at least TOP1_AGREEMENT of the clips (not all: a clip whose two best classes are a
near-tie may swap them under any rounding, and one such clip must not veto a backend).
"""

from dataclasses import dataclass

import numpy as np

MIN_COSINE = 0.99
TOP1_AGREEMENT = 0.9


@dataclass(frozen=True)
class GateResult:
    """How a backend compared with torch fp32 on `clips` gate clips."""

    passed: bool
    min_cosine: float
    top1_agreement: float
    clips: int

    def describe(self):
        verdict = "passes" if self.passed else "fails"
        return (f"{verdict} the accuracy gate: min cosine {self.min_cosine:.5f} (needs "
                f">= {MIN_COSINE}), top-1 agreement {self.top1_agreement:.0%} (needs "
                f">= {TOP1_AGREEMENT:.0%}) on {self.clips} clips")


def cosines(reference, features):
    """Row-wise cosine similarity of two (N, D) arrays: 1.0 where both rows are zero, 0.0 where
    only one is (a backend that lost every feature must not pass)."""
    reference = np.asarray(reference, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    dot = (reference * features).sum(axis=1)
    ref_norm, norm = np.linalg.norm(reference, axis=1), np.linalg.norm(features, axis=1)
    norms = ref_norm * norm
    cosine = dot / np.where(norms == 0, 1.0, norms)
    return np.where(norms == 0, np.where((ref_norm == 0) & (norm == 0), 1.0, 0.0), cosine)


def check(reference, candidate):
    """reference, candidate: (logits, features) of the same clips -> GateResult."""
    (ref_logits, ref_features), (logits, features) = reference, candidate
    worst = float(cosines(ref_features, features).min())
    agreement = float(np.mean(ref_logits.argmax(axis=1) == logits.argmax(axis=1)))
    passed = worst >= MIN_COSINE and agreement >= TOP1_AGREEMENT
    return GateResult(passed, round(worst, 6), round(agreement, 4), len(ref_features))


def run_batched(runner, clips, batch_size):
    """(logits, features) of `runner` over a (N, C, T, H, W) tensor, `batch_size` at a time."""
    parts = [runner(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)]
    return tuple(np.concatenate([part[k] for part in parts]) for k in (0, 1))
