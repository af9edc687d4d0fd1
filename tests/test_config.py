"""Configuration: good files pass; each kind of mistake fails with its dotted field path."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from project import run_stage

from components import config, models
from components.config import (
    OVERLAY_SECTIONS,
    UNSWEPT_KEYS,
    ConfigError,
    PipelineConfig,
    apply_overrides,
    load_config,
    model_config_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def minimal() -> dict:
    return {"train": {"gan": {"family": "gan"}, "ddpm_small": {"family": "ddpm", "base_channels": 8}}}


def problems(tmp_path: Path, params: dict | Path) -> list[str]:
    """The problems ``load_config`` finds in ``params`` (written as params.yaml), or in the file ``params``."""
    with pytest.raises(ConfigError) as info:
        load_config(params if isinstance(params, Path) else write_params(tmp_path, params))
    return info.value.problems


def with_smoke_overlay(tmp_path: Path, overlay: str) -> Path:
    """params.yaml: the minimal params with profile smoke, whose overlay profiles/smoke.yaml is ``overlay``."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "smoke.yaml").write_text(overlay)
    return write_params(tmp_path, {**minimal(), "profile": "smoke"})


def test_repository_params_and_every_profile_validate():
    for profile in ("default", "smoke", "gpu"):
        cfg = load_config(ROOT / "params.yaml", [f"profile={profile}"])
        assert cfg.profile == profile
        assert set(cfg.train) == {"gan", "cgan", "dcgan", "vae", "ddpm"}
    smoke = load_config(ROOT / "params.yaml", ["profile=smoke"])
    assert smoke.data.source == "synthetic"  # the overlay really applied
    assert smoke.experiment_name == "genmodels-smoke-synthetic"


def test_minimal_file_gets_defaults_and_families_can_repeat(tmp_path):
    cfg = load_config(write_params(tmp_path, minimal()))
    assert cfg.train["ddpm_small"].family == "ddpm"
    assert cfg.train["ddpm_small"].base_channels == 8
    assert cfg.train["gan"].lr == pytest.approx(2e-4)
    assert cfg.ray.num_workers == 2


def test_unknown_key_names_its_path(tmp_path):
    params = minimal()
    params["train"]["gan"]["leraning_rate"] = 0.1
    params["ray"] = {"num_wokers": 2}
    found = problems(tmp_path, params)
    assert "train.gan.leraning_rate: Extra inputs are not permitted" in found
    assert "ray.num_wokers: Extra inputs are not permitted" in found


def test_out_of_range_and_wrong_type(tmp_path):
    params = minimal()
    params["train"]["gan"]["lr"] = 0
    params["train"]["gan"]["epochs"] = "many"
    params["sample"] = {"num_samples": -5}
    found = problems(tmp_path, params)
    assert "train.gan.lr: Input should be greater than 0" in found
    assert any(p.startswith("train.gan.epochs: Input should be a valid integer") for p in found)
    assert "sample.num_samples: Input should be greater than 0" in found
    assert len(found) == 3  # every problem reported at once


def test_unknown_family(tmp_path):
    params = minimal()
    params["train"]["gan"]["family"] = "flow"
    [problem] = problems(tmp_path, params)
    assert problem.startswith("train.gan: Input tag 'flow'")


def test_cross_field_rules(tmp_path):
    params = minimal()
    params["train"]["ddpm_small"].update(timesteps=10, sample_steps=50)
    assert any("sample_steps (50) must not exceed timesteps (10)" in p for p in problems(tmp_path, params))
    params = minimal()
    params["evaluate"] = {"num_samples": 20_000}
    assert any("evaluate.num_samples (20000) exceeds sample.num_samples" in p for p in problems(tmp_path, params))
    params = minimal()
    params["train"]["Bad Name"] = {"family": "gan"}
    assert any("train.Bad Name" in p for p in problems(tmp_path, params))


def test_image_size_must_be_supported(tmp_path):
    params = minimal()
    params["data"] = {"image_size": 48}
    assert any(p.startswith("data.image_size:") for p in problems(tmp_path, params))


@pytest.mark.parametrize(
    ("data", "train", "needle"),
    [
        ({"image_size": 64}, {}, "data.image_size=64: data.source=fashion-mnist is 28x28"),
        ({"channels": 3, "source": "synthetic"}, {}, "data.channels=3: data.source=synthetic is grayscale"),
        ({"image_size": 28}, {"ddpm_small": {"family": "ddpm", "channel_mults": [1, 1, 2, 2]}},
         "train.ddpm_small.channel_mults: 4 levels, but data.image_size=28 allows at most 3"),
    ],
)
def test_shape_combinations_that_cannot_work_name_their_fields(tmp_path, data, train, needle):
    params = minimal()
    params["data"] = data
    params["train"].update(train)
    assert any(needle in p for p in problems(tmp_path, params)), problems(tmp_path, params)


def test_rgb_64px_image_folder_with_a_deep_unet_validates(tmp_path):
    params = minimal()
    params["data"] = {"source": str(tmp_path), "channels": 3, "image_size": 64}
    params["train"]["ddpm_small"]["channel_mults"] = [1, 1, 2, 2, 2]
    cfg = load_config(write_params(tmp_path, params))
    assert (cfg.data.channels, cfg.data.image_size) == (3, 64)


def test_overrides_and_precedence(tmp_path):
    path = with_smoke_overlay(tmp_path, "families: {gan: {epochs: 2, lr: 0.5}, ddpm: {epochs: 3}}\n")
    cfg = load_config(path)
    assert cfg.train["gan"].epochs == 2 and cfg.train["gan"].lr == 0.5  # overlay beats params.yaml
    # keyed by family: a new model section inherits its family's settings, over its own
    assert cfg.train["ddpm_small"].epochs == 3 and cfg.train["ddpm_small"].base_channels == 8
    cfg = load_config(path, ["train.gan.lr=0.25"])
    assert cfg.train["gan"].lr == 0.25 and cfg.train["gan"].epochs == 2  # --set beats the overlay
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no-equals-sign"])


def test_missing_profile_overlay_and_bad_yaml(tmp_path):
    assert any("no overlay file" in p for p in problems(tmp_path, {**minimal(), "profile": "gpu"}))
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_validate_cli_exit_codes(tmp_path):
    good = write_params(tmp_path, minimal())
    run = run_stage(ROOT, "validate", str(good), tracking="local", check=False)
    assert run.returncode == 0, run.stderr
    bad_params = minimal()
    bad_params["train"]["gan"]["lr"] = -1
    bad = write_params(tmp_path, bad_params)
    run = run_stage(ROOT, "validate", str(bad), tracking="local", check=False)
    assert run.returncode == 2
    assert "train.gan.lr: Input should be greater than 0" in run.stderr


def test_schema_export_is_valid_json_schema_and_accepts_params():
    run = run_stage(ROOT, "validate", "--schema", tracking="local")
    schema = json.loads(run.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((ROOT / "params.yaml").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"train": {"gan": {"family": "gan", "bogus": 1}}}, schema)
    assert schema == PipelineConfig.model_json_schema()


def test_an_overlay_keyed_by_model_name_says_what_it_is_called_now(tmp_path):
    found = problems(tmp_path, with_smoke_overlay(tmp_path, "train: {gan: {epochs: 2}}\nfamilies: {gann: {}}\n"))
    assert any(p.startswith("train: overlays are keyed by family") and "families.<family>" in p for p in found), found
    assert any(p.startswith("families.gann: not a model family") for p in found)


@pytest.mark.parametrize("overlay", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_overlay_holds_every_section_and_family(overlay):
    """DVC reads each section (and each family) a stage depends on; a missing key would fail its stage."""
    data = yaml.safe_load(overlay.read_text())
    assert set(data) == set(OVERLAY_SECTIONS)
    assert set(data["families"]) == set(config.FAMILIES)


def test_the_config_declares_exactly_the_registered_families():
    """The config names the families itself (it imports no models): its tags and the classes cannot drift."""
    assert config.FAMILIES == tuple(models.FAMILIES)
    assert {f: models.model_class(f).family for f in models.FAMILY_CLASSES} == {f: f for f in models.FAMILY_CLASSES}
    assert config.ClassifierConfig().family == "classifier" and "classifier" in models.FAMILY_CLASSES


def test_a_renamed_key_says_what_it_is_called_now(tmp_path):
    params = minimal()
    params["train"]["gan"]["betas"] = [0.5, 0.9]
    found = problems(tmp_path, params)
    assert any(p.startswith("train.gan:") and "betas: renamed, it is called adam_betas now" in p for p in found), found
    # a config stored in an older checkpoint still loads
    assert model_config_from_dict({"family": "gan", "betas": [0.5, 0.9]}).adam_betas == (0.5, 0.9)


def test_a_renamed_section_says_what_it_is_called_now(tmp_path):
    """`evaluator:` (the metrics' CNN) is `classifier:` now, in params.yaml and in an overlay."""
    found = problems(tmp_path, {**minimal(), "evaluator": {"epochs": 1}})
    assert any("evaluator: renamed, it is called classifier now" in p for p in found), found
    found = problems(tmp_path, with_smoke_overlay(tmp_path, "evaluator: {epochs: 1}\n"))
    assert found == ["evaluator: renamed, it is called classifier now"]


def test_no_model_may_take_the_classifier_folder(tmp_path):
    found = problems(tmp_path, {"train": {"classifier": {"family": "gan"}}})
    assert any("and not 'classifier'" in p for p in found), found


def test_precision_defaults_to_auto_and_bf16_no_longer_needs_a_gpu(tmp_path):
    """The worker decides (components/training/precision.py): the config cannot know its CPU."""
    cfg = load_config(write_params(tmp_path, minimal()))
    assert {m.precision for m in cfg.train.values()} == {"auto"} and cfg.classifier.precision == "auto"
    params = minimal()
    params["train"]["gan"]["precision"] = "bf16"
    assert load_config(write_params(tmp_path, params)).train["gan"].precision == "bf16"  # ray.use_gpu is false
    params["train"]["gan"]["precision"] = "fp16"
    assert any(p.startswith("train.gan.precision: Input should be 'auto', 'fp32' or 'bf16'")
               for p in problems(tmp_path, params))
    gpu = load_config(ROOT / "params.yaml", ["profile=gpu"])
    assert gpu.train["ddpm"].precision == "bf16"  # the gpu profile still asks for it explicitly


def test_inference_jobs_take_the_workers_their_work_needs(tmp_path):
    """One worker for a single-pass generator's sampling and for the features job; DDPM's iterative
    sampler spreads over ray.num_workers; either can be set."""
    from pipelines.sample import sample_workers

    params = minimal()
    params["ray"] = {"num_workers": 3}
    cfg = load_config(write_params(tmp_path, params))
    assert (sample_workers(cfg, "gan"), sample_workers(cfg, "ddpm_small")) == (1, 3)
    assert cfg.evaluate.num_workers == 1
    params["sample"] = {"num_workers": 2}
    assert sample_workers(load_config(write_params(tmp_path, params)), "gan") == 2


def test_a_model_may_train_on_fewer_workers_than_the_cluster_has(tmp_path):
    """``train.<model>.num_workers``: the default trains the MLP pair on one worker; the smoke and gpu
    profiles put every model back on ``ray.num_workers``; a sweep may not vary it."""
    params = minimal()
    params["ray"] = {"num_workers": 3}
    params["train"]["gan"]["num_workers"] = 1
    cfg = load_config(write_params(tmp_path, params))
    assert (cfg.train_workers("gan"), cfg.train_workers("ddpm_small")) == (1, 3)
    params["train"]["gan"]["num_workers"] = 0
    assert any(p.startswith("train.gan.num_workers: Input should be greater than 0") for p in problems(tmp_path, params))
    default = load_config(ROOT / "params.yaml")
    assert [default.train_workers(m) for m in ("gan", "cgan", "dcgan", "vae", "ddpm")] == [1, 1, 2, 2, 2]
    for profile in ("smoke", "gpu"):
        cfg = load_config(ROOT / "params.yaml", [f"profile={profile}"])
        assert {cfg.train_workers(m) for m in cfg.train} == {cfg.ray.num_workers}, profile
    assert "num_workers" in UNSWEPT_KEYS


def test_compile_is_refused_with_the_r1_penalty(tmp_path):
    """torch.compile's autograd cannot take R1's gradient of a gradient (it raised at the first step)."""
    params = minimal()
    params["train"]["gan"].update(compile="default", r1_gamma=30)
    assert any(p.startswith("train.gan: Value error, compile: default cannot train with r1_gamma 30")
               for p in problems(tmp_path, params))
    params["train"]["gan"]["r1_gamma"] = 0
    assert load_config(write_params(tmp_path, params)).train["gan"].compile == "default"


def test_a_run_is_sized_by_epochs_or_steps_never_both(tmp_path):
    params = minimal()
    params["train"]["gan"]["steps"] = 2_000  # steps alone: the default epochs steps aside
    gan = load_config(write_params(tmp_path, params)).train["gan"]
    assert (gan.steps, gan.epochs) == (2_000, None)
    assert load_config(write_params(tmp_path, minimal())).train["gan"].steps is None  # default: epochs decide
    params["train"]["gan"]["epochs"] = 8
    assert any(p.startswith("train.gan: Value error, steps: epochs (8) and steps (2000) both set")
               for p in problems(tmp_path, params))
    params["train"]["gan"].update(epochs=None, steps=None)
    assert any(p.startswith("train.gan: Value error, epochs: null and no steps") for p in problems(tmp_path, params))
    params["train"]["gan"].update(steps=0)
    assert any(p.startswith("train.gan.steps: Input should be greater than 0") for p in problems(tmp_path, params))
    # params.yaml sets epochs for every model: training one by steps from the command line
    cfg = load_config(ROOT / "params.yaml", ["train.ddpm.epochs=null", "train.ddpm.steps=1500"])
    assert (cfg.train["ddpm"].steps, cfg.train["ddpm"].epochs) == (1_500, None)
    with pytest.raises(ConfigError, match="train.ddpm: Value error, steps: epochs"):
        load_config(ROOT / "params.yaml", ["train.ddpm.steps=1500"])
