"""Typed training configs: unknown keys and wrong types are errors naming the key and the file; --set overrides."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from esrgan.config import Config, config_to_yaml, load_config
from esrgan.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_paper_configs_hold_the_paper_settings() -> None:
    psnr = load_config(REPO / "configs" / "esrgan_x4_psnr.yaml")
    gan = load_config(REPO / "configs" / "esrgan_x4_gan.yaml")
    for c in (psnr, gan):
        assert (c.model.num_feat, c.model.num_block, c.model.num_grow, c.model.scale) == (64, 23, 32, 4)
        assert (c.data.batch_size, c.data.patch_size, c.data.flip, c.data.rot90) == (16, 128, True, True)
        assert c.schedule.kind == "multistep" and c.schedule.gamma == 0.5
    assert psnr.train.stage == "psnr" and psnr.train.total_steps == 1_000_000
    assert psnr.optim.lr_g == 2e-4 and psnr.optim.betas_g == [0.9, 0.999]
    assert psnr.schedule.milestones == [200_000, 400_000, 600_000, 800_000]
    assert (psnr.losses.pixel_weight, psnr.losses.perceptual_weight, psnr.losses.gan_weight) == (
        1.0,
        0.0,
        0.0,
    )
    assert gan.train.stage == "gan" and gan.train.total_steps == 400_000
    assert gan.optim.lr_g == gan.optim.lr_d == 1e-4
    assert gan.schedule.milestones == [50_000, 100_000, 200_000, 300_000]
    assert (gan.losses.perceptual_weight, gan.losses.gan_weight, gan.losses.pixel_weight) == (1.0, 5e-3, 1e-2)
    assert gan.losses.gan_reduction == "sum"
    # stage 2 starts from stage 1's exported generator
    assert gan.train.pretrained_g == str(Path(psnr.output_dir) / psnr.name / "model.safetensors")


def test_cpu_configs_load() -> None:
    for name in ("cpu_x4_psnr", "cpu_x4_gan", "cpu_x4_compact_psnr", "cpu_x4_compact_gan"):
        assert load_config(REPO / "configs" / f"{name}.yaml").name == name
    compact = load_config(REPO / "configs" / "cpu_x4_compact_psnr.yaml").model.generator
    assert (type(compact).__name__, compact.num_conv, compact.num_feat) == ("CompactConfig", 16, 64)


def test_realesrgan_configs_chain_and_degrade() -> None:
    """Real-ESRGAN's data: stage 1 starts from ESRGAN's stage 1, stage 2 from it; both degrade with the x4plus
    settings, which are those of RealESRGANDegradationConfig's defaults."""
    paper = load_config(REPO / "configs" / "esrgan_x4_psnr.yaml")
    psnr = load_config(REPO / "configs" / "realesrgan_x4_psnr.yaml")
    gan = load_config(REPO / "configs" / "realesrgan_x4_gan.yaml")
    assert psnr.data.degradation == gan.data.degradation == "realesrgan"
    assert psnr.validation.lr == gan.validation.lr == "realesrgan"
    assert psnr.train.pretrained_g == str(Path(paper.output_dir) / paper.name / "model.safetensors")
    assert gan.train.pretrained_g == str(Path(psnr.output_dir) / psnr.name / "model.safetensors")
    r = psnr.data.realesrgan
    assert (r.resize_range, r.noise_sigma, r.jpeg_quality, r.final_sinc_prob) == (
        [0.15, 1.5],
        [1.0, 30.0],
        [30.0, 95.0],
        0.8,
    )
    assert (psnr.data.patch_size, psnr.data.batch_size, psnr.train.ema_decay) == (256, 12, 0.999)
    # the GAN stage as Real-ESRGAN's train_realesrgan_x4plus.yml: U-Net D, vanilla GAN 0.1, five-layer perceptual
    assert (gan.model.discriminator, gan.losses.gan_type, gan.losses.gan_weight) == ("unet", "vanilla", 0.1)
    assert (gan.losses.pixel_weight, gan.losses.perceptual_weight) == (1.0, 1.0)
    assert dict(zip(gan.perceptual.layers, gan.perceptual.layer_weights, strict=True)) == {
        "conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0
    }  # fmt: skip
    finetune = load_config(REPO / "configs" / "realesrgan_x4plus_finetune.yaml")
    assert finetune.train.pretrained_g == "realesrgan-x4plus"  # a named model: `esrgan models`
    for section in ("model", "data", "losses", "perceptual", "optim", "schedule"):
        assert getattr(finetune, section) == getattr(gan, section), section


def test_realesrgan_configs_augment_as_real_esrgans_option_files() -> None:
    """Real-ESRGAN's train_realesrnet_x4plus.yml, train_realesrgan_x4plus.yml and finetune_realesrgan_x4plus.yml:
    use_hflip: True, use_rot: False. Every shipped realesrgan config flips and does not rotate."""
    paths = sorted((REPO / "configs").glob("realesrgan_*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        data = load_config(path).data
        assert (data.flip, data.rot90) == (True, False), path.name


def test_unknown_keys_are_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"hr_dir": "x", "patchsize": 64}})
    with pytest.raises(ConfigError, match=r"cfg\.yaml: data: unknown key 'patchsize'") as info:
        load_config(path)
    assert "patch_size" in str(info.value)  # the known keys are listed
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        load_config(write(tmp_path, {"trian": {"stage": "psnr"}, "data": {"hr_dir": "x"}}))
    # a top-level key: no empty section name ("cfg.yaml: : unknown key 'nme'")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"nme": "x", "data": {"hr_dir": "x"}}))
    assert str(info.value).startswith(f"{tmp_path / 'cfg.yaml'}: unknown key 'nme' at the top level (known: ")


@pytest.mark.parametrize(
    ("data", "match"),
    [  # each passed before and then crashed or poisoned the run (a review's audit, session 24)
        ({"optim": {"weight_decay": -1}}, r"optim\.weight_decay: must be >= 0"),
        ({"logging": {"every": 0}}, r"logging\.every: must be >= 1"),
        ({"validation": {"sample_crop": 0}}, r"validation\.sample_crop: must be a positive multiple"),
        ({"validation": {"samples": 0}}, r"validation\.samples: must be >= 1"),
        ({"train": {"device": "foo"}}, r"train\.device: must be one of auto, cpu, cuda, mps"),
        ({"train": {"seed": -1}}, r"train\.seed: must be >= 0"),
        ({"train": {"time_budget_minutes": float("nan")}}, r"train\.time_budget_minutes: must be a finite"),
        ({"losses": {"pixel_weight": 0}}, r"losses\.pixel_weight: must be > 0 in the psnr stage"),
        ({"losses": {"pixel_weight": -1}}, r"losses\.pixel_weight: must be >= 0"),
        ({"schedule": {"gamma": -1}}, r"schedule\.gamma: must be in \(0, 1\]"),
        ({"data": {"blur_prob": 5}}, r"data\.blur_prob: must be a probability"),
        ({"data": {"jpeg_quality": [90, 40]}}, r"data\.jpeg_quality: must be \[low, high\] with 1 <= low"),
        ({"data": {"jpeg_quality": [200, 300]}}, r"data\.jpeg_quality"),
        ({"data": {"noise_sigma": [5, -1]}}, r"data\.noise_sigma"),
        # session 29 (helper-57's audit): torch's shape error at the first step; the data are RGB or grey (1 and 1)
        (
            {"model": {"num_in_ch": 1, "num_out_ch": 3}},
            r"model\.num_in_ch/num_out_ch: training takes RGB models",
        ),
        ({"model": {"num_in_ch": 3, "num_out_ch": 4}}, r"or grey ones \(1 and 1\), got 3 and 4"),
        ({"model": {"num_in_ch": 4, "num_out_ch": 4}}, r"got 4 and 4"),
        ({"data": {"bit_depth": 12}}, r"data\.bit_depth: must be 8 or 16, got 12"),
        (
            {"data": {"bit_depth": 16, "degradation": "realesrgan"}},
            r"data\.bit_depth: the realesrgan degradation works on 8-bit images .* 16 takes the bicubic or realworld",
        ),
    ],
)
def test_values_that_crashed_a_run_later_are_refused_at_load(tmp_path: Path, data: dict, match: str) -> None:
    data = {**data, "data": {"hr_dir": "x", **data.get("data", {})}}
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"total_steps": "many"}}, r"train\.total_steps: expected int, got 'many'"),
        ({"train": {"total_steps": 1.5}}, r"train\.total_steps: expected int"),
        ({"train": {"total_steps": True}}, r"train\.total_steps: expected int"),
        ({"data": {"flip": "yes please"}}, r"data\.flip: expected bool"),
        ({"train": {"stage": "wgan"}}, r"train\.stage: expected 'psnr' or 'gan'"),
        ({"schedule": {"milestones": [1, "x"]}}, r"schedule\.milestones\[1\]: expected int"),
        ({"model": 4}, r"model: expected a mapping"),
        ({"train": {"ema_decay": 1.5}}, r"train\.ema_decay: must be in \[0, 1\)"),
        ({"losses": {"gan_weight": 5e-3}}, r"the psnr stage is L1 only"),
        ({"data": {"hr_downscale": 0.5}}, r"data\.hr_downscale: must be >= 1"),
        ({"data": {"hr_downscale": [2.0, 0.5]}}, r"data\.hr_downscale: must be >= 1"),
        ({"data": {"hr_downscale": [2, 2.0]}}, r"data\.hr_downscale: .*distinct"),
        ({"data": {"hr_downscale": []}}, r"data\.hr_downscale: must be"),
        ({"data": {"hr_downscale": ["big"]}}, r"data\.hr_downscale: expected float or a list of float"),
        # a run folder outside output_dir: `--set name=..` wrote the run into output_dir's parent
        ({"name": ".."}, r"name: must be a plain folder name .*got '\.\.'"),
        ({"name": "."}, r"name: must be a plain folder name"),
        ({"name": ""}, r"name: must be a plain folder name"),
        ({"name": "a/b"}, r"name: must be a plain folder name"),
        ({"name": "../x"}, r"name: must be a plain folder name"),
        ({"name": "a\\b"}, r"name: must be a plain folder name"),
        # values the types allow and training would crash on with a traceback (conv, DataLoader, Adam, torch)
        ({"data": {"patch_size": 0}}, r"data\.patch_size: must be >= 1"),
        ({"data": {"patch_size": -4}}, r"data\.patch_size: must be >= 1"),
        ({"data": {"num_workers": -1}}, r"data\.num_workers: must be >= 0"),
        ({"train": {"threads": -3}}, r"train\.threads: must be >= 0"),
        ({"validation": {"max_images": -1}}, r"validation\.max_images: must be >= 0"),
        ({"optim": {"lr_g": -1.0}}, r"optim\.lr_g: must be > 0"),
        ({"optim": {"lr_d": 0.0}}, r"optim\.lr_d: must be > 0"),
        ({"optim": {"betas_g": [2.0, 3.0]}}, r"optim\.betas_g: must be \[beta1, beta2\], each in \[0, 1\)"),
        ({"optim": {"betas_d": [0.9]}}, r"optim\.betas_d: must be \[beta1, beta2\]"),
        # Real-ESRGAN's GAN stage: discriminator, loss, perceptual layers
        ({"model": {"discriminator": "patchgan"}}, r"model\.discriminator: expected 'vgg' or 'unet'"),
        ({"losses": {"gan_type": "wgan"}}, r"losses\.gan_type: expected 'ragan' or 'vanilla'"),
        (
            {"perceptual": {"layers": ["conv6_1"], "layer_weights": [1.0]}},
            r"perceptual\.layers: VGG19 layers by name",
        ),
        ({"perceptual": {"layers": []}}, r"perceptual\.layers: VGG19 layers by name"),
        ({"perceptual": {"layers": ["conv1_2", "conv1_2"], "layer_weights": [1, 1]}}, r"each layer once"),
        (
            {"perceptual": {"layers": ["conv1_2", "conv5_4"]}},
            r"perceptual\.layer_weights: one weight >= 0 per layer",
        ),
        ({"perceptual": {"layer_weights": [-1.0]}}, r"perceptual\.layer_weights: one weight >= 0"),
        (
            {"train": {"pretrained_d": "netD.pth"}},
            r"train\.pretrained_d: the psnr stage has no discriminator",
        ),
        (
            {"train": {"stage": "gan"}, "losses": {"gan_weight": 0.1}, "data": {"patch_size": 72}},
            r"data\.patch_size: the VGG-style discriminator needs a multiple of 32",
        ),
        (
            {
                "train": {"stage": "gan"},
                "losses": {"gan_weight": 0.1},
                "data": {"patch_size": 100},
                "model": {"discriminator": "unet"},
            },
            r"data\.patch_size: the U-Net discriminator needs a multiple of 8",
        ),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, data: dict, match: str) -> None:
    data = {**data, "data": {"hr_dir": "x", **data.get("data", {})}}
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


def test_overrides_are_yaml_scalars_and_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"hr_dir": "x"}})
    c = load_config(path, ["train.total_steps=1000", "optim.lr_g=1e-4", "data.lr_dir=null", "data.flip=false",
                           "schedule.milestones=[10, 20]", "name=short", "data.hr_downscale=[2, 4.0]"])  # fmt: skip
    assert c.train.total_steps == 1000 and c.optim.lr_g == 1e-4  # YAML 1.1 reads 1e-4 as a string: accepted
    assert c.data.lr_dir is None and c.data.flip is False
    assert c.schedule.milestones == [10, 20] and c.name == "short"
    assert c.data.hr_downscale == [2.0, 4.0]  # a multi-scale set: every image at each factor


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.total_steps=abc", r"--set 'train.total_steps=abc'.*expected int"),
        ("train.totl_steps=5", r"--set 'train.totl_steps=5': unknown key 'totl_steps' in train"),
        ("nosection.x=1", r"unknown key 'nosection'"),
        ("train", r"expected KEY=VALUE"),
        ("train=1", r"'train' is a section"),
        ("name.x=1", r"'name' is not a section"),
        ("train.stage=[psnr", r"not valid YAML"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, {"data": {"hr_dir": "x"}}), [override])


def test_keys_that_change_together_are_two_overrides(tmp_path: Path) -> None:
    """A grey model from the CPU recipe's config (image_residual on): num_in_ch alone, or num_out_ch alone, is a
    model no one can build; both together are one. An override that stays wrong is named, not the transient one."""
    cpu = REPO / "configs" / "cpu_x4_psnr.yaml"
    grey = ["model.num_in_ch=1", "model.num_out_ch=1", "data.hr_dir=x"]
    c = load_config(cpu, grey)
    assert (c.model.num_in_ch, c.model.num_out_ch, c.model.image_residual) == (1, 1, True)
    with pytest.raises(ConfigError, match=r"^--set 'model.num_in_ch=1': model: image_residual needs as many"):
        load_config(cpu, ["model.num_in_ch=1", "data.hr_dir=x"])
    with pytest.raises(ConfigError, match=r"^--set 'model.num_feat=abc': .*expected int"):
        load_config(cpu, [*grey, "model.num_feat=abc", "train.total_steps=5"])
    with pytest.raises(ConfigError, match=r"^--set 'model.num_out_ch=3': model: image_residual needs"):
        load_config(cpu, [*grey, "model.num_out_ch=3"])


@pytest.mark.parametrize(
    ("data", "overrides", "said"),
    [
        ({}, ["data.patch_size=48"], "data.patch_size: the VGG-style discriminator needs a multiple of 32 (128 in the "
         "paper) (from --set data.patch_size=48)"),
        ({}, ["name=a/b"], "name: must be a plain folder name (not empty, '.', '..' or containing / or \\), got "
         "'a/b' (from --set name=a/b)"),
        # the last --set of a key is the one in force
        ({}, ["data.patch_size=64", "data.patch_size=48"], "(from --set data.patch_size=48)"),
        # a key the message names (the scale the patch must be a multiple of)
        ({"model": {"scale": 2}}, ["model.scale=8", "data.patch_size=36"],
         "data.patch_size: must be a multiple of model.scale (8) (from --set model.scale=8, --set data.patch_size=36)"),
        # several keys in one error
        ({}, ["checkpoint.every=0"], "checkpoint/validation.every: must be >= 1 (from --set checkpoint.every=0)"),
        ({}, ["losses.gan_weight=0.1", "train.stage=psnr"], "losses: the psnr stage is L1 only: set gan_weight and "
         "perceptual_weight to 0 or use stage: gan (from --set losses.gan_weight=0.1)"),
        # the file's own value: the file alone is named
        ({"data": {"patch_size": 48}}, ["train.total_steps=5"], "data.patch_size: the VGG-style discriminator needs "
         "a multiple of 32 (128 in the paper)"),
    ],
)  # fmt: skip
def test_a_value_error_names_the_set_that_gave_the_value(
    tmp_path: Path, data: dict, overrides: list[str], said: str
) -> None:
    """`--set data.patch_size=48` was refused as `tiny_gan.yaml: data.patch_size: ...`, `--set name=a/b` as
    `tiny_psnr.yaml: name: ...`: the file blamed for a value typed on the command line."""
    raw = {"name": "g", "data": {"hr_dir": "x", "patch_size": 64}, "train": {"stage": "gan"},
           "losses": {"gan_weight": 5e-3, "perceptual_weight": 1.0}}  # fmt: skip
    for section, values in data.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, raw), overrides)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'cfg.yaml'}: ") and message.endswith(said), message
    if not any(o.split("=")[0] in said for o in overrides):
        assert "--set" not in message


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    c = load_config(REPO / "configs" / "esrgan_x4_gan.yaml", ["train.total_steps=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(c))
    again = load_config(path)
    assert dataclasses.asdict(again) == dataclasses.asdict(c)
    assert isinstance(again, Config) and again.train.total_steps == 7


def test_cli_reports_config_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esrgan.cli import main

    path = write(tmp_path, {"data": {"hr_dir": "x"}, "train": {"stage": "gan"}})
    assert main(["train", str(path), "--set", "train.total_steps=lots"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("esrgan: error: ") and "train.total_steps" in err and len(err.splitlines()) == 1


# --- files that are not YAML configs -----------------------------------------------------------------------------------


def test_a_binary_file_is_named_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An image given as the config raised UnicodeDecodeError through the CLI as a traceback."""
    from esrgan.cli import main

    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(
        ConfigError, match=r"photo\.png: not a YAML config: not UTF-8 text \(byte 0x89 at offset 0\)"
    ):
        load_config(png)
    assert main(["train", str(png)]) == 1
    err = capsys.readouterr().err
    assert err == f"esrgan: error: {png}: not a YAML config: not UTF-8 text (byte 0x89 at offset 0)\n"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("data:\n  hr_dir: x\n bad: [1,\n", "3:2", "expected <block end>, but found '<block mapping start>'"),
        ("data: {hr_dir: x\n", "2:1", "expected ',' or '}', but got '<stream end>'"),
        ("data:\n\thr_dir: x\n", "2:1", "found character '\\t' that cannot start any token"),
        # PyYAML keeps the last of two equal keys: a second `train:` replaced the first whole
        ("train:\n  threads: 2\ndata:\n  hr_dir: x\ntrain:\n  seed: 1\n", "5:1", "'train' is given twice"),
        ("data:\n  hr_dir: x\n  hr_dir: y\n", "3:3", "'hr_dir' is given twice"),
    ],
)
def test_yaml_syntax_errors_are_one_line_with_the_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, problem: str
) -> None:
    """PyYAML's message spans 4 to 8 lines with a source excerpt; the user gets file:line:column and the problem."""
    from esrgan.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"esrgan: error: {path}:{where}: not valid YAML: {problem}"), err


def test_a_fifo_config_is_refused_without_waiting(tmp_path: Path) -> None:
    """Reading a FIFO waits for a writer: `esrgan train pipe.yaml` hung for ever (here: until the timeout)."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    proc = run_cli("train", fifo, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"esrgan: error: {fifo}: not a regular file; give a YAML config file\n"


def test_the_config_key_table_of_the_docs_lists_every_key_and_its_default() -> None:
    """docs/training.md's config reference is made from the dataclasses (tools/config_table.py): a key added to
    src/esrgan/config.py (or a default changed) without the table fails here, so the table cannot drift."""
    import config_table

    table = config_table.parse((REPO / "docs" / "training.md").read_text(encoding="utf-8"))
    keys = config_table.rows()
    missing = [key for key, _ in keys if key not in table]
    assert not missing, f"not in docs/training.md's config table: {missing}; run tools/config_table.py"
    assert [key for key, _ in keys] == list(table), "keys in another order or unknown keys in the table"
    assert {key: default for key, default in keys} == {key: d for key, (d, _) in table.items()}
    assert all(meaning and meaning != config_table.TODO for _, meaning in table.values())
    assert len(table) > 100  # the parse found the rows (110 keys in session 30)
