"""The prompt ledger (trainer.ledger): every prompt handed out ends trained or dropped at one step, or is
handed out again after a resume; a resume with other data or a mismatched position is refused.
The real run killed and resumed is in test_end_to_end."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.test_controller_steps import FakeSystem, _cfg
from trainer import steps
from trainer.data import PromptSampler
from trainer.ledger import LedgerError, PromptLedger, fingerprint
from trainer.types import Prompt


def _prompts(n):
    return [Prompt(index=i, text=f"q{i}", ground_truth=str(i)) for i in range(n)]


def test_every_prompt_is_trained_or_dropped_exactly_once_per_epoch():
    # Even prompts: every sample right (zero variance, dropped by dynamic sampling); odd: half right.
    data = _prompts(24)
    system = FakeSystem(lambda i, g: i % 2 == 0 or g % 2 == 0)
    sampler, ledger = PromptSampler(data, seed=0, shuffle=False), PromptLedger(fingerprint(data))
    cfg = _cfg(dynamic_sampling=True)
    for step in (1, 2, 3):
        scored, _ = steps.sample_groups(system, sampler, cfg, seed=step, ledger=ledger)
        record = ledger.trained(step, scored.rollout.prompts)
        assert all(i % 2 == 1 for i in record.trained) and all(i % 2 == 0 for i in record.dropped)
    accounted = sorted(i for r in ledger.records for i in r.trained + r.dropped)
    assert accounted == list(range(24))   # 3 steps x 2 rounds x 4 prompts: one epoch, each prompt once
    assert ledger.handed_out == 24 and ledger.in_flight == [] and sampler.state.epoch == 1


def test_ledger_round_trips_and_refuses_a_mismatched_resume():
    data = _prompts(8)
    ledger = PromptLedger(fingerprint(data))
    ledger.dispatched(data[:4])
    ledger.scored(data[:4])
    ledger.trained(1, data[:4])
    ledger.dispatched(data[4:6])          # in flight when the checkpoint is written
    again = PromptLedger.from_text(ledger.to_text())
    assert again == ledger
    again.check_resume(step=1, data_sha256=fingerprint(data), sampler_handed_out=6)
    changed = [replace(data[3], ground_truth="99"), *data[4:]]
    with pytest.raises(LedgerError, match="training prompts differ"):
        again.check_resume(step=1, data_sha256=fingerprint(data[:3] + changed), sampler_handed_out=6)
    with pytest.raises(LedgerError, match="ends at step 1, the checkpoint is at step 2"):
        again.check_resume(step=2, data_sha256=fingerprint(data), sampler_handed_out=6)
    with pytest.raises(LedgerError, match="handed out 4 prompts, the ledger accounts for 6"):
        again.check_resume(step=1, data_sha256=fingerprint(data), sampler_handed_out=4)
    with pytest.raises(LedgerError, match="unreadable"):
        PromptLedger.from_text('{"format": 1}\n', source="x/ledger.jsonl")


def test_in_flight_prompts_are_handed_out_again_first_and_counted_once():
    data = _prompts(8)
    sampler, ledger = PromptSampler(data, seed=1), PromptLedger(fingerprint(data))
    first = sampler.next(3)
    ledger.dispatched(first)              # the checkpoint is written while these are in flight
    resumed = PromptLedger.from_text(ledger.to_text())
    again = PromptSampler(data, seed=1, state=sampler.state)
    again.requeue(resumed.in_flight)
    batch = again.next(4)
    assert [p.index for p in batch[:3]] == [p.index for p in first]
    assert batch[3] == PromptSampler(data, seed=1).next(4)[3]   # then the seeded order goes on
    resumed.dispatched(batch)
    resumed.scored(batch)
    resumed.trained(1, batch)
    assert resumed.handed_out == 4 and resumed.in_flight == []


def test_training_an_unscored_prompt_or_a_checkpoint_inside_a_step_is_refused():
    data = _prompts(4)
    ledger = PromptLedger(fingerprint(data))
    ledger.dispatched(data[:2])
    with pytest.raises(LedgerError, match="never dispatched"):
        ledger.scored(data[2:3])
    ledger.scored(data[:1])
    with pytest.raises(LedgerError, match="trains prompt 1, which was not scored"):
        ledger.trained(1, data[:2])
    with pytest.raises(LedgerError, match="inside a step"):
        ledger.to_text()
