"""Run configuration: frozen dataclasses, every default in exactly one place.

An example is a Python function returning a `TrainConfig` (see `examples/configs.py`). The
command line changes single fields with `--set section.field=value`; the value is parsed
against the field's declared type, and an unknown key or a value of the wrong type is an
error that names the key. `TrainConfig.validate()` checks the whole and derives the rest.

Batch sizes use the project's vocabulary: B = `prompts_per_step`, G = `group_size`,
N = B x G sequences per step.

Every config name is imported from here; each lives in the module of its concern:

    trainer.config_sections   model, data, rollout (and sampling), learner, algorithm, cluster, eval
    reward_server.config      reward (judge, reward models, code verifier) and ConfigError
    trainer.config_train      TrainConfig: one GRPO run, and its validate()
    trainer.config_stages     SFTConfig and RejectionConfig, the R1 stages around RL
    trainer.config_checks     the range checks and their named bounds
    trainer.config_overrides  `--set a.b=value` parsing, to_dict
"""

from __future__ import annotations

from reward_server.config import SCORER_KINDS as SCORER_KINDS
from reward_server.config import CodeRewardConfig as CodeRewardConfig
from reward_server.config import ConfigError as ConfigError
from reward_server.config import JudgeConfig as JudgeConfig
from reward_server.config import RewardConfig as RewardConfig
from reward_server.config import RewardModelConfig as RewardModelConfig
from reward_server.config import ScorerKind as ScorerKind
from trainer.config_checks import MAX_LR as MAX_LR
from trainer.config_checks import MAX_TIMEOUT_S as MAX_TIMEOUT_S
from trainer.config_checks import TOP_P_REFUSED as TOP_P_REFUSED
from trainer.config_checks import _check_finite as _check_finite
from trainer.config_overrides import AnyConfig as AnyConfig
from trainer.config_overrides import apply_overrides as apply_overrides
from trainer.config_overrides import parse_value as parse_value
from trainer.config_overrides import to_dict as to_dict
from trainer.config_sections import CPU_LINEAR_KERNELS as CPU_LINEAR_KERNELS
from trainer.config_sections import AdvantageEstimator as AdvantageEstimator
from trainer.config_sections import AlgorithmConfig as AlgorithmConfig
from trainer.config_sections import ClusterConfig as ClusterConfig
from trainer.config_sections import CpuLinear as CpuLinear
from trainer.config_sections import DataConfig as DataConfig
from trainer.config_sections import EvalConfig as EvalConfig
from trainer.config_sections import KLEstimator as KLEstimator
from trainer.config_sections import LearnerConfig as LearnerConfig
from trainer.config_sections import LossAggregation as LossAggregation
from trainer.config_sections import ModelConfig as ModelConfig
from trainer.config_sections import MultiTurnConfig as MultiTurnConfig
from trainer.config_sections import OldLogprobSource as OldLogprobSource
from trainer.config_sections import RolloutConfig as RolloutConfig
from trainer.config_sections import SamplingConfig as SamplingConfig
from trainer.config_stages import RejectionConfig as RejectionConfig
from trainer.config_stages import SFTConfig as SFTConfig
from trainer.config_stages import SFTDataConfig as SFTDataConfig
from trainer.config_train import TrainConfig as TrainConfig
