"""ONNX export round trip: onnxruntime reproduces PyTorch on a real photo, at sizes other than the export's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from esrgan.atomic import OutputExistsError
from esrgan.cli import main
from esrgan.errors import EsrganError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import psnr, run_cli  # noqa: E402
from test_atomic import files, one_line_error, read_only, unprivileged_cli  # noqa: E402
from test_fast import tiny, to_tensor  # noqa: E402

from esrgan.onnx_export import TORCHSCRIPT_EXPORTER, export_onnx, onnx_forward  # noqa: E402

FP32_DB = 80.0  # same fp32 maths, other summation order


@pytest.mark.parametrize(
    "arch",
    [
        {"scale": 4},
        {"scale": 2},
        {"scale": 1, "pixel_unshuffle": False},
        {"scale": 4, "image_residual": True},
        {"scale": 4, "plus": True},  # ESRGAN+ (its 1x1 paths)
        {"scale": 2, "image_residual": True},  # the residual of the padded input, at the odd size below
    ],
    ids=str,
)
def test_round_trip_on_photo_with_dynamic_size(
    arch: dict[str, object], photo: np.ndarray, tmp_path: Path
) -> None:
    model = tiny(**arch)
    path = export_onnx(model, tmp_path / "m.onnx")
    fn = onnx_forward(path)
    assert fn.config == model.config
    # exported at 32x32; run at an odd size (padding for the x2 unshuffle) and with a batch of two
    x = torch.cat([to_tensor(photo[60:97, 180:221]), to_tensor(photo[300:337, 100:141])])
    with torch.inference_mode():
        want = model(x)
    got = fn(x)
    assert got.shape == want.shape
    assert psnr(got, want) >= FP32_DB


def test_metadata_and_no_silent_overwrite(tmp_path: Path) -> None:
    model = tiny()
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["esrgan.config"]) == model.config.to_dict()
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        export_onnx(tiny(scale=2), path)
    assert path.read_bytes() == before
    export_onnx(tiny(scale=2), path, overwrite=True)
    assert onnx_forward(path).config.scale == 2


def test_cli_exports_a_model_file(
    photo_small: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esrgan.checkpoints import save_model

    model = tiny()
    src = save_model(tmp_path / "m.safetensors", model)
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(src), str(out), "--opset", "17"]) == 0
    assert "wrote" in capsys.readouterr().out
    x = to_tensor(photo_small)
    with torch.inference_mode():
        assert psnr(onnx_forward(out)(x), model(x)) >= FP32_DB
    assert main(["export-onnx", str(src), str(out)]) == 1  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_cli_refuses_a_folder_or_a_read_only_one_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esrgan.checkpoints import save_model

    src = save_model(tmp_path / "m.safetensors", tiny())
    folder = tmp_path / "d.onnx"
    (folder / "inside").mkdir(parents=True)
    assert main(["export-onnx", str(src), str(folder), "--overwrite"]) == 1  # a folder is never replaced
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d.onnx: is a folder" in err
    assert [p.name for p in folder.iterdir()] == ["inside"]
    assert main(["export-onnx", str(src), str(src / "x.onnx")]) == 1
    assert "m.safetensors is a file, not a folder" in capsys.readouterr().err

    ro = read_only(tmp_path / "ro")
    one_line_error(
        unprivileged_cli("export-onnx", src, ro / "x.onnx"), str(ro / "x.onnx"), "Permission denied"
    )
    assert not files(ro)  # no temporary file either


def test_unreadable_or_foreign_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(EsrganError, match=r"bad\.onnx"):
        onnx_forward(bad)
    # a valid ONNX model that we did not export: no esrgan.config metadata
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(
        conv, (torch.rand(1, 3, 8, 8),), str(foreign), **TORCHSCRIPT_EXPORTER, input_names=["input"]
    )
    with pytest.raises(EsrganError, match=r"esrgan\.config"):
        onnx_forward(foreign)


@pytest.mark.parametrize("opset", [5, 99])
def test_an_opset_the_exporter_cannot_target_is_one_line(
    opset: int, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """--opset 5 dumped the whole TorchScript graph before the error, 99 a torch warning: refused first."""
    from esrgan.errors import EsrganError

    with pytest.raises(EsrganError, match=rf"opset {opset}: this torch exports opsets 11-\d+ \(default 17\)"):
        export_onnx(tiny(), tmp_path / "m.onnx", opset=opset)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "") and not (tmp_path / "m.onnx").exists()


def _dims(value: object) -> list[object]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # type: ignore[attr-defined]


@pytest.mark.parametrize("scale", [2, 8])
def test_the_output_declares_its_own_height_and_width(scale: int, photo: np.ndarray, tmp_path: Path) -> None:
    """The output's spatial dims were declared with the input's names (height, width), which by ONNX's symbolic dims
    says they are equal: false at x2/x4/x8, and a consumer that sizes its buffers from the declared shape got them
    wrong. Now out_height/out_width: onnx's strict shape inference keeps them, onnxruntime declares and runs them."""
    import onnxruntime as ort

    model = tiny(scale=scale)
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert _dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(proto.graph.output[0]) == ["batch", 3, "out_height", "out_width"]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    assert _dims(inferred.graph.output[0]) == ["batch", 3, "out_height", "out_width"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == ["batch", 3, "out_height", "out_width"]
    x = torch.cat([to_tensor(photo[100:112, 200:210]), to_tensor(photo[300:312, 50:60])])  # 12x10, batch 2
    (out,) = session.run(None, {"input": x.numpy()})
    assert out.shape == (2, 3, 12 * scale, 10 * scale)
    with torch.inference_mode():
        assert psnr(torch.from_numpy(out), model(x)) >= FP32_DB


def test_cli_export_keeps_the_models_provenance(tmp_path: Path) -> None:
    """export-onnx wrote only esrgan.config and esrgan.arch: a model's licence, name and source (a zoo model's,
    an interpolated model's inputs'), which `esrgan convert` keeps, were dropped. Now they are metadata_props too,
    with converted_from naming the file, as convert writes it."""
    from esrgan.checkpoints import save_model

    record = {
        "license": "BSD-3-Clause (Real-ESRGAN)",
        "name": "tiny-x4",
        "source": "a test",
        "a.license": "Apache-2.0",
    }
    src = save_model(tmp_path / "m.safetensors", tiny(), metadata=record)
    res = run_cli("export-onnx", src, tmp_path / "m.onnx")
    assert res.returncode == 0, res.stderr
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta == {
        **record,
        "converted_from": "m.safetensors (ours layout)",
        "esrgan.config": json.dumps(tiny().config.to_dict()),
        "esrgan.arch": "RRDBNet",
    }
    assert onnx_forward(tmp_path / "m.onnx").config == tiny().config


def test_cli_refuses_an_output_not_named_onnx_and_leaves_the_model(tmp_path: Path) -> None:
    """`export-onnx m.safetensors m.safetensors --overwrite` replaced the model with an ONNX file (and `esrgan info`
    then said "not a model file"); any name was accepted, as .pth. Refused in one line, as save_model, convert and
    interpolate refuse another format's name, before anything is written."""
    from esrgan.checkpoints import load_weights, save_model

    src = save_model(tmp_path / "m.safetensors", tiny())
    before = src.read_bytes()
    for out, extra in ((src, ["--overwrite"]), (tmp_path / "m.pth", []), (tmp_path / "m", [])):
        res = run_cli("export-onnx", src, out, *extra)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert f"{out}: the export is an ONNX file: name it *.onnx" in res.stderr
    assert src.read_bytes() == before and load_weights(src).config == tiny().config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_the_model_given_is_left_as_it_was(tmp_path: Path, photo_small: np.ndarray) -> None:
    """export_onnx(model) ran model.float().eval(): a bf16 model came back float32, changed in place. It exports a
    float32 CPU copy now: the caller's module keeps its dtype, its weights and its train mode."""
    model = tiny().to(torch.bfloat16).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, tmp_path / "m.onnx")
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    reference = tiny()
    reference.load_state_dict(
        {k: v.float() for k, v in weights.items()}
    )  # what was exported: its fp32 values
    x = to_tensor(photo_small)
    with torch.inference_mode():
        assert psnr(onnx_forward(path)(x), reference(x)) >= FP32_DB


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_model_is_exported_from_a_cpu_copy(tmp_path: Path, photo_small: np.ndarray) -> None:
    """The check input is made on the CPU: a model on a GPU is exported from its CPU copy and stays where it was."""
    model = tiny().cuda()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    x = to_tensor(photo_small)
    with torch.inference_mode():
        assert psnr(onnx_forward(path)(x), model(x.cuda()).cpu()) >= FP32_DB
