"""Diffusion samplers as generators: DDIM through K steps, and a one-step consistency model.

The paper inverts a diffusion model through its deterministic sampler: the latent is the initial noise x_T and
G(x_T) is what K DDIM steps (eta = 0) make of it. The DDIM update is written here in torch rather than taken
from ``diffusers.DDIMScheduler.step`` so that it is differentiable end to end and exports to ONNX; a test
checks it against the scheduler. Every UNet call is wrapped in ``torch.utils.checkpoint`` when gradients flow,
so the inversion keeps one UNet's activations at a time instead of K of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genorigin.export.generator import Generator, LatentSpec, UnitRangeOutput
from torch import nn
from torch.utils.checkpoint import checkpoint

DDIM_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")


# --------------------------------------------------------------------------------------------- DDIM maths
def alphas_cumprod_from_config(scheduler_config: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
    """ᾱ_t for every training step and ᾱ of the final step, as diffusers' DDIM computes them from the config.

    The beta schedule itself (linear, scaled_linear, squaredcos_cap_v2, trained_betas, zero-SNR rescaling) is
    delegated to DDIMScheduler's constructor: it is plain arithmetic on the config, done once, not in the graph.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(dict(scheduler_config))
    return sched.alphas_cumprod.to(torch.float64).clone(), float(sched.final_alpha_cumprod)


def ddim_timesteps(scheduler_config: Mapping[str, Any], num_steps: int) -> list[int]:
    """The K timesteps DDIMScheduler.set_timesteps chooses (leading / trailing / linspace spacing)."""
    n_train = int(scheduler_config.get("num_train_timesteps", 1000))
    spacing = scheduler_config.get("timestep_spacing", "leading")
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be in [1, {n_train}], got {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, num_steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, num_steps) * (n_train // num_steps)).round()[::-1].astype(np.int64)
        ts = ts + int(scheduler_config.get("steps_offset", 0))
    elif spacing == "trailing":
        ts = np.round(np.arange(n_train, 0, -n_train / num_steps)).astype(np.int64) - 1
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r} (leading, trailing or linspace)")
    return [int(t) for t in ts]


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float,
    alpha_prev: float,
    prediction_type: str = "epsilon",
    clip_range: float | None = None,
) -> torch.Tensor:
    """One deterministic DDIM update x_t → x_{t-Δ} (eta = 0), the formula of DDIMScheduler.step."""
    beta_t = 1.0 - alpha_t
    if prediction_type == "epsilon":
        x0 = (sample - math.sqrt(beta_t) * model_output) / math.sqrt(alpha_t)
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - math.sqrt(alpha_t) * x0) / math.sqrt(beta_t)
    elif prediction_type == "v_prediction":
        x0 = math.sqrt(alpha_t) * sample - math.sqrt(beta_t) * model_output
        eps = math.sqrt(alpha_t) * model_output + math.sqrt(beta_t) * sample
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return math.sqrt(alpha_prev) * x0 + math.sqrt(1.0 - alpha_prev) * eps


def _unet_sample(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
    if class_labels is not None:
        class_labels = class_labels.expand(x.shape[0])
    return unet(x, t, class_labels=class_labels).sample


def _call_unet(
    unet: nn.Module, x: torch.Tensor, t: torch.Tensor, use_checkpoint: bool, class_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """UNet(x, t), recomputed in backward instead of stored when gradients flow (bounded memory for K steps)."""
    if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(_unet_sample, unet, x, t, class_labels, use_reentrant=False)
    return _unet_sample(unet, x, t, class_labels)


class DDIMSampler(nn.Module):
    """x_T → x_0 in [-1, 1] by K deterministic DDIM steps of a diffusers UNet2DModel."""

    def __init__(
        self,
        unet: nn.Module,
        scheduler_config: Mapping[str, Any],
        num_steps: int = 50,
        use_checkpoint: bool = True,
        clip_sample: bool | None = None,
    ) -> None:
        super().__init__()
        cfg = dict(scheduler_config)
        if cfg.get("thresholding", False):
            raise ValueError("scheduler uses dynamic thresholding, which this DDIM sampler does not implement")
        self.unet = unet
        self.num_steps = int(num_steps)
        self.use_checkpoint = use_checkpoint
        self.prediction_type = str(cfg.get("prediction_type", "epsilon"))
        clip = cfg.get("clip_sample", True) if clip_sample is None else clip_sample
        self.clip_range = float(cfg.get("clip_sample_range", 1.0)) if clip else None
        alphas, final = alphas_cumprod_from_config(cfg)
        ts = ddim_timesteps(cfg, self.num_steps)
        stride = int(cfg.get("num_train_timesteps", 1000)) // self.num_steps
        self.timesteps = ts
        self.alpha_t = [float(alphas[t]) for t in ts]
        self.alpha_prev = [float(alphas[t - stride]) if t - stride >= 0 else final for t in ts]
        # the schedule is part of the model: a buffer, so the fingerprint changes with it
        self.register_buffer("schedule", torch.tensor([self.alpha_t, self.alpha_prev], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for t, a_t, a_prev in zip(self.timesteps, self.alpha_t, self.alpha_prev):
            out = _call_unet(self.unet, x, torch.tensor(t, device=x.device), self.use_checkpoint)
            x = ddim_step(out, x, a_t, a_prev, self.prediction_type, self.clip_range)
        return x


# --------------------------------------------------------------------------------------------- generators
def _unet_geometry(unet: nn.Module) -> tuple[int, tuple[int, int]]:
    cfg = unet.config
    size = cfg.sample_size
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if int(cfg.out_channels) != int(cfg.in_channels):
        raise ValueError(
            f"UNet out_channels ({cfg.out_channels}) != in_channels ({cfg.in_channels}): "
            "learned-variance UNets are not supported"
        )
    return int(cfg.in_channels), hw


def ddim_from_unet(
    unet: nn.Module,
    scheduler_config: Mapping[str, Any],
    *,
    num_steps: int = 50,
    use_checkpoint: bool = True,
    clip_sample: bool | None = None,
    name: str = "ddim",
) -> Generator:
    """A diffusers UNet2DModel + DDIM/DDPM scheduler config as a Generator: latent x_T (C×H×W)."""
    if getattr(unet.config, "num_class_embeds", None):
        raise ValueError("class-conditional UNets are not supported by the DDIM adapter")
    channels, hw = _unet_geometry(unet)
    sampler = DDIMSampler(unet, scheduler_config, num_steps, use_checkpoint, clip_sample)
    return Generator(
        name=name,
        module=UnitRangeOutput(sampler, (-1.0, 1.0)),
        latent=LatentSpec((channels, *hw)),
        channels=channels,
        image_size=hw,
        config={
            "architecture": "ddim",
            "num_steps": num_steps,
            "prediction_type": sampler.prediction_type,
            "clip_range": sampler.clip_range,
            "timesteps": sampler.timesteps,
            "unet": _jsonable(unet.config),
        },
        family="diffusion",
    )


@dataclass(frozen=True)
class ConsistencyParams:
    """The consistency-model parameterisation (Song et al. 2023) and diffusers' CMStochasticIterativeScheduler."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def scalings(self, sigma: float) -> tuple[float, float, float]:
        """(c_skip, c_out, c_in) at ``sigma``, with the boundary condition at sigma_min."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / ((sigma - self.sigma_min) ** 2 + sd2)
        c_out = (sigma - self.sigma_min) * self.sigma_data / math.sqrt(sigma**2 + sd2)
        c_in = 1.0 / math.sqrt(sigma**2 + sd2)
        return c_skip, c_out, c_in

    def timestep(self, sigma: float) -> float:
        """The UNet's time input for ``sigma`` (diffusers' sigma_to_t)."""
        return 1000 * 0.25 * math.log(sigma + 1e-44)


class ConsistencySampler(nn.Module):
    """One consistency step from pure noise: z ~ N(0, I) → x = σ_max z → c_skip x + c_out F(c_in x, t(σ_max))."""

    def __init__(self, unet: nn.Module, params: ConsistencyParams, class_label: int | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.params = params
        self.c_skip, self.c_out, self.c_in = params.scalings(params.sigma_max)
        self.t = params.timestep(params.sigma_max)
        label = None if class_label is None else torch.tensor([int(class_label)])
        self.register_buffer("class_label", label)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.params.sigma_max * z
        t = torch.tensor(self.t, device=z.device)
        out = _call_unet(self.unet, self.c_in * x, t, use_checkpoint=False, class_labels=self.class_label)
        return self.c_skip * x + self.c_out * out


def consistency_from_unet(
    unet: nn.Module,
    params: ConsistencyParams = ConsistencyParams(),
    *,
    class_label: int | None = None,
    name: str = "consistency",
) -> Generator:
    """Any diffusers UNet2DModel used as a one-step consistency model (the paper's consistency-model case)."""
    if getattr(unet.config, "num_class_embeds", None) and class_label is None:
        raise ValueError("this UNet is class-conditional: pass class_label (the inverted model is M(·, label))")
    channels, hw = _unet_geometry(unet)
    return Generator(
        name=name,
        module=UnitRangeOutput(ConsistencySampler(unet, params, class_label), (-1.0, 1.0)),
        latent=LatentSpec((channels, *hw)),
        channels=channels,
        image_size=hw,
        config={
            "architecture": "consistency-1step",
            "sigma_data": params.sigma_data,
            "sigma_min": params.sigma_min,
            "sigma_max": params.sigma_max,
            "class_label": class_label,
            "unet": _jsonable(unet.config),
        },
        family="diffusion",
    )


# --------------------------------------------------------------------------------------------- folders
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a config file, with the file named in any error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers FrozenDict config as plain JSON types, for Generator.config (and so the fingerprint).

    Private keys (_name_or_path, _diffusers_version, …) are dropped: moving a model folder or upgrading
    diffusers must not invalidate its calibration.
    """
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(public, default=list))


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(folder: Path) -> None:
    """Refuse a model folder without safetensors weights: diffusers would unpickle ``*.bin`` files, and
    unpickling runs whatever code the file holds. Loaders then pass ``use_safetensors=True``."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLED_WEIGHTS)
    if pickled:
        raise ValueError(
            f"{folder}: holds only pickled weights ({', '.join(pickled)}), which genorigin does not load (unpickling "
            "can run code); convert them once with save_pretrained(..., safe_serialization=True)"
        )
    raise ValueError(f"{folder}: no *.safetensors weights")


def from_local_folder(model_cls: Any, folder: Path) -> Any:
    """``model_cls.from_pretrained`` on a local folder: offline and safetensors only."""
    require_safetensors(folder)
    options = {"local_files_only": True, "low_cpu_mem_usage": False, "use_safetensors": True}
    return model_cls.from_pretrained(str(folder), **options)


def load_unet(folder: Path) -> nn.Module:
    """UNet2DModel.from_pretrained on a local folder, offline, safetensors only."""
    from diffusers import UNet2DModel

    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: has no config.json (expected a diffusers UNet2DModel folder)")
    cls = read_json(folder / "config.json").get("_class_name")
    if cls != "UNet2DModel":
        raise ValueError(f"{folder}: unsupported _class_name {cls!r} for the UNet (expected 'UNet2DModel')")
    return from_local_folder(UNet2DModel, folder).eval()


def read_scheduler_config(folder: Path, allowed: tuple[str, ...] = DDIM_SCHEDULERS) -> dict[str, Any]:
    """scheduler/scheduler_config.json, checked to be a scheduler whose betas DDIM can reuse."""
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: has no scheduler_config.json")
    cfg = read_json(path)
    if cfg.get("_class_name") not in allowed:
        raise ValueError(f"{path}: unsupported scheduler _class_name {cfg.get('_class_name')!r} (expected {allowed})")
    return cfg


def load_ddim_folder(
    path: str | Path,
    *,
    num_steps: int = 50,
    use_checkpoint: bool = True,
    clip_sample: bool | None = None,
    name: str | None = None,
) -> Generator:
    """A folder with unet/ and scheduler/ (e.g. a saved DDPMPipeline or DDIMPipeline) as a DDIM generator."""
    path = Path(path)
    for sub in ("unet", "scheduler"):
        if not (path / sub).is_dir():
            raise ValueError(f"{path}: has no {sub}/ subfolder (a DDIM model needs unet/ and scheduler/)")
    unet = load_unet(path / "unet")
    sched = read_scheduler_config(path / "scheduler")
    return ddim_from_unet(
        unet, sched, num_steps=num_steps, use_checkpoint=use_checkpoint, clip_sample=clip_sample,
        name=name or path.name,
    )  # fmt: skip


def load_consistency_folder(path: str | Path, *, class_label: int | None = None, name: str | None = None) -> Generator:
    """A ConsistencyModelPipeline folder (unet/, scheduler/ with sigma_* values) or a bare UNet2DModel folder."""
    path = Path(path)
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    params = ConsistencyParams()
    sched_dir = path / "scheduler"
    if sched_dir.is_dir():
        cfg = read_scheduler_config(sched_dir, ("CMStochasticIterativeScheduler",))
        params = ConsistencyParams(
            float(cfg.get("sigma_data", 0.5)), float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0))
        )
    return consistency_from_unet(load_unet(unet_dir), params, class_label=class_label, name=name or path.name)
