"""sdedit_kernel: SDEdit (Meng et al., ICLR 2022), exact, for any VP or VE score model. Pure torch."""

from .config import ModelConfig, read_model_config
from .edit import check_t0, model_calls, resolve_steps, sdedit
from .errors import CheckpointError, SDEditError
from .execution import ExecutionOptions, accelerate, choose_batch_size
from .guidance import Condition, ConditionedModel
from .labels import ClassLabels
from .latent import LatentScoreModel
from .loader import load_score_model, sde_from_scheduler_config
from .model import PREDICTIONS, Denoiser, ScoreModel
from .noise import Noise, generator_for, seed_for
from .samplers import SAMPLERS, Sampler, get_sampler, validate_sampler_options
from .sde import VESDE, VPSDE, time_grid
from .text import TextEncoder, prompt_notes

__all__ = [
    "CheckpointError", "ClassLabels", "Condition", "ConditionedModel", "Denoiser", "ExecutionOptions",
    "LatentScoreModel", "ModelConfig", "Noise", "PREDICTIONS", "SAMPLERS", "SDEditError", "Sampler", "ScoreModel",
    "TextEncoder", "VESDE", "VPSDE", "accelerate", "check_t0", "choose_batch_size", "generator_for", "get_sampler",
    "load_score_model", "model_calls", "prompt_notes", "read_model_config", "resolve_steps",
    "sde_from_scheduler_config", "sdedit", "seed_for", "time_grid", "validate_sampler_options",
]
