"""Config: `TrainConfig.validate()` and the `--set a.b=value` override parser."""

from __future__ import annotations

import dataclasses

import pytest

from trainer.config import (
    AlgorithmConfig,
    ConfigError,
    LearnerConfig,
    TrainConfig,
    apply_overrides,
    parse_value,
    to_dict,
)


def test_defaults_validate():
    cfg = TrainConfig()
    assert cfg.validate() is cfg
    assert cfg.sequences_per_step == 64  # 8 prompts x 8 samples
    assert cfg.sequences_per_update == 64
    assert not cfg.needs_reference


def test_every_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.kl_coef = 1.0  # type: ignore[misc]


# --- overrides: values parsed against the field type -----------------------------------------

def test_overrides_set_nested_fields_of_every_scalar_type():
    cfg = apply_overrides(TrainConfig(), [
        "seed=7",
        "name=demo",
        "algorithm.kl_coef=0.05",
        "algorithm.dynamic_sampling=true",
        "algorithm.advantage_estimator=rloo",
        "rollout.sampling.temperature=0.7",
        "learner.lr=1e-5",
        "cluster.num_cpus=4",
    ])
    assert cfg.seed == 7 and cfg.name == "demo"
    assert cfg.algorithm.kl_coef == 0.05 and cfg.algorithm.dynamic_sampling is True
    assert cfg.algorithm.advantage_estimator == "rloo"
    assert cfg.rollout.sampling.temperature == 0.7
    assert cfg.learner.lr == 1e-5 and cfg.cluster.num_cpus == 4
    # the rest is untouched, and the input config is not modified
    assert cfg.algorithm.group_size == 8 and TrainConfig().seed == 0


def test_overrides_parse_types_exactly():
    cfg = apply_overrides(TrainConfig(), ["algorithm.group_size=16", "algorithm.clip_eps_high=1",
                                          "rollout.weight_sync_bucket_bytes=1_000_000"])
    assert type(cfg.algorithm.group_size) is int and cfg.algorithm.group_size == 16
    assert type(cfg.algorithm.clip_eps_high) is float and cfg.algorithm.clip_eps_high == 1.0
    assert cfg.rollout.weight_sync_bucket_bytes == 1_000_000


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("True", True), ("1", True), ("yes", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False),
])
def test_bool_spellings(raw, expected):
    cfg = apply_overrides(TrainConfig(), [f"algorithm.overlong_filter={raw}"])
    assert cfg.algorithm.overlong_filter is expected


def test_whitespace_around_key_and_value_is_ignored():
    assert apply_overrides(TrainConfig(), ["  algorithm.kl_coef = 0.1 "]).algorithm.kl_coef == 0.1


def test_value_may_contain_equals_sign():
    assert apply_overrides(TrainConfig(), ["name=a=b"]).name == "a=b"


def test_later_override_wins():
    assert apply_overrides(TrainConfig(), ["seed=1", "seed=2"]).seed == 2


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.group_size=8.5", "algorithm.group_size='8.5': expected int"),
    ("algorithm.group_size=eight", "algorithm.group_size='eight': expected int"),
    ("algorithm.group_size=true", "expected int"),
    ("algorithm.group_size=", "expected int"),
    ("algorithm.group_size=_8_", "expected int"),
    ("algorithm.kl_coef=high", "algorithm.kl_coef='high': expected float"),
    ("algorithm.kl_coef=nan", "NaN is not a valid setting"),
    ("algorithm.overlong_filter=maybe", "algorithm.overlong_filter='maybe': expected a bool"),
    ("seed=0x10", "seed='0x10': expected int"),
])
def test_wrong_type_is_an_error_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_overrides(TrainConfig(), [override])


def test_unknown_key_names_the_key_and_lists_the_fields():
    with pytest.raises(ConfigError, match=r"unknown config key 'algorithm\.kl_cof'") as info:
        apply_overrides(TrainConfig(), ["algorithm.kl_cof=0.1"])
    assert "AlgorithmConfig has no field 'kl_cof'" in str(info.value)
    assert "kl_coef" in str(info.value)  # the list of fields shows the intended name
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        apply_overrides(TrainConfig(), ["nope=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout\.sampling\.temp'"):
        apply_overrides(TrainConfig(), ["rollout.sampling.temp=1"])


def test_scalar_is_not_a_section_and_section_is_not_a_scalar():
    with pytest.raises(ConfigError, match=r"unknown config key 'name\.x': 'name' is not a section"):
        apply_overrides(TrainConfig(), ["name.x=3"])
    with pytest.raises(ConfigError, match=r"'algorithm' is a section"):
        apply_overrides(TrainConfig(), ["algorithm=3"])


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(TrainConfig(), ["algorithm.kl_coef"])


def test_literal_choices():
    cfg = apply_overrides(TrainConfig(), ["algorithm.loss_aggregation=seq_mean_token_sum_norm",
                                          "algorithm.kl_estimator=k1", "model.dtype=bfloat16"])
    assert cfg.algorithm.loss_aggregation == "seq_mean_token_sum_norm"
    assert cfg.algorithm.kl_estimator == "k1" and cfg.model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"advantage_estimator='GRPO': expected one of grpo, dr_grpo, rloo"):
        apply_overrides(TrainConfig(), ["algorithm.advantage_estimator=GRPO"])
    with pytest.raises(ConfigError, match="expected one of k1, k2, k3"):
        apply_overrides(TrainConfig(), ["algorithm.kl_estimator=k4"])


def test_tuples():
    cfg = apply_overrides(TrainConfig(), ["rollout.sampling.stop=</answer>, END ,\n"])
    assert cfg.rollout.sampling.stop == ("</answer>", "END")
    assert apply_overrides(TrainConfig(), ["rollout.sampling.stop="]).rollout.sampling.stop == ()
    assert parse_value("1, 2,3", tuple[int, ...], "k") == (1, 2, 3)
    with pytest.raises(ConfigError, match="k='x': expected int"):
        parse_value("1,x", tuple[int, ...], "k")


def test_optional():
    assert apply_overrides(TrainConfig(), ["cluster.num_cpus=none"]).cluster.num_cpus is None
    assert apply_overrides(TrainConfig(), ["cluster.num_cpus=null"]).cluster.num_cpus is None
    assert apply_overrides(TrainConfig(), ["cluster.num_cpus=3"]).cluster.num_cpus == 3
    with pytest.raises(ConfigError, match=r"cluster\.num_cpus='4\.5': expected int"):
        apply_overrides(TrainConfig(), ["cluster.num_cpus=4.5"])
    # "none" is just text for a plain str field
    assert apply_overrides(TrainConfig(), ["name=none"]).name == "none"


def test_unsupported_field_type_is_reported():
    with pytest.raises(ConfigError, match="cannot be set from the command line"):
        parse_value("{}", dict[str, int], "k")


def test_to_dict_is_nested_and_round_trips():
    d = to_dict(apply_overrides(TrainConfig(), ["algorithm.kl_coef=0.1"]))
    assert d["algorithm"]["kl_coef"] == 0.1 and d["rollout"]["sampling"]["stop"] == ("</answer>",)


# --- validate() --------------------------------------------------------------------------------

def _with(**sections) -> TrainConfig:
    base = TrainConfig()
    changed = {k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()}
    return dataclasses.replace(base, **changed)


@pytest.mark.parametrize(("sections", "message"), [
    ({"algorithm": {"group_size": 1}}, "algorithm.group_size must be >= 2"),
    ({"algorithm": {"prompts_per_step": 0}}, "algorithm.prompts_per_step must be >= 1"),
    ({"algorithm": {"updates_per_step": 3}}, r"N = prompts_per_step x group_size = 64 must split evenly"),
    ({"algorithm": {"updates_per_step": 0}}, "algorithm.updates_per_step must be >= 1"),
    ({"algorithm": {"epochs_per_step": 0}}, "algorithm.epochs_per_step must be >= 1"),
    ({"learner": {"data_parallel_size": 3}}, "must split evenly over learner.data_parallel_size = 3"),
    ({"learner": {"data_parallel_size": 0}}, "learner.data_parallel_size must be >= 1"),
    ({"learner": {"tensor_parallel_size": 0}}, "learner.tensor_parallel_size must be >= 1"),
    ({"learner": {"pipeline_parallel_size": 0}}, "learner.pipeline_parallel_size must be >= 1"),
    ({"learner": {"sequences_per_microbatch": 0}}, "learner.sequences_per_microbatch must be >= 1"),
    ({"algorithm": {"clip_eps_low": 1.0}}, r"clip_eps_low must be in \[0, 1\)"),
    ({"algorithm": {"clip_eps_low": -0.1}}, r"clip_eps_low must be in \[0, 1\)"),
    ({"algorithm": {"clip_eps_high": -0.1}}, "clip_eps_high must be >= 0"),
    ({"algorithm": {"dual_clip_c": 1.0}}, "dual_clip_c must be 0 or > 1"),
    ({"algorithm": {"kl_coef": -0.1}}, "kl_coef must be >= 0"),
    ({"algorithm": {"kl_clamp": 0.0}}, "kl_clamp must be > 0"),
    ({"algorithm": {"advantage_eps": -1e-6}}, "advantage_eps must be >= 0"),
    ({"algorithm": {"tis_cap": 0.5}}, "tis_cap must be 0"),
    ({"rollout": {"num_engines": 0}}, "rollout needs >= 1 engine"),
    ({"model": {"max_prompt_tokens": 200, "max_response_tokens": 64}},
     "= 264 exceeds rollout.max_model_len = 256"),
    ({"reward": {"num_actors": 0}}, "reward.num_actors must be >= 1"),
    ({"reward": {"timeout_s": 0.0}}, r"reward.timeout_s = 0.0 is out of range: allowed \(0, 86400\]"),
    ({"eval": {"samples_per_prompt": 0}}, "eval.samples_per_prompt must be >= 1"),
    ({"cluster": {"address": "nowhere"}}, "cluster.address must be"),
])
def test_validate_rejects_with_a_message_naming_the_field(sections, message):
    with pytest.raises(ConfigError, match=message):
        _with(**sections).validate()


def test_validate_rejects_negative_total_steps():
    with pytest.raises(ConfigError, match="total_steps must be >= 0"):
        dataclasses.replace(TrainConfig(), total_steps=-1).validate()


@pytest.mark.parametrize("sections", [
    {"algorithm": {"dual_clip_c": 3.0, "tis_cap": 0.0, "clip_eps_high": 0.28, "kl_coef": 0.001}},
    {"algorithm": {"updates_per_step": 4}, "learner": {"data_parallel_size": 2}},  # 64 / 4 / 2 = 8 per rank
    {"cluster": {"address": "auto"}},
    {"cluster": {"address": "10.0.0.1:6379"}},
])
def test_validate_accepts_good_settings(sections):
    cfg = _with(**sections)
    assert cfg.validate() is cfg


def test_derived_sizes_and_reference():
    cfg = _with(algorithm={"prompts_per_step": 4, "group_size": 6, "updates_per_step": 2, "kl_coef": 0.01})
    assert cfg.sequences_per_step == 24 and cfg.sequences_per_update == 12 and cfg.needs_reference


def test_overrides_then_validate_catch_bad_combinations():
    cfg = apply_overrides(TrainConfig(), ["algorithm.group_size=3", "algorithm.updates_per_step=2",
                                          "algorithm.prompts_per_step=3"])
    with pytest.raises(ConfigError, match="= 9 must split evenly"):
        cfg.validate()
    assert isinstance(ConfigError("x"), ValueError)
    assert AlgorithmConfig().clip_eps_low == 0.2 and LearnerConfig().lr == 1e-6


# --- ranges: values that would ruin a run are refused before anything starts ------------------

@pytest.mark.parametrize(("override", "message"), [
    # reported by the hostile-input probe (issue 10)
    ("reward.timeout_s=inf", r"reward\.timeout_s = inf: must be a finite number"),
    ("learner.lr=-1", r"learner\.lr = -1\.0 is out of range: allowed \(0, 1\]"),
    ("learner.lr=1e308", r"learner\.lr = 1e\+308 is out of range: allowed \(0, 1\]"),  # issue 23
    ("output_dir=", r"output_dir = '': must name a directory"),
    ("learner.lr=inf", r"learner\.lr = inf: must be a finite number"),
    ("model.max_response_tokens=0", r"model\.max_response_tokens = 0 is out of range: allowed \[1, inf\)"),
    ("rollout.sampling.top_p=5", r"rollout\.sampling\.top_p = 5\.0 is out of range: allowed \(0, 1\]"),
    ("rollout.sampling.temperature=-1", r"rollout\.sampling\.temperature = -1\.0 .* allowed \(0, inf\)"),
    ("eval.every_steps=-1", r"eval\.every_steps = -1 is out of range: allowed \[0, inf\)"),
    ("checkpoint_every=-1", r"checkpoint_every = -1 is out of range: allowed \[0, inf\)"),
    ("data.eval_size=0", r"data\.eval_size = 0 is out of range: allowed \[1, inf\)"),
    ("learner.adam_beta1=2", r"learner\.adam_beta1 = 2\.0 is out of range: allowed \[0, 1\)"),
    ("rollout.gpu_memory_utilization=7", r"rollout\.gpu_memory_utilization = 7\.0 .* allowed \(0, 1\]"),
    # non-finite floats anywhere, whatever the field
    ("algorithm.kl_coef=inf", r"algorithm\.kl_coef = inf: must be a finite number"),
    ("algorithm.clip_eps_high=-inf", r"algorithm\.clip_eps_high = -inf: must be a finite number"),
    ("reward.format_weight=1e999", r"reward\.format_weight = inf: must be a finite number"),
    ("rollout.weight_sync_timeout_s=inf", r"rollout\.weight_sync_timeout_s = inf: must be a finite"),
    ("eval.temperature=inf", r"eval\.temperature = inf: must be a finite number"),
    # the rest of the ranges
    ("name=", "name = '': must be a non-empty directory name"),
    ("name=../elsewhere", "must be a non-empty directory name without '/'"),
    ("name=..", "must be a non-empty directory name"),
    ("seed=-1", r"seed = -1 is out of range: allowed \[0, inf\)"),
    ("model.max_prompt_tokens=0", r"model\.max_prompt_tokens = 0 is out of range"),
    ("data.template=chatml", r"data\.template = 'chatml': expected one of r1_zero"),
    ("rollout.sampling.temperature=0", r"rollout\.sampling\.temperature = 0\.0 .* allowed \(0, inf\)"),
    ("rollout.sampling.top_p=0", r"rollout\.sampling\.top_p = 0\.0 is out of range: allowed \(0, 1\]"),
    ("rollout.sampling.top_p=-0.5", r"top_p = -0\.5 is out of range"),
    ("rollout.sampling.seed=-3", r"rollout\.sampling\.seed = -3 is out of range"),
    ("rollout.gpu_memory_utilization=0", r"rollout\.gpu_memory_utilization = 0\.0 is out of range"),
    ("rollout.gpu_memory_utilization=1.01", r"rollout\.gpu_memory_utilization = 1\.01 is out of range"),
    ("rollout.cpu_kvcache_gib=0", r"rollout\.cpu_kvcache_gib = 0\.0 .* allowed \(0, inf\)"),
    ("rollout.weight_sync_bucket_bytes=0", r"rollout\.weight_sync_bucket_bytes = 0 is out of range"),
    ("rollout.weight_sync_timeout_s=0", r"rollout\.weight_sync_timeout_s = 0\.0 .* allowed \(0, 86400\]"),
    ("rollout.weight_sync_timeout_s=1e12", r"rollout\.weight_sync_timeout_s = 1000000000000\.0 .* allowed \(0, 86400\]"),
    ("learner.lr=0", r"learner\.lr = 0\.0 is out of range: allowed \(0, 1\]"),
    ("learner.lr_warmup_steps=-1", r"learner\.lr_warmup_steps = -1 is out of range"),
    ("learner.weight_decay=-0.1", r"learner\.weight_decay = -0\.1 is out of range: allowed \[0, inf\)"),
    ("learner.adam_beta1=-0.1", r"learner\.adam_beta1 = -0\.1 is out of range: allowed \[0, 1\)"),
    ("learner.adam_beta2=1", r"learner\.adam_beta2 = 1\.0 is out of range: allowed \[0, 1\)"),
    ("learner.grad_clip=-1", r"learner\.grad_clip = -1\.0 is out of range: allowed \[0, inf\)"),
    ("reward.accuracy_weight=-1", r"reward\.accuracy_weight = -1\.0 is out of range"),
    ("reward.format_weight=-0.1", r"reward\.format_weight = -0\.1 is out of range"),
    ("reward.language_weight=-1", r"reward\.language_weight = -1\.0 is out of range"),
    ("reward.overlong_weight=-1", r"reward\.overlong_weight = -1\.0 is out of range"),
    ("reward.accuracy_weight=0", "are all 0: every reward would be 0"),
    ("reward.timeout_s=-1", r"reward\.timeout_s = -1\.0 is out of range: allowed \(0, 86400\]"),
    ("reward.timeout_s=1e10", r"reward\.timeout_s = 10000000000\.0 is out of range: allowed \(0, 86400\]"),
    ("reward.max_error_fraction=1.5", r"reward\.max_error_fraction = 1\.5 is out of range: allowed \[0, 1\]"),
    ("reward.max_error_fraction=-0.1", r"reward\.max_error_fraction = -0\.1 is out of range: allowed \[0, 1\]"),
    ("cluster.cpus_per_actor=0", r"cluster\.cpus_per_actor = 0\.0 is out of range: allowed \(0, inf\)"),
    ("cluster.num_cpus=0", r"cluster\.num_cpus = 0 is out of range: allowed \[1, inf\)"),
    ("cluster.gpus_per_node=0", r"cluster\.gpus_per_node = 0 is out of range: allowed \[1, inf\)"),
    ("cluster.gpu_memory_gib=0", r"cluster\.gpu_memory_gib = 0\.0 is out of range: allowed \(0, inf\)"),
    ("eval.temperature=-0.5", r"eval\.temperature = -0\.5 is out of range: allowed \[0, inf\)"),
    ("reward.code.workers=-1", r"reward\.code\.workers = -1 is out of range: allowed \[0, inf\)"),
    ("reward.code.case_wall_s=0", r"reward\.code\.case_wall_s = 0\.0 is out of range: allowed \(0, 86400\]"),
    ("reward.code.memory_bytes=1000", r"reward\.code\.memory_bytes = 1000 is out of range: allowed \[1\.67772e\+07, inf\)"),
])
def test_validate_rejects_out_of_range_values_naming_field_and_range(override, message):
    cfg = apply_overrides(TrainConfig(), [override])  # parsing accepts it; validate() must not
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


@pytest.mark.parametrize(("overrides", "message"), [
    (["reward.overlong_weight=1", "reward.overlong_buffer_tokens=65"],
     r"reward\.overlong_buffer_tokens = 65 is out of range: allowed \[0, 64\]"),
    (["reward.overlong_weight=1", "reward.overlong_buffer_tokens=-1"], r"overlong_buffer_tokens = -1 is out of range"),
])
def test_overlong_buffer_must_fit_in_the_response(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), overrides).validate()


@pytest.mark.parametrize("override", [
    "eval.every_steps=0", "checkpoint_every=0", "learner.grad_clip=0", "eval.temperature=0",
    "rollout.sampling.top_p=1", "rollout.gpu_memory_utilization=1", "learner.adam_beta2=0",
    "reward.timeout_s=86400", "reward.accuracy_weight=0 ", "seed=0",
])
def test_validate_accepts_the_edges_of_each_range(override):
    cfg = apply_overrides(TrainConfig(), [override, "reward.format_weight=0.1"])
    assert cfg.validate() is cfg


def test_training_refuses_top_p_below_one_and_rejection_sampling_accepts_it():
    """vLLM's logprobs under top-p are renormalised over the nucleus; the learner's are not: a GRPO run with
    top_p < 1 would train against a policy its samples did not come from. Rejection sampling trains nothing."""
    from trainer.config import RejectionConfig

    cfg = apply_overrides(TrainConfig(), ["rollout.sampling.top_p=0.9"])
    with pytest.raises(ConfigError, match=r"top_p = 0\.9 cannot be trained on: .* Use top_p = 1"):
        cfg.validate()
    assert cfg.validate(training=False) is cfg
    assert apply_overrides(TrainConfig(), ["rollout.sampling.temperature=0.7"]).validate()  # supported
    rejection = RejectionConfig()
    rejection = dataclasses.replace(rejection, rollout=dataclasses.replace(rejection.rollout, sampling=(
        dataclasses.replace(rejection.rollout.sampling, top_p=0.9))))
    assert rejection.validate() is rejection


def test_non_finite_values_inside_tuples_are_refused():
    cfg = dataclasses.replace(TrainConfig(), rollout=dataclasses.replace(TrainConfig().rollout, sampling=(
        dataclasses.replace(TrainConfig().rollout.sampling, top_p=float("nan")))))
    with pytest.raises(ConfigError, match=r"rollout\.sampling\.top_p = nan: must be a finite number"):
        cfg.validate()
    from trainer.config import _check_finite

    @dataclasses.dataclass(frozen=True)
    class WithTuple:
        scales: tuple[float, ...] = (1.0, float("inf"))

    with pytest.raises(ConfigError, match=r"x\.scales = inf"):
        _check_finite(WithTuple(), "x.")


def test_every_example_passes_the_range_checks():
    from examples.configs import EXAMPLES

    for make in EXAMPLES.values():
        make().validate()
