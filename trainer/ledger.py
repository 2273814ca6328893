"""The prompt ledger: which training prompts a run dispatched, scored and trained, step by step.

    sampler.next ──► dispatched ──► engines, reward actors ──► scored ──► learner ──► trained at step s
                                                                  └─► dropped (dynamic sampling's
                                                                      all-equal groups: scored, not trained)

It is what makes "exactly once" checkable: every prompt the sampler hands out ends as trained or
dropped at one step, or is still in flight (dispatched, not yet scored) when a checkpoint is written.
The ledger is saved in every checkpoint (`ledger.jsonl`, hashed by the manifest like every other file):
a header line (format, fingerprint of the training prompts, prompts handed out, in-flight ids), then
one line per step with the ids it trained and dropped. A resume checks it against the checkpoint:

- the training prompts must be the ones the ledger was written for (same ids, texts and answers), or
  the sampler's saved position would hand out different prompts: refused (`LedgerError`);
- the prompts the sampler handed out must equal those the ledger accounts for, and its last step the
  checkpoint's step;
- prompts in flight at the checkpoint (none in the synchronous loop, whose checkpoints follow a whole
  step; an overlapped rollout may hold some) are handed out again first (`PromptSampler.requeue`).

A prompt's id is its row number in the training file (`Prompt.index`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainer.types import Prompt

LEDGER = "ledger.jsonl"
"""File name of the ledger inside a checkpoint directory."""
LEDGER_FORMAT = 1


class LedgerError(RuntimeError):
    """The ledger disagrees with the checkpoint or the data: resuming would repeat or skip prompts."""


@dataclass(frozen=True)
class StepRecord:
    step: int
    trained: tuple[int, ...]
    """Ids of the B groups the learner trained on at this step, in batch order."""
    dropped: tuple[int, ...] = ()
    """Ids scored at this step but not trained (dynamic sampling dropped or did not need them)."""


def fingerprint(prompts: Sequence[Prompt]) -> str:
    """sha256 over every training prompt's id, text and answer, in file order."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.index, p.text, p.ground_truth]).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class PromptLedger:
    data_sha256: str
    """`fingerprint` of the training prompts the ledger was written for."""
    records: list[StepRecord] = field(default_factory=list)
    handed_out: int = 0
    """Prompts the sampler handed out (a re-dispatch of an in-flight prompt does not count)."""
    in_flight: list[int] = field(default_factory=list)
    """Dispatched, not yet scored."""
    scored_ids: list[int] = field(default_factory=list)
    """Scored in the step in progress, not yet trained or dropped."""
    started_at: int = 0
    """Step the ledger began at (0; a checkpoint written before the ledger existed starts it later)."""

    # --- recording ---------------------------------------------------------------------------

    def dispatched(self, prompts: Iterable[Prompt]) -> None:
        prompts = list(prompts)
        ids = [p.index for p in prompts]
        if len(set(ids)) != len(ids):  # the sampler never does this; say so here, not at `scored`
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise LedgerError(f"prompts {twice[:8]} dispatched twice in one batch")
        for p in prompts:
            if p.index in self.in_flight:
                continue  # handed out again after a resume: already accounted for
            self.in_flight.append(p.index)
            self.handed_out += 1

    def scored(self, prompts: Iterable[Prompt]) -> None:
        for p in prompts:
            if p.index not in self.in_flight:
                raise LedgerError(f"prompt {p.index} scored but never dispatched")
            self.in_flight.remove(p.index)
            self.scored_ids.append(p.index)

    def trained(self, step: int, prompts: Iterable[Prompt]) -> StepRecord:
        """Close `step`: its trained prompts; whatever else was scored since the last step is dropped."""
        ids = [p.index for p in prompts]
        pool = list(self.scored_ids)
        for i in ids:
            if i not in pool:
                raise LedgerError(f"step {step} trains prompt {i}, which was not scored since step "
                                  f"{self.last_step}")
            pool.remove(i)
        if step <= self.last_step:
            raise LedgerError(f"step {step} recorded after step {self.last_step}")
        record = StepRecord(step, tuple(ids), tuple(pool))
        self.records.append(record)
        self.scored_ids = []
        return record

    @property
    def last_step(self) -> int:
        return self.records[-1].step if self.records else self.started_at

    # --- saving and checking -----------------------------------------------------------------

    def to_text(self) -> str:
        if self.scored_ids:
            raise LedgerError(f"a checkpoint inside a step: prompts {self.scored_ids[:8]} are scored but "
                              f"neither trained nor dropped")
        header = {"format": LEDGER_FORMAT, "data_sha256": self.data_sha256, "handed_out": self.handed_out,
                  "in_flight": self.in_flight, "started_at": self.started_at}
        lines = [json.dumps(header)] + [json.dumps({"step": r.step, "trained": list(r.trained),
                                                    "dropped": list(r.dropped)}) for r in self.records]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, *, source: str = LEDGER) -> PromptLedger:
        try:
            header, *rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if header["format"] != LEDGER_FORMAT:
                raise ValueError(f"format {header['format']}, this version reads {LEDGER_FORMAT}")
            return cls(data_sha256=str(header["data_sha256"]), handed_out=int(header["handed_out"]),
                       in_flight=[int(i) for i in header["in_flight"]], started_at=int(header["started_at"]),
                       records=[StepRecord(int(r["step"]), tuple(map(int, r["trained"])),
                                           tuple(map(int, r["dropped"]))) for r in rows])
        except (ValueError, KeyError, TypeError) as e:
            raise LedgerError(f"{source}: unreadable ({type(e).__name__}: {e})") from e

    def check_resume(self, *, step: int, data_sha256: str, sampler_handed_out: int | None) -> None:
        """Raise LedgerError unless this ledger, the checkpoint's `step`, its sampler position
        (`sampler_handed_out` prompts; None when unknown) and the training data agree."""
        if data_sha256 != self.data_sha256:
            raise LedgerError(
                "the training prompts differ from those the checkpoint's run trained on (ids, texts or "
                "answers changed): the saved sampler position would hand out other prompts, some twice "
                "and some never. Restore the data file, or start over with --set resume=false.")
        if self.last_step != step:
            raise LedgerError(f"the ledger ends at step {self.last_step}, the checkpoint is at step {step}")
        if sampler_handed_out is not None and self.started_at == 0 and sampler_handed_out != self.handed_out:
            raise LedgerError(f"the sampler handed out {sampler_handed_out} prompts, the ledger accounts for "
                              f"{self.handed_out}")
