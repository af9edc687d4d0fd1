"""Every stage's configuration, as one set of pydantic models.

Precedence, written down once: field defaults here -> ``params.yaml`` -> the profile
overlay ``profiles/<profile>.yaml`` named by ``params.yaml``'s ``profile`` key ->
``--set key=value`` on the command line. The resolved, validated config is what goes into
checkpoints, MLflow params and run folders.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from components import layout

PROFILE_DIR = "profiles"
#: the sections every profile overlay holds (``{}`` where it changes nothing): DVC tracks each as a
#: parameter of the stages that read it, so an overlay edit re-runs only those stages
OVERLAY_SECTIONS = ("data", "ray", "sample", "classifier", "evaluate", "families")
OVERLAY_OPTIONAL = ("mlflow",)  # allowed, not tracked: where results are logged is not an input


class StrictModel(BaseModel):
    """Base for every section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- data
class LoadingConfig(StrictModel):
    """How the training split reaches each Ray worker (``docs/data.md``): every rank reads its own
    share of the prepared shards through Ray Data, then keeps it in memory or streams it."""

    mode: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory = materialise the rank's share once into an on-device uint8 tensor "
        "(fastest); stream = read batches every epoch with prefetch (bounded memory); auto = memory "
        "when a rank's share of pixels is at most memory_limit_mb")
    memory_limit_mb: PositiveInt = Field(2048, description="auto: the largest share (MiB of uint8 pixels "
                                         "per rank) kept in memory")
    prefetch_batches: PositiveInt = Field(4, description="stream: batches read ahead of the training step")
    shuffle_buffer: PositiveInt = Field(8192, description="stream: rows in the local shuffle buffer")

    def resolve(self, pixel_bytes: int, world_size: int) -> Literal["memory", "stream"]:
        """``memory`` or ``stream`` for a split of ``pixel_bytes`` shared by ``world_size`` ranks."""
        if self.mode != "auto":
            return self.mode
        return "memory" if pixel_bytes / world_size <= self.memory_limit_mb << 20 else "stream"


class DataConfig(StrictModel):
    """Where the images come from, their shape, and how much of them to use.

    ``source`` is ``fashion-mnist``, ``mnist``, ``synthetic``, or a local folder /
    ``s3://bucket/prefix`` holding IDX files (``*-idx3-ubyte[.gz]``) or ``train.npz``/``test.npz``,
    or else labelled images in class subfolders (``<root>/<class name>/*.png|jpg|jpeg|webp``,
    optionally under ``train/`` and ``test/``).
    """

    source: str = "fashion-mnist"
    train_subset: PositiveInt | None = Field(None, description="class-balanced subset of the train split")
    test_subset: PositiveInt | None = Field(None, description="class-balanced subset of the test split")
    seed: NonNegativeInt = 0
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB; image folders are converted to it")
    image_size: Literal[28, 32, 64] = Field(
        28, description="image folders: shorter side resized to it, centre-cropped; IDX/npz: 28 as is, 32 zero-pads")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="image folders without train/ and test/: "
                                 "share of each class held out (seeded by data.seed)")
    skip_unreadable: bool = Field(False, description="image folders: skip files that cannot be decoded "
                                  "(counted in meta.json) instead of failing")
    shard_mb: PositiveInt = Field(16, description="at most this many MiB of pixels per prepared Parquet shard")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint; AWS_ENDPOINT_URL wins when set")
    mirrors: list[str] | None = Field(None, description="override the built-in mirror list (dirs or URLs)")
    synthetic_train_size: PositiveInt = 12_000
    synthetic_test_size: PositiveInt = 2_000
    loading: LoadingConfig = Field(default_factory=LoadingConfig)

    @model_validator(mode="after")
    def _check_shape(self) -> DataConfig:
        if self.source in ("fashion-mnist", "mnist", "synthetic") and self.channels != 1:
            raise ValueError(f"data.channels={self.channels}: data.source={self.source} is grayscale "
                             "(set data.channels: 1, or point data.source at a folder of RGB images)")
        if self.source in ("fashion-mnist", "mnist") and self.image_size == 64:
            raise ValueError(f"data.image_size=64: data.source={self.source} is 28x28 (28 keeps it, 32 pads it); "
                             "64 needs an image folder or data.source: synthetic")
        return self

    @property
    def name(self) -> str:
        """Short data-set name for experiment names: ``fashion-mnist``, ``s3-mydata``, ..."""
        if self.source.startswith("s3://"):
            return "s3-" + self.source.rstrip("/").rsplit("/", 1)[-1]
        if self.source in ("fashion-mnist", "mnist", "synthetic"):
            return self.source
        return "local-" + Path(self.source).name


# --------------------------------------------------------------------------- ray
class RayConfig(StrictModel):
    """How compute stages run on Ray Train."""

    address: str | None = Field(None, description="cluster to join; RAY_ADDRESS wins; null = local")
    num_workers: PositiveInt = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, PositiveFloat] = Field(default_factory=lambda: {"CPU": 1.0})
    storage_path: str = Field("ray_results", description="checkpoint storage: folder or s3://...")
    max_failures: int = Field(1, ge=-1, description="-1 = retry forever")
    num_to_keep: PositiveInt = 2
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    health_check_interval_s: PositiveFloat = Field(
        0.25, description="Ray Train's controller poll period (its default 2 s adds ~4 s to every job's end)")


# --------------------------------------------------------------------------- mlflow
class MlflowConfig(StrictModel):
    """Where runs are tracked. MLFLOW_TRACKING_URI wins over ``tracking_uri``."""

    tracking_uri: str | None = Field(None, description="null = sqlite store mlflow.db in the project")
    experiment_prefix: str = Field("genmodels", min_length=1)
    log_system_metrics: bool = True


# --------------------------------------------------------------------------- training
#: keys that were renamed: old name -> new name. params.yaml and the overlays get an error naming
#: the new one; configs stored in checkpoints are migrated when read.
RENAMED_TRAIN_KEYS = {"betas": "adam_betas"}  # in a training section
RENAMED_SECTIONS = {"evaluator": "classifier"}  # at the top of params.yaml or an overlay


def renamed(data: Any, names: dict[str, str]) -> list[str]:
    """One ``"OLD: renamed, it is called NEW now"`` per old key of the mapping ``data``."""
    return [f"{k}: renamed, it is called {names[k]} now" for k in data if k in names] if isinstance(data, dict) else []


def reject_renamed(data: Any, names: dict[str, str]) -> Any:
    """``data`` unchanged, or a ValueError naming every old key's new name (a ``before`` validator's body)."""
    if old := renamed(data, names):
        raise ValueError("; ".join(old))
    return data


class TrainBase(StrictModel):
    """Fields every family's training section shares: the loop, the optimiser, the fast path."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        data = reject_renamed(data, RENAMED_TRAIN_KEYS)
        if isinstance(data, dict) and data.get("steps") is not None and "epochs" not in data:
            data = {**data, "epochs": None}  # steps given alone decides: the default epochs steps aside
        return data

    @model_validator(mode="after")
    def _one_length(self) -> TrainBase:
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"steps: epochs ({self.epochs}) and steps ({self.steps}) both set the run's length; "
                             "give one of them (epochs: null to train by steps)")
        if self.epochs is None and self.steps is None:
            raise ValueError("epochs: null and no steps: give epochs or steps")
        r1_gamma = getattr(self, "r1_gamma", 0)  # the GAN families' field
        if self.compile != "off" and r1_gamma > 0:  # measured: docs/benchmarks.md
            raise ValueError(f"compile: {self.compile} cannot train with r1_gamma {r1_gamma}: the R1 penalty takes "
                             "a gradient of a gradient, which torch.compile's autograd does not support; set "
                             "compile: off, or r1_gamma: 0")
        return self

    epochs: PositiveInt | None = Field(5, description="passes over the data; null when steps decides the length")
    steps: PositiveInt | None = Field(
        None, description="optimiser steps per worker in all, whatever the data's size (the last epoch may be "
        "partial); given, it decides the run's length, and epochs must be null or left out")
    batch_size: PositiveInt = Field(128, description="per worker: the global batch is num_workers times it")
    num_workers: PositiveInt | None = Field(
        None, description="this model's train job's Ray workers; null = ray.num_workers (one per GPU on a GPU "
        "cluster). Fewer for a model whose steps are too short to gain from data parallelism (docs/benchmarks.md)")
    lr: PositiveFloat = 2e-4
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.5, 0.999), description="Adam's (beta1, beta2); not DDPM's noise schedule (beta_start, beta_end)")
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = None
    seed: NonNegativeInt = 0
    log_every: PositiveInt = Field(50, description="steps between loss logs (and NaN checks)")
    image_every: PositiveInt = Field(1, description="epochs between logged sample grids")
    checkpoint_every: PositiveInt = Field(1, description="epochs between checkpoints")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the training device has native bf16 (CPU: AVX512-BF16 "
        "or AMX; CUDA), else fp32; decided in the worker (components/training/precision.py)")
    channels_last: bool = False
    compile: Literal["off", "default", "reduce-overhead"] = "off"


R1_DOC = ("weight of the R1 penalty gamma/2 * E||grad_x D(x_real)||^2 in D's loss (Mescheder et al. 2018); "
          "0 = plain BCE")
D_STEPS_DOC = ("discriminator steps per generator step, each against fresh fakes on the same real batch (a D "
               "closer to its optimum gives G a truer gradient)")
GAN_EMA_DOC = ("sample from an exponential moving average of G's weights with this decay (warmed up over the first "
               "steps; Karras et al. 2018, Yazici et al. 2019) instead of G's last weights; null = G itself")


class GANConfig(TrainBase):
    """MLP GAN (Goodfellow et al. 2014) with the non-saturating generator loss."""

    family: Literal["gan"] = "gan"
    latent_dim: PositiveInt = 64
    hidden_dim: PositiveInt = 256
    r1_gamma: NonNegativeFloat = Field(10.0, description=R1_DOC)
    d_steps: PositiveInt = Field(1, description=D_STEPS_DOC)
    ema_decay: float | None = Field(None, ge=0, lt=1, description=GAN_EMA_DOC)


class CGANConfig(TrainBase):
    """Label-conditioned MLP GAN (Mirza & Osindero 2014)."""

    family: Literal["cgan"] = "cgan"
    latent_dim: PositiveInt = 64
    hidden_dim: PositiveInt = 256
    label_embed_dim: PositiveInt = 16
    r1_gamma: NonNegativeFloat = Field(10.0, description=R1_DOC)
    d_steps: PositiveInt = Field(1, description=D_STEPS_DOC)
    ema_decay: float | None = Field(None, ge=0, lt=1, description=GAN_EMA_DOC)


class DCGANConfig(TrainBase):
    """Convolutional GAN (Radford et al. 2015)."""

    family: Literal["dcgan"] = "dcgan"
    latent_dim: PositiveInt = 64
    g_channels: PositiveInt = 32
    d_channels: PositiveInt = 32
    r1_gamma: NonNegativeFloat = Field(0.0, description=R1_DOC + "; off: the convolutions keep D smooth")
    d_steps: PositiveInt = Field(1, description=D_STEPS_DOC)
    ema_decay: float | None = Field(None, ge=0, lt=1, description=GAN_EMA_DOC + "; off: worse for the DCGAN "
                                    "(FID 150 -> 171 in a probe, docs/benchmarks.md)")


class VAEConfig(TrainBase):
    """Variational autoencoder (Kingma & Welling 2013)."""

    family: Literal["vae"] = "vae"
    lr: PositiveFloat = 1e-3
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    architecture: Literal["mlp", "conv"] = "conv"
    latent_dim: PositiveInt = 16
    hidden_dim: PositiveInt = 32
    kl_weight: PositiveFloat = 1.0


class DDPMConfig(TrainBase):
    """Denoising diffusion (Ho et al. 2020) with a small UNet, EMA and a DDIM sampler."""

    family: Literal["ddpm"] = "ddpm"
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    lr: PositiveFloat = 1e-3
    base_channels: PositiveInt = 16
    channel_mults: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: PositiveInt = 1
    attention: bool = True
    timesteps: PositiveInt = 1000
    schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: PositiveFloat = 1e-4
    beta_end: PositiveFloat = 0.02
    ema_decay: float = Field(0.999, ge=0, lt=1)
    min_snr_gamma: PositiveFloat | None = Field(
        None, description="weight each timestep's noise loss by min(SNR_t, gamma)/SNR_t (Min-SNR-gamma, Hang et "
        "al. 2023; 5 in the paper): faster convergence; null = Ho et al.'s unweighted simple loss")
    conditional: bool = False
    cond_drop_prob: float = Field(0.1, ge=0, lt=1)
    guidance_scale: NonNegativeFloat = Field(1.0, description="w in eps_c + w (eps_c - eps_u); 0 = no guidance")
    sampler: Literal["ancestral", "ddim"] = "ddim"
    sample_steps: PositiveInt = 25
    ddim_eta: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _check_schedule(self) -> DDPMConfig:
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps ({self.sample_steps}) must not exceed timesteps ({self.timesteps})")
        if self.schedule == "linear" and not self.beta_start < self.beta_end < 1:
            raise ValueError("linear schedule needs 0 < beta_start < beta_end < 1")
        return self


def unet_levels(size: int) -> int:
    """UNet levels an image of ``size`` px supports: 1 + the halvings of an even size >= 8 (28: 3, 32: 4, 64: 5)."""
    levels = 1
    while size % 2 == 0 and size >= 8:
        levels, size = levels + 1, size // 2
    return levels


#: one model of ``params.yaml``'s ``train`` mapping; its ``family`` tag picks the section's class
ModelConfig = Annotated[
    GANConfig | CGANConfig | DCGANConfig | VAEConfig | DDPMConfig,
    Field(discriminator="family"),
]
#: the generative family tags, read off the union (the config imports no models: it is the bottom layer);
#: tests/test_config.py checks that components.models registers exactly these, in this order
FAMILIES: tuple[str, ...] = tuple(section.model_fields["family"].default for section in get_args(get_args(ModelConfig)[0]))


# --------------------------------------------------------------------------- sample / evaluate
class SampleConfig(StrictModel):
    """How many images each model generates for evaluation, and from which seed."""

    num_samples: PositiveInt = 10_000
    ceiling_samples: PositiveInt = Field(2_000, description="images from the untrained model (the ceiling row)")
    batch_size: PositiveInt = 500
    seed: NonNegativeInt = 1234
    grid_size: PositiveInt = Field(10, description="the grid is grid_size x grid_size images")
    num_workers: PositiveInt | None = Field(
        None, description="workers of the sample job; null: ray.num_workers for an iterative sampler (DDPM), 1 for "
        "a single-pass generator (GAN, CGAN, DCGAN, VAE: 10,000 images in about a second on one core, less than "
        "a second worker costs to start; docs/benchmarks.md)")


class ClassifierConfig(TrainBase):
    """The in-domain CNN classifier whose embedding is the metrics' feature space.

    Trained by the same loop as the generative models, so it shares their training fields.
    """

    family: Literal["classifier"] = "classifier"
    epochs: PositiveInt | None = 3
    lr: PositiveFloat = 1e-3
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    width: PositiveInt = 16
    feature_dim: PositiveInt = 128
    min_test_accuracy: float = Field(0.0, ge=0, le=1, description="fail the stage below this")


class EvaluateConfig(StrictModel):
    """Metric settings shared by every model."""

    num_samples: PositiveInt = 10_000
    fid_subsets: PositiveInt = Field(5, description="repeated subsets for the FID spread")
    kid_subset_size: PositiveInt = 1000
    nearest_k: PositiveInt = 3
    batch_size: PositiveInt = 500
    seed: NonNegativeInt = 7
    held_out_images: PositiveInt = Field(2000, description="test images for the family's held-out scores "
                                                           "(VAE ELBO, DDPM noise loss); fixed for comparability")
    held_out_batch_size: PositiveInt = Field(500, description="test images per held-out scoring batch (the "
                                                              "scores are per-batch means, so part of the result)")
    num_workers: PositiveInt | None = Field(
        1, description="workers of the features job (the classifier over the samples: about a second on one core, "
        "less than a second worker costs to start); null: ray.num_workers")


# --------------------------------------------------------------------------- sweep
SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")


class SearchSpace(StrictModel):
    """How one training key varies over a sweep's trials: exactly one of the four kinds.

    ``grid`` runs every value (each sample of the sweep covers the whole grid), ``choice`` draws
    one value per trial, ``uniform`` / ``loguniform`` draw a float between ``[low, high]``.
    """

    grid: list[Any] | None = Field(None, min_length=1, description="every value, each in its own trial")
    choice: list[Any] | None = Field(None, min_length=1, description="one value drawn per trial")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], drawn uniformly")
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = Field(None, description="[low, high], drawn "
                                                                    "uniformly in log space (learning rates)")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchSpace:
        given = [kind for kind in SEARCH_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SEARCH_KINDS)} (got {', '.join(given) or 'none'})")
        bounds = self.uniform or self.loguniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low ({bounds[0]}) must be below high ({bounds[1]})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SEARCH_KINDS if getattr(self, kind) is not None)

    def values_to_check(self) -> list[Any]:
        """The values a training section must accept: every listed one, or the two bounds."""
        return list(getattr(self, self.kind))


#: the scores a trial ends with (``components.sweep.trial``) and whether lower is better
OBJECTIVES: dict[str, Literal["min", "max"]] = {
    "fid": "min", "kid": "min", "precision": "max", "recall": "max", "density": "max", "coverage": "max",
    "test_elbo": "min", "test_noise_loss": "min"}
#: the held-out scores, by the family that has them (``held_out_metrics``)
HELD_OUT_OBJECTIVES = {"test_elbo": "vae", "test_noise_loss": "ddpm"}
#: training keys a sweep may not vary: what the model is, and its length (``steps`` is the budget)
UNSWEPT_KEYS = ("family", "epochs", "steps", "num_workers")


class SweepConfig(StrictModel):
    """A hyper-parameter sweep of one model (``python -m pipelines.sweep``): a sweep file, ``sweeps/<model>.yaml``.

    Each trial trains the model's ``params.yaml`` section with the ``space`` values drawn for it,
    for ``steps`` optimiser steps, then scores ``num_samples`` images; ``objective`` picks the best.
    """

    space: dict[str, SearchSpace] = Field(min_length=1, description="training key -> how it varies")
    objective: Literal["fid", "kid", "precision", "recall", "density", "coverage", "test_elbo",
                       "test_noise_loss"] = Field("fid", description="the score that picks the best trial; "
                                                  "fid/kid/test_* lower is better, the others higher")
    trials: PositiveInt = Field(8, description="Tune's num_samples: trials drawn (with grid keys, each draw "
                                "covers the whole grid)")
    max_concurrent: PositiveInt = Field(2, description="trials running at once (on a GPU cluster: the GPUs "
                                        "divided by ray.num_workers)")
    steps: PositiveInt = Field(300, description="per-trial budget: optimiser steps per worker")
    num_samples: PositiveInt = Field(1000, description="images each trial generates and scores (the classifier's "
                                     "reference set must hold at least as many)")
    searcher: Literal["random"] = Field("random", description="Tune's BasicVariantGenerator (grid and random "
                                        "draws); a TPE searcher needs optuna, which the lock does not install")
    seed: NonNegativeInt = Field(0, description="seed of the random draws")

    def check_model(self, model: str, section: TrainBase) -> list[str]:
        """Problems of this sweep for the training section ``section`` of ``train.<model>``: keys it
        does not have, values it rejects, an objective its family does not score."""
        problems = []
        base = section.model_dump(mode="json")
        for key, space in self.space.items():
            if key in UNSWEPT_KEYS:
                problems.append(f"space.{key}: not sweepable (the family is fixed; the sweep's steps set the length)")
                continue
            if key not in type(section).model_fields:
                problems.append(f"space.{key}: not a training key of train.{model} (family {section.family})")
                continue
            for value in space.values_to_check():
                try:
                    type(section).model_validate({**base, key: value})
                except ValidationError as exc:
                    problems += [f"space.{key}: {value!r}: {e['msg']}" for e in exc.errors()]
        family = HELD_OUT_OBJECTIVES.get(self.objective)
        if family is not None and section.family != family:
            problems.append(f"objective: {self.objective} is a {family} score; train.{model} is a {section.family}")
        return problems


def load_sweep(path: str | Path, model: str, section: TrainBase) -> SweepConfig:
    """Read and validate a sweep file for the training section ``section`` of ``train.<model>``.

    Raises:
        ConfigError: every problem, each naming its field (``space.lr.loguniform: ...``).
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc)) from None
    if problems := sweep.check_model(model, section):
        raise ConfigError(str(path), problems)
    return sweep


# --------------------------------------------------------------------------- root
class PipelineConfig(StrictModel):
    """The whole ``params.yaml``.

    ``train`` holds the *models*: one section per generative model to train, keyed by its name
    (``models/<name>/``, DVC's ``train@<name>``, ``sample@<name>``, ...) and holding its family
    tag and training settings. The key stays ``train``, though it names models rather than a
    step: it is every user's params file and every DVC param key (``train.<name>``).
    """

    profile: Literal["default", "smoke", "gpu"] = "default"
    data: DataConfig = Field(default_factory=DataConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    train: dict[str, ModelConfig] = Field(
        min_length=1, description="the models: one section per model to train (family tag + training "
        "settings); the keys are the model names DVC's foreach runs"
    )
    sample: SampleConfig = Field(default_factory=SampleConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, data: Any) -> Any:
        return reject_renamed(data, RENAMED_SECTIONS)

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        for name in self.train:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) or name == layout.CLASSIFIER:
                raise ValueError(f"train.{name}: model names are lowercase letters, digits, '_' and '-' "
                                 f"(and not {layout.CLASSIFIER!r}): they become folder names")
        if self.evaluate.num_samples > self.sample.num_samples:
            raise ValueError(
                f"evaluate.num_samples ({self.evaluate.num_samples}) exceeds "
                f"sample.num_samples ({self.sample.num_samples})"
            )
        if self.evaluate.kid_subset_size > self.evaluate.num_samples:
            raise ValueError("evaluate.kid_subset_size must not exceed evaluate.num_samples")
        for name, cfg in self.train.items():
            if isinstance(cfg, DDPMConfig) and len(cfg.channel_mults) > (most := unet_levels(self.data.image_size)):
                raise ValueError(f"train.{name}.channel_mults: {len(cfg.channel_mults)} levels, but "
                                 f"data.image_size={self.data.image_size} allows at most {most} (each level "
                                 "halves an even size, down to 4 px or an odd size)")
        return self

    def train_workers(self, name: str) -> int:
        """How many Ray workers train model ``name``: its own ``num_workers``, else ``ray.num_workers``."""
        return self.train[name].num_workers or self.ray.num_workers

    @property
    def experiment_name(self) -> str:
        """One MLflow experiment per profile and data set."""
        return f"{self.mlflow.experiment_prefix}-{self.profile}-{self.data.name}"


# --------------------------------------------------------------------------- loading
class ConfigError(Exception):
    """A params file that is missing, unreadable or invalid; ``problems`` lists every issue."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid configuration {source}:\n" + "\n".join(f"  {p}" for p in problems))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in; nested dicts merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a raw params dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", [f"{item!r}: expected key=value, e.g. train.gan.epochs=3"])
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", [f"{key}: {part} is not a section"])
        node[leaf] = yaml.safe_load(value)
    return raw


def _format_loc(loc: tuple[Any, ...]) -> str:
    # The discriminated union adds the family tag to the path (train.dcgan.dcgan.lr): drop it.
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "train" and parts[2] in FAMILIES:
        del parts[2]
    return ".".join(str(p) for p in parts) or "(root)"


def format_errors(error: ValidationError) -> list[str]:
    """One ``dotted.path: message`` line per problem."""
    return [f"{_format_loc(e['loc'])}: {e['msg']}" for e in error.errors()]


def read_yaml(path: Path) -> Any:
    """A YAML file's content (``{}`` when empty); a missing or malformed file is a ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None


def read_raw_params(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read ``params.yaml``, merge its profile overlay and the command-line overrides."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["top level must be a mapping"])
    overrides = overrides or []
    # The profile may itself come from --set, so look at it with the overrides applied.
    profile = apply_overrides(raw, overrides).get("profile", "default")
    if isinstance(profile, str):
        overlay_path = path.parent / PROFILE_DIR / f"{profile}.yaml"
        if not overlay_path.exists():
            if profile != "default":
                raise ConfigError(str(path), [f"profile: no overlay file {overlay_path}"])
        else:
            raw = apply_overlay(raw, yaml.safe_load(overlay_path.read_text()) or {}, str(overlay_path))
    return apply_overrides(raw, overrides)


def apply_overlay(raw: dict[str, Any], overlay: dict[str, Any], source: str) -> dict[str, Any]:
    """``raw`` params with a profile overlay merged in, section by section.

    The overlay's ``families.F`` goes into every ``train`` section of family ``F``, so a new model
    section (``ddpm_small: {family: ddpm}``) gets its family's settings.
    """
    overlay = dict(overlay)
    allowed = (*OVERLAY_SECTIONS, *OVERLAY_OPTIONAL)
    problems = renamed(overlay, RENAMED_SECTIONS) + [
        f"{key}: not an overlay section (sections: {', '.join(allowed)})" for key in overlay
        if key not in allowed and key not in RENAMED_SECTIONS]
    if "train" in overlay:
        problems = [p for p in problems if not p.startswith("train:")]
        problems.append("train: overlays are keyed by family now: move these settings under families.<family>")
    families = overlay.pop("families", None) or {}
    problems += [f"families.{f}: not a model family (known: {', '.join(FAMILIES)})" for f in families
                 if f not in FAMILIES]
    if problems:
        raise ConfigError(source, problems)
    merged = copy.deepcopy(raw)
    for name, section in (merged.get("train") or {}).items():
        if isinstance(section, dict) and section.get("family") in families:
            merged["train"][name] = deep_merge(section, families[section["family"]] or {})
    return deep_merge(merged, overlay)


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> PipelineConfig:
    """Load and validate the pipeline configuration; raise ConfigError listing every problem."""
    raw = read_raw_params(path, overrides)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc)) from None


def model_config_from_dict(data: dict[str, Any]) -> TrainBase:
    """Rebuild one trainable model's config (e.g. from a checkpoint), the classifier's included."""
    from pydantic import TypeAdapter

    data = {RENAMED_TRAIN_KEYS.get(k, k): v for k, v in data.items()}  # checkpoints written before a rename
    if data.get("family") == "classifier":
        return ClassifierConfig.model_validate(data)
    return TypeAdapter(ModelConfig).validate_python(data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat
